"""HFPCRewardModel on the tiny BLIP kit: loading, saving, scoring and gradients."""

import json

import numpy as np
import pytest
import torch

from hfpc_reward.reward.memory import OriginalMemory
from hfpc_reward.reward.model import HFPCRewardModel, RewardModelConfig, RewardModelLoadError
from hfpc_reward.reward.rows import score_rows
from hfpc_reward.testing.tiny_blip import TINY_HEAD


@pytest.fixture(scope="module")
def kit(tiny_reward_kit):
    return tiny_reward_kit


def _pixels(seed, n=3, size=40):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_save_load_round_trip_is_exact(kit, tmp_path):
    model = HFPCRewardModel.from_pretrained(kit["reward"])
    model.score_mean, model.score_std, model.threshold = 0.25, 2.0, 0.7
    with torch.no_grad():
        model.head[0].weight.add_(0.5)  # make the head differ from any fresh initialisation
    saved = model.save_pretrained(tmp_path / "rm")
    assert {"config.json", "model.safetensors", "processor_config.json"} <= {p.name for p in saved.iterdir()}
    loaded = HFPCRewardModel.from_pretrained(saved)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert (loaded.score_mean, loaded.score_std, loaded.threshold) == (0.25, 2.0, 0.7)
    originals, generated = _pixels(0), _pixels(1)
    assert torch.equal(model.eval().score(originals, generated), loaded.score(originals, generated))


def test_plain_blip_gets_a_new_head_with_the_given_architecture(kit):
    config = RewardModelConfig(head_dims=[8], head_dropout=[0.0], referenced=False)
    model = HFPCRewardModel.from_pretrained(kit["blip"], config=config)
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 8), (8, 1)]
    assert model.score(None, _pixels(2)).shape == (3,)


def test_reward_checkpoint_refuses_a_different_architecture(kit):
    with pytest.raises(RewardModelLoadError, match="own architecture"):
        HFPCRewardModel.from_pretrained(
            kit["reward"], config=RewardModelConfig(head_dims=[8], head_dropout=[0.0])
        )


def test_strict_loading_names_mismatched_keys(kit, tmp_path):
    model = HFPCRewardModel.from_pretrained(kit["reward"])
    saved = model.save_pretrained(tmp_path / "rm")
    config = json.loads((saved / "config.json").read_text())
    config["hfpc_reward_model"]["head_dims"] = [64, 16, 4]
    config["hfpc_reward_model"]["head_dropout"] = [0.1, 0.0, 0.0]
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(RewardModelLoadError, match=r"missing \['head\.\d+\.(weight|bias)'"):
        HFPCRewardModel.from_pretrained(saved)


def test_score_is_batched_standardised_and_prompt_aware(kit):
    model = HFPCRewardModel.from_pretrained(kit["reward"])
    with torch.no_grad():
        model.head[-1].weight.mul_(1000.0)  # spread the near-constant fresh scores so differences show
    originals, generated = _pixels(3, n=5), _pixels(4, n=5)
    raw = model.score(originals, generated, standardise=False)
    model.score_mean, model.score_std = 1.5, 4.0
    assert torch.allclose(model.score(originals, generated), (raw - 1.5) / 4.0, atol=1e-6)
    assert torch.allclose(
        model.score(originals, generated, batch_size=2), model.score(originals, generated), atol=1e-6
    )
    prompted = model.score(originals, generated, prompts=["a red shoe on marble"] * 5)
    assert not torch.allclose(prompted, model.score(originals, generated))
    # the original conditions the score
    assert not torch.allclose(model.score(_pixels(9, n=5), generated), model.score(originals, generated))


def test_k_candidates_per_original_match_one_to_one(kit):
    model = HFPCRewardModel.from_pretrained(kit["reward"]).eval()
    originals, generated = _pixels(5, n=2), _pixels(6, n=4)
    with torch.no_grad():
        stacked = model(originals, generated)
        one_to_one = model(originals.repeat(2, 1, 1, 1), generated)
    assert torch.allclose(stacked, one_to_one, atol=1e-6)
    with pytest.raises(ValueError, match="k images per original"):
        model(originals, _pixels(7, n=3))


def test_gradients_reach_generated_pixels_finite_difference(kit):
    model = HFPCRewardModel.from_pretrained(kit["reward"], dtype=torch.float64).eval()
    originals = _pixels(10, n=1, size=32).double()
    generated = _pixels(11, n=1, size=48).double().requires_grad_(True)
    model(originals, generated).sum().backward()
    grad = generated.grad
    assert grad.abs().sum() > 0
    # directional finite difference along a random direction matches the analytic gradient
    direction = torch.randn(generated.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = 1e-4
    with torch.no_grad():
        plus = model(originals, generated + eps * direction)
        minus = model(originals, generated - eps * direction)
    numeric = ((plus - minus) / (2 * eps)).item()
    analytic = (grad * direction).sum().item()
    assert numeric == pytest.approx(analytic, rel=1e-4, abs=1e-12)


def test_score_rows_skips_unreadable_rows_keeps_the_rest(kit, tmp_path):
    from PIL import Image

    from hfpc_reward.data.manifest import ManifestRow

    good = tmp_path / "good.png"
    Image.fromarray(np.full((20, 20, 3), 120, np.uint8)).save(good)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows = [
        ManifestRow(origin=str(good), generation=str(good), label=1),
        ManifestRow(origin=str(good), generation=str(tmp_path / "broken.png"), label=0),
        ManifestRow(origin=str(good), generation=str(good), label=0, prompt="a shoe"),
    ]
    scores = score_rows(HFPCRewardModel.from_pretrained(kit["reward"]), rows, batch_size=3)
    assert np.isfinite(scores[[0, 2]]).all() and np.isnan(scores[1])


def test_freeze_fraction(kit):
    model = HFPCRewardModel.from_pretrained(kit["blip"], config=RewardModelConfig(**TINY_HEAD))
    model.freeze_backbone(0.5)  # 2 layers per encoder: the lower one and the embeddings freeze
    assert not model.vision.encoder.layers[0].self_attn.qkv.weight.requires_grad
    assert model.vision.encoder.layers[1].self_attn.qkv.weight.requires_grad
    assert not model.text.embeddings.word_embeddings.weight.requires_grad
    assert not model.backbone_frozen
    model.freeze_backbone(1.0)
    assert model.backbone_frozen and model.head[0].weight.requires_grad


def test_bfloat16_model_scores_close_to_float32_and_passes_gradients(kit):
    full = HFPCRewardModel.from_pretrained(kit["reward"])
    half = HFPCRewardModel.from_pretrained(kit["reward"], dtype=torch.bfloat16)
    with torch.no_grad():
        for model in (full, half):
            model.head[-1].weight.mul_(1000.0)  # spread the near-constant fresh scores
    originals, generated = _pixels(12, n=4), _pixels(13, n=4)
    assert half.score(originals, generated).dtype == torch.float32
    assert torch.allclose(
        half.score(originals, generated), full.score(originals, generated), atol=0.1, rtol=0.1
    )
    pixels = generated.clone().requires_grad_(True)
    half(originals, pixels).sum().backward()
    assert pixels.grad.dtype == torch.float32 and pixels.grad.abs().sum() > 0


def _spread(model):
    """Scale the fresh head's last layer so scores differ visibly between inputs."""
    with torch.no_grad():
        model.head[-1].weight.mul_(1000.0)
    return model


def test_original_memory_scores_equal_the_plain_path_for_mixed_and_repeated_originals(kit):
    model = _spread(HFPCRewardModel.from_pretrained(kit["reward"]).eval())
    originals, generated = _pixels(20, n=3), _pixels(21, n=6)
    which = [0, 2, 0, 1, 2, 0]  # generations of three originals, interleaved, one original three times
    prompts = ["a red shoe on marble", None, "a cup in the kitchen", None, None, "a bag"]
    with torch.no_grad():
        per_original = model.encode_original(originals).split()
        memory = OriginalMemory.cat([per_original[i] for i in which])
        tokens = model.encode_images(originals)[which]
        generated_tokens = model.encode_images(generated)
        cached = model.score_from_tokens(memory, generated_tokens, prompts, standardise=False)
        plain = model.score_from_tokens(tokens, generated_tokens, prompts, standardise=False)
        cached_features = model.fused_features(memory, generated_tokens, prompts)
        plain_features = model.fused_features(tokens, generated_tokens, prompts)
        other_original = model.fused_features(
            model.encode_images(1 - originals)[which], generated_tokens, prompts
        )
    assert cached.dtype == plain.dtype == torch.float32
    assert torch.allclose(cached, plain, atol=1e-5, rtol=0)
    assert torch.allclose(cached_features, plain_features, atol=1e-5, rtol=0)
    # the equality above is meaningful: other originals move the features 100x the tolerance
    assert (other_original - plain_features).abs().max() > 1e-3
    assert len(memory) == 6 and len(per_original) == 3


def test_original_memory_split_cat_and_select_keep_each_original_once(kit):
    model = HFPCRewardModel.from_pretrained(kit["reward"]).eval()
    with torch.no_grad():
        batch = model.encode_original(_pixels(22, n=3))
        generated_tokens = model.encode_images(_pixels(23, n=4))
    first, second, third = batch.split()
    joined = OriginalMemory.cat([first, second, third])
    assert len(joined.keys) == len(joined.values) == len(model.text.encoder.layer)
    assert all(torch.equal(a, b) for a, b in zip(joined.keys + joined.values, batch.keys + batch.values))
    assert batch.keys[0].shape[:2] == (3, model.text.config.num_attention_heads)
    repeated = OriginalMemory.cat([third, first, third, third])  # a cached memory reused: stored once
    assert repeated.keys[0].shape[0] == 2 and repeated.rows == (0, 1, 0, 0)
    selected = batch.select([2, 0, 2, 2])  # the same items, sharing the batch's tensors
    assert selected.keys is batch.keys and selected.rows == (2, 0, 2, 2)
    with torch.no_grad():
        assert torch.allclose(
            model.score_from_tokens(repeated, generated_tokens),
            model.score_from_tokens(selected, generated_tokens),
            atol=1e-6,
        )
    with pytest.raises(ValueError, match="OriginalMemory of 3 originals for 4 generated"):
        model.score_from_tokens(batch, generated_tokens)
    with pytest.raises(ValueError, match="rows must index its 3 originals"):
        OriginalMemory(batch.keys, batch.values, (3,))


def test_unreferenced_model_has_no_original_memory_and_scores_as_before(kit):
    config = RewardModelConfig(head_dims=[8], head_dropout=[0.0], referenced=False)
    model = HFPCRewardModel.from_pretrained(kit["blip"], config=config).eval()
    generated = _pixels(24, n=2)
    with pytest.raises(ValueError, match="unreferenced"):
        model.encode_original(_pixels(25, n=2))
    with torch.no_grad():
        from_tokens = model.score_from_tokens(None, model.encode_images(generated))
    assert torch.allclose(from_tokens, model.score(None, generated), atol=1e-6)


def test_original_memory_passes_the_same_gradients_to_generated_pixels(kit):
    model = _spread(HFPCRewardModel.from_pretrained(kit["reward"], dtype=torch.float64).eval())
    originals = _pixels(26, n=2).double()
    pixels = _pixels(27, n=2).double()
    with torch.no_grad():
        memory, tokens = model.encode_original(originals), model.encode_images(originals)
    grads = []
    for original_side in (memory, tokens):
        generated = pixels.clone().requires_grad_(True)
        model.score_from_tokens(original_side, model.encode_images(generated)).sum().backward()
        grads.append(generated.grad)
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-9, rtol=1e-7)


def test_scorer_with_an_unreferenced_model_scores_as_the_model(kit, tmp_path):
    from hfpc_reward.consistency.checker import ProductConsistencyChecker
    from hfpc_reward.consistency.config import ConsistencyConfig
    from hfpc_reward.data.manifest import read_manifest
    from hfpc_reward.sample.pairs import generate_pairs
    from hfpc_reward.scorer import HFPCScorer

    config = RewardModelConfig(head_dims=[8], head_dropout=[0.0], referenced=False)
    model = _spread(HFPCRewardModel.from_pretrained(kit["blip"], config=config).eval())
    rows = read_manifest(generate_pairs(tmp_path / "pairs", n_pairs=4, seed=1, size=64))
    scorer = HFPCScorer(model, ProductConsistencyChecker.from_config(ConsistencyConfig()))
    results = scorer.score(
        [r.origin for r in rows], [r.generation for r in rows], prompts=[r.prompt for r in rows]
    )
    expected = model.score(None, [r.generation for r in rows], prompts=[r.prompt for r in rows])
    assert [r.error for r in results] == [None] * 4
    assert [r.background_score for r in results] == pytest.approx(expected.tolist(), abs=1e-5)
    assert len(scorer._memories) == 0  # no original side is computed for a model that does not use it
