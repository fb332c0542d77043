"""EfficientSAM: official checkpoint layout, strict loading, box prompts, mask choice, save/load round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hfpc_reward.consistency.efficientsam import (
    CheckpointError,
    EfficientSamSegmenter,
    config_from_state_dict,
    load_efficientsam,
    save_efficientsam,
)
from hfpc_reward.consistency.efficientsam_model import VARIANTS, EfficientSam, EfficientSamConfig
from hfpc_reward.testing.tiny_efficientsam import tiny_efficientsam

# Names and shapes read from the reference implementation's state dict (github.com/yformer/EfficientSAM,
# build_efficient_sam(192, 3)), i.e. the layout of efficient_sam_vitt.pt.
OFFICIAL_VITT_KEYS = {
    "image_encoder.patch_embed.proj.weight": [192, 3, 16, 16],
    "image_encoder.pos_embed": [1, 197, 192],
    "image_encoder.blocks.11.attn.qkv.weight": [576, 192],
    "image_encoder.neck.0.weight": [256, 192, 1, 1],
    "image_encoder.neck.3.bias": [256],
    "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": [2, 128],
    "prompt_encoder.bbox_top_left_embeddings.weight": [1, 256],
    "prompt_encoder.invalid_points.weight": [1, 256],
    "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight": [128, 256],
    "mask_decoder.transformer.layers.1.mlp.layers.0.0.weight": [2048, 256],
    "mask_decoder.transformer.layers.1.mlp.fc.weight": [256, 2048],
    "mask_decoder.final_output_upscaling_layers.0.0.weight": [256, 64, 2, 2],
    "mask_decoder.final_output_upscaling_layers.0.1.weight": [64],
    "mask_decoder.output_hypernetworks_mlps.3.fc.weight": [32, 256],
    "mask_decoder.iou_prediction_head.layers.1.0.weight": [256, 256],
    "mask_decoder.iou_prediction_head.fc.weight": [4, 256],
    "mask_decoder.mask_tokens.weight": [4, 256],
}
OFFICIAL_KEY_COUNT = 278


@pytest.fixture(scope="module")
def vitt_state_dict():
    torch.manual_seed(0)
    return EfficientSam(EfficientSamConfig(**VARIANTS["vitt"])).state_dict()


@pytest.fixture
def tiny():
    return tiny_efficientsam(seed=0)


def _image(width=96, height=64, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_vitt_matches_official_layout(vitt_state_dict):
    assert len(vitt_state_dict) == OFFICIAL_KEY_COUNT
    for name, shape in OFFICIAL_VITT_KEYS.items():
        assert list(vitt_state_dict[name].shape) == shape, name
    assert "pixel_mean" not in vitt_state_dict  # normalisation constants are not part of the checkpoint
    params = sum(t.numel() for n, t in vitt_state_dict.items() if "gaussian_matrix" not in n)
    assert params == pytest.approx(10.2e6, rel=0.01)  # EfficientSAM-Ti, as published


def test_vits_layout_is_inferred_from_shapes():
    model = EfficientSam(EfficientSamConfig(**VARIANTS["vits"]))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(26.4e6, rel=0.01)
    inferred = config_from_state_dict(model.state_dict())
    assert (inferred.encoder_dim, inferred.encoder_heads, inferred.encoder_depth) == (384, 6, 12)
    assert inferred == model.config


def test_official_pt_file_loads_strictly(vitt_state_dict, tmp_path):
    path = tmp_path / "efficient_sam_vitt.pt"
    torch.save({"model": vitt_state_dict}, path)  # the official files wrap the state dict in {"model": ...}
    segmenter = EfficientSamSegmenter.from_pretrained(path)
    assert segmenter.model.config == EfficientSamConfig()  # ViT-Ti defaults, inferred from shapes
    loaded = segmenter.model.state_dict()
    assert all(torch.equal(loaded[name], vitt_state_dict[name]) for name in vitt_state_dict)
    assert not segmenter.model.training


def test_missing_and_unexpected_keys_are_named(tiny, tmp_path):
    state = tiny.state_dict()
    state.pop("mask_decoder.iou_token.weight")
    state["mask_decoder.extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        load_efficientsam(path)
    assert "mask_decoder.iou_token.weight" in str(error.value)
    assert "mask_decoder.extra_head.weight" in str(error.value)
    assert str(path) in str(error.value)


def test_shape_mismatch_is_named(tiny, tmp_path):
    state = tiny.state_dict()
    state["prompt_encoder.point_embeddings.weight"] = torch.zeros(1, 7)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(
        CheckpointError, match=r"prompt_encoder.point_embeddings.weight \(1, 7\) vs \(1, 32\)"
    ):
        load_efficientsam(tmp_path / "bad.pt")


def test_not_a_checkpoint_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        load_efficientsam(tmp_path / "nothing_here")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an EfficientSAM state dict"):
        load_efficientsam(tmp_path / "other.pt")


def test_hub_file_goes_through_hf_hub_download(tiny, tmp_path, monkeypatch):
    import huggingface_hub

    local = tmp_path / "efficient_sam_vitt.pt"
    torch.save({"model": tiny.state_dict()}, local)
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return str(local)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model = load_efficientsam("yunyangx/EfficientSAM/efficient_sam_vitt.pt")
    assert calls == [("yunyangx/EfficientSAM", "efficient_sam_vitt.pt")]
    assert model.config.encoder_dim == 32


def test_decoder_output_shapes(tiny):
    images = torch.rand(2, 3, 48, 80)
    points = torch.tensor([[[10.0, 5.0], [40.0, 30.0]]]).expand(2, 3, 2, 2)
    labels = torch.tensor([2, 3]).expand(2, 3, 2)
    with torch.no_grad():
        logits, iou = tiny(images, points, labels)
        single, single_iou = tiny(images, points, labels, multimask=False)
        low_res, _ = tiny.decode(tiny.embed(images), tiny.to_model_coords(points, 48, 80), labels)
    assert logits.shape == (2, 3, 3, 48, 80) and iou.shape == (2, 3, 3)
    assert single.shape == (2, 3, 1, 48, 80) and single_iou.shape == (2, 3, 1)
    assert low_res.shape == (2, 3, 3, tiny.config.mask_size, tiny.config.mask_size)


def test_box_prompt_is_two_labelled_corners_in_model_pixels(tiny):
    captured = {}
    tiny.prompt_encoder.register_forward_hook(
        lambda module, args, out: captured.update(points=args[0], labels=args[1])
    )
    segmenter = EfficientSamSegmenter(tiny)
    (embedding,) = segmenter.embed([_image(width=128, height=32)])
    segmenter.predict_boxes(embedding, np.array([[16, 8, 96, 24]]))
    scale_x, scale_y = 64 / 128, 64 / 32  # model input is 64x64
    expected = torch.tensor([[16 * scale_x, 8 * scale_y], [96 * scale_x, 24 * scale_y]])
    assert torch.allclose(captured["points"][0, :2], expected)
    assert captured["labels"][0].tolist() == [2, 3, -1, -1, -1, -1]  # padded to max_points with label -1
    assert (captured["points"][0, 2:] == -1).all()


def test_box_corner_labels_change_the_prediction(tiny):
    embedding = tiny.embed(torch.rand(1, 3, 64, 64))
    corners = torch.tensor([[[[8.0, 8.0], [40.0, 48.0]]]])
    with torch.no_grad():
        as_box, _ = tiny.decode(embedding, corners, torch.tensor([[[2, 3]]]))
        as_points, _ = tiny.decode(embedding, corners, torch.tensor([[[1, 1]]]))
    assert not torch.allclose(as_box, as_points)


@pytest.mark.parametrize("winner", [0, 1, 2])
def test_best_of_three_by_predicted_iou(tiny, winner):
    head = tiny.mask_decoder.iou_prediction_head.fc
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([5.0, 0.1, 0.2, 0.3]))  # index 0 is the single-mask token
        head.bias[1 + winner] = 0.9
    segmenter = EfficientSamSegmenter(tiny, mask_threshold=0.0)
    image = _image()
    (embedding,) = segmenter.embed([image])
    boxes = np.array([[5, 5, 60, 50], [30, 10, 90, 60]])
    logits, iou = segmenter.predict_boxes(embedding, boxes)
    assert iou.argmax(dim=1).tolist() == [winner, winner]
    expected = (
        torch.nn.functional.interpolate(logits[:, winner : winner + 1], (64, 96), mode="bicubic")[:, 0] > 0
    )
    (masks,) = segmenter.segment_embedded([embedding], [boxes])
    assert masks.dtype == bool and masks.shape == (2, 64, 96)
    assert np.array_equal(masks, expected.numpy())
    (fixed,) = EfficientSamSegmenter(tiny, mask_choice=str((winner + 1) % 3)).segment_embedded(
        [embedding], [boxes]
    )
    assert not np.array_equal(fixed, masks)  # a configured index overrides the IoU ranking


def test_segment_batches_per_image_and_cached_embedding_agrees(tiny):
    segmenter = EfficientSamSegmenter(tiny)
    images = [_image(96, 64, seed=1), _image(50, 70, seed=2)]
    boxes = [np.array([[0, 0, 96, 64], [10, 10, 40, 40], [50, 20, 90, 60]]), np.zeros((0, 4))]
    masks = segmenter.segment(images, boxes)
    assert masks[0].shape == (3, 64, 96) and masks[1].shape == (0, 70, 50)
    embedded = segmenter.embed(images)
    assert [e.size for e in embedded] == [(96, 64), (50, 70)]
    one_by_one = np.concatenate(
        [segmenter.segment_embedded(embedded[:1], [box[None]])[0] for box in boxes[0]]
    )
    assert np.array_equal(one_by_one, masks[0])
    with pytest.raises(ValueError, match="one \\(N, 4\\) array per image"):
        segmenter.segment(images, boxes[:1])
    with pytest.raises(ValueError, match="x0, y0, x1, y1"):
        segmenter.segment(images[:1], [np.array([1, 2, 3, 4])])


def test_save_pretrained_round_trip_is_exact(tiny, tmp_path):
    segmenter = EfficientSamSegmenter(tiny)
    folder = segmenter.save_pretrained(tmp_path / "ckpt")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "efficientsam"
    reloaded = EfficientSamSegmenter.from_pretrained(folder)
    assert reloaded.model.config == tiny.config
    original, loaded = tiny.state_dict(), reloaded.model.state_dict()
    assert original.keys() == loaded.keys() and all(torch.equal(original[k], loaded[k]) for k in original)
    image, boxes = _image(), np.array([[8, 8, 70, 50]])
    assert np.array_equal(segmenter.segment([image], [boxes])[0], reloaded.segment([image], [boxes])[0])


def test_dtype_argument_is_used(tiny, tmp_path):
    save_efficientsam(tiny, tmp_path / "ckpt")
    double = EfficientSamSegmenter.from_pretrained(tmp_path / "ckpt", dtype=torch.float64)
    single = EfficientSamSegmenter.from_pretrained(tmp_path / "ckpt")
    assert double.dtype == torch.float64
    (embedding64,), (embedding32,) = double.embed([_image()]), single.embed([_image()])
    assert embedding64.features.dtype == torch.float64
    boxes = np.array([[8, 8, 70, 50]])
    logits64, iou64 = double.predict_boxes(embedding64, boxes)
    logits32, iou32 = single.predict_boxes(embedding32, boxes)
    assert torch.allclose(logits64, logits32, atol=1e-4) and torch.allclose(iou64, iou32, atol=1e-5)
