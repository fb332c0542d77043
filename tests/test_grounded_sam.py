"""The grounded-sam backend on the tiny random kit: box/mask plumbing, thresholds, box choice, fallbacks.

Random weights make detections meaningless, so these tests assert plumbing (coordinates, shapes, which
box is segmented, which path and note a result takes), never accuracy.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from hfpc_reward.config import ConfigError, load_config
from hfpc_reward.consistency.classic import studio_mask
from hfpc_reward.consistency.config import ClassicConfig, ConsistencyConfig, GroundedConfig
from hfpc_reward.consistency.geometry import box_iou, box_mask, choose_box, mask_box, sam_input_boxes
from hfpc_reward.consistency.grounded_sam import (
    EMPTY_ORIGINAL_SEGMENT,
    NO_GENERATED_DETECTION,
    NO_ORIGINAL_DETECTION,
    GroundedMaskFinder,
    detection_text,
)


@pytest.fixture(scope="module")
def grounded_yaml(tmp_path_factory) -> Path:
    """The tiny kit written by `hfpc tiny-models DIR --only grounded_sam`, in process."""
    from hfpc_reward.cli import main

    out = tmp_path_factory.mktemp("tiny")
    assert main(["tiny-models", str(out), "--only", "grounded_sam"]) == 0
    return out / "consistency_grounded_sam.yaml"


def make_finder(grounded_yaml: Path, **grounded) -> GroundedMaskFinder:
    overrides = [f"grounded.{key}={value}" for key, value in grounded.items()]
    return GroundedMaskFinder(load_config(ConsistencyConfig, grounded_yaml, overrides))


@pytest.fixture(scope="module")
def detect_all(grounded_yaml) -> GroundedMaskFinder:
    """Threshold 0: every query of the tiny detector is a box."""
    return make_finder(grounded_yaml, box_threshold=0.0, text_threshold=0.0)


def photo(height: int, width: int, seed: int) -> Image.Image:
    """A plain backdrop with a coloured block and some noise."""
    rng = np.random.default_rng(seed)
    array = np.full((height, width, 3), 235, dtype=np.uint8)
    array[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] = rng.integers(
        0, 255, 3, dtype=np.uint8
    )
    noise = rng.integers(-10, 10, array.shape)
    return Image.fromarray(np.clip(array.astype(int) + noise, 0, 255).astype(np.uint8))


def rectangle_mask(height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return mask


def test_tiny_models_command_writes_a_grounded_config_that_loads(grounded_yaml):
    values = yaml.safe_load(grounded_yaml.read_text())
    assert values["backend"] == "grounded-sam"
    for key in ("detector_id", "sam_id"):
        assert Path(values["grounded"][key]).is_absolute() and Path(values["grounded"][key]).is_dir()
    config = load_config(ConsistencyConfig, grounded_yaml)
    assert (
        config.backend == "grounded-sam" and config.grounded.detector_id == values["grounded"]["detector_id"]
    )
    finder = GroundedMaskFinder(config)
    assert finder.detector.model.config.model_type == "grounding-dino"
    assert finder.segmenter.model.config.model_type == "sam"
    assert not finder.detector.model.training and not finder.segmenter.model.training


def test_sam_hq_checkpoints_segment_through_the_same_path(grounded_yaml):
    config = load_config(
        ConsistencyConfig,
        grounded_yaml.parent / "consistency_grounded_sam_hq.yaml",
        ["grounded.box_threshold=0"],
    )
    finder = GroundedMaskFinder(config)
    assert finder.segmenter.model.config.model_type == "sam_hq"
    originals = [photo(96, 128, 21), photo(60, 40, 22)]
    products = finder.original_products(originals, [None, None], [None, None])
    # the random tiny detector's best box may hold nothing SAM-HQ segments (then: studio extraction)
    assert "detected" in [product.source for product in products]
    for image, product, (mask, notes) in zip(
        originals, products, finder.generated_masks(originals, products)
    ):
        if product.source != "detected":
            continue
        assert product.cache["image_embedding"].intermediate is not None
        # generated == original: same detections, same box, and the cached embedding gives the same mask
        np.testing.assert_array_equal(mask, product.mask)
        assert mask.shape == (image.height, image.width) and notes == []


def test_a_segmenter_id_that_is_not_sam_is_refused_with_the_fix(grounded_yaml):
    detector_dir = yaml.safe_load(grounded_yaml.read_text())["grounded"]["detector_id"]
    with pytest.raises(ValueError, match="grounded.sam_id needs a SAM, SlimSAM or SAM-HQ"):
        make_finder(grounded_yaml, sam_id=detector_dir)


def test_detector_boxes_are_pixels_of_each_image_in_a_batch_of_different_sizes(detect_all):
    """Each image's boxes are the model's on that image alone, whatever else is in the batch (padding a batch
    to its largest image and longest text changed them), scaled to that image's pixels."""
    detector = detect_all.detector
    images = [photo(300, 200, 1), photo(90, 160, 2), photo(300, 200, 3)]
    prompts = ["Bottle", "red shoe", "Bottle"]
    detections = detector.detect(images, prompts)
    alone = [detector.detect([image], [prompt])[0] for image, prompt in zip(images, prompts)]
    for found, single in zip(detections, alone):
        np.testing.assert_allclose(found.boxes, single.boxes, atol=1e-4)
    for image, prompt, found in zip(images, prompts, detections):
        # reference: the model's normalised (cx, cy, w, h) boxes scaled by the image's own size
        text = "bottle." if prompt == "Bottle" else "red shoe."
        inputs = detector.processor(images=[image], text=[text], padding=True, return_tensors="pt")
        with torch.inference_mode():
            outputs = detector.model(**inputs)
        assert len(found.boxes) == detector.model.config.num_queries  # threshold 0 keeps every query
        assert found.boxes.dtype == np.float32 and found.boxes.shape == (len(found.scores), 4)
        assert np.all(np.diff(found.scores) <= 0), "detections must be sorted best first"
        cx, cy, w, h = outputs.pred_boxes[0].unbind(-1)
        expected = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).numpy()
        size = np.array([image.width, image.height] * 2, dtype=np.float32)
        expected = np.clip(expected * size, 0, size)
        scores = torch.sigmoid(outputs.logits[0]).max(-1).values.numpy()
        np.testing.assert_allclose(found.boxes, expected[np.argsort(-scores, kind="stable")], atol=1e-3)
        assert np.all(found.boxes[:, 2] <= image.width) and np.all(found.boxes[:, 3] <= image.height)
        assert len(found.labels) == len(found.boxes)


def test_a_prompt_longer_than_the_detectors_text_length_is_cut_not_fatal(detect_all):
    max_words = detect_all.detector.model.config.max_text_len
    (found,) = detect_all.detector.detect([photo(64, 64, 24)], ["red shoe " * max_words])
    assert len(found.boxes) == detect_all.detector.model.config.num_queries


def test_sam_box_prompts_match_the_processors_own_normalisation(detect_all):
    processor = detect_all.segmenter.processor
    image = photo(90, 160, 3)
    box = [[10.0, 20.0, 150.0, 80.0]]
    reference = processor(images=image, input_boxes=[box], return_tensors="pt")["input_boxes"][0].numpy()
    (embedded,) = detect_all.segmenter.embed([image])
    assert embedded.original_size == (90, 160)
    np.testing.assert_allclose(
        sam_input_boxes(np.array(box), embedded.original_size, embedded.reshaped_size), reference, atol=1e-4
    )


def test_segmenter_masks_have_each_images_size_for_any_number_of_boxes(detect_all):
    images = [photo(96, 128, 4), photo(150, 70, 5)]
    boxes = [np.array([[0, 0, 128, 96], [10, 10, 60, 50]], dtype=np.float32), np.zeros((0, 4), np.float32)]
    masks = detect_all.segmenter.segment(images, boxes)
    assert masks[0].shape == (2, 96, 128) and masks[0].dtype == bool
    assert masks[1].shape == (0, 150, 70)


def test_detected_originals_and_their_generations_in_a_batch_of_different_sizes(detect_all):
    originals = [photo(120, 160, 6), photo(200, 90, 7)]
    products = detect_all.original_products(originals, [None, None], ["Shoe", None])
    assert [p.prompt for p in products] == ["Shoe", "product"]  # missing prompt -> grounded.default_prompt
    for image, product in zip(originals, products):
        assert product.source == "detected" and product.notes == []
        assert product.mask.shape == (image.height, image.width) and product.mask.dtype == bool
        box = product.cache["box"]
        np.testing.assert_array_equal(box, product.cache["detections"].boxes[0])  # highest score
        assert not (product.mask & ~box_mask(box, product.mask.shape)).any(), "mask leaves its box"
        assert product.cache["image_embedding"].original_size == (image.height, image.width)
    generated = [photo(120, 160, 8), photo(200, 90, 9)]
    results = detect_all.generated_masks(generated, products)
    for image, (mask, notes) in zip(generated, results):
        assert mask.shape == (image.height, image.width) and mask.dtype == bool
        assert notes == []


@pytest.mark.parametrize("policy", ["best-overlap", "highest-score"])
def test_generated_mask_is_the_segmentation_of_the_box_the_policy_chooses(grounded_yaml, policy):
    finder = make_finder(grounded_yaml, box_threshold=0.0, text_threshold=0.0, box_choice=policy)
    original, generated = photo(128, 128, 10), photo(128, 128, 11)
    given = rectangle_mask(128, 128, (40, 30, 100, 110))
    (product,) = finder.original_products([original], [given], ["bottle"])
    ((mask, notes),) = finder.generated_masks([generated], [product])
    (found,) = finder.detector.detect([generated], ["bottle"])
    chosen = found.boxes[choose_box(found.boxes, found.scores, product.cache["box"], policy)]
    if policy == "highest-score":
        np.testing.assert_array_equal(chosen, found.boxes[0])
    else:
        assert (
            box_iou(chosen[None], product.cache["box"])[0] == box_iou(found.boxes, product.cache["box"]).max()
        )
    expected = finder.segmenter.segment([generated], [chosen[None]])[0][0] & box_mask(chosen, (128, 128))
    np.testing.assert_array_equal(mask, expected)
    assert notes == []


def test_given_mask_is_used_as_is_and_its_box_is_cached(detect_all):
    image = photo(100, 140, 12)
    given = rectangle_mask(100, 140, (20, 10, 90, 70))
    (product,) = detect_all.original_products([image], [given], [None])
    assert product.source == "given" and product.notes == [] and product.prompt == "product"
    np.testing.assert_array_equal(product.mask, given)
    np.testing.assert_array_equal(product.cache["box"], [20, 10, 90, 70])
    with pytest.raises(ValueError, match="mask shape"):
        detect_all.original_products([image], [given[:50]], [None])


def test_threshold_one_takes_the_no_detection_paths_with_their_notes(grounded_yaml):
    finder = make_finder(grounded_yaml, box_threshold=1.0, fallback="empty")
    images = [photo(80, 120, 13), photo(64, 64, 14)]
    assert all(len(found.boxes) == 0 for found in finder.detector.detect(images, ["box", "box"]))
    products = finder.original_products(images, [None, None], ["box", None])
    for image, product in zip(images, products):
        # undetected original: the classic backend's studio-background extraction gives the mask
        assert product.source == "studio" and product.notes[0].startswith(NO_ORIGINAL_DETECTION)
        np.testing.assert_array_equal(product.mask, studio_mask(np.asarray(image), ClassicConfig())[0])
        assert product.mask.any() and product.mask.shape == (image.height, image.width)
        np.testing.assert_array_equal(product.cache["box"], mask_box(product.mask))
    for image, (mask, notes) in zip(images, finder.generated_masks(images, products)):
        assert mask.shape == (image.height, image.width) and not mask.any()
        assert len(notes) == 1 and notes[0].startswith(NO_GENERATED_DETECTION)


class EmptySegmenter:
    """A Segmenter that never finds anything inside its boxes (a real model can do that on a hard box)."""

    def segment(self, images, boxes):
        return [np.zeros((len(b), im.height, im.width), dtype=bool) for im, b in zip(images, boxes)]


def test_an_empty_mask_in_the_detected_box_falls_back_to_studio_extraction(grounded_yaml):
    finder = make_finder(grounded_yaml, box_threshold=0.0)
    finder.segmenter = EmptySegmenter()
    image = photo(90, 120, 23)
    (product,) = finder.original_products([image], [None], ["cup"])
    assert product.source == "studio" and product.notes[0].startswith(EMPTY_ORIGINAL_SEGMENT)
    np.testing.assert_array_equal(product.mask, studio_mask(np.asarray(image), ClassicConfig())[0])
    assert len(product.cache["detections"].boxes) > 0  # it was detected; only the segment was empty


def test_original_box_fallback_segments_the_generated_image_inside_the_originals_box(grounded_yaml):
    finder = make_finder(grounded_yaml, box_threshold=1.0, fallback="original-box")
    original, generated = photo(96, 128, 15), photo(96, 128, 16)
    given = rectangle_mask(96, 128, (30, 20, 100, 80))
    (product,) = finder.original_products([original], [given], ["jar"])
    ((mask, notes),) = finder.generated_masks([generated], [product])
    assert len(notes) == 1 and notes[0].startswith(NO_GENERATED_DETECTION) and "original's box" in notes[0]
    box = np.array([30, 20, 100, 80], dtype=np.float32)
    expected = finder.segmenter.segment([generated], [box[None]])[0][0] & given
    np.testing.assert_array_equal(mask, expected)


def test_generated_images_must_be_aligned_to_their_originals(detect_all):
    (product,) = detect_all.original_products([photo(64, 64, 17)], [np.ones((64, 64), bool)], [None])
    with pytest.raises(ValueError, match="align it to the original"):
        detect_all.generated_masks([photo(64, 80, 18)], [product])


def test_choose_box_policies_on_fixed_boxes():
    boxes = np.array([[0, 0, 10, 10], [50, 50, 100, 100], [55, 55, 100, 100], [60, 60, 90, 90]], np.float32)
    scores = np.array([0.9, 0.5, 0.4, 0.7], np.float32)
    reference = np.array([50, 50, 100, 100], np.float32)
    assert choose_box(boxes, scores, reference, "best-overlap") == 1
    assert choose_box(boxes, scores, reference, "highest-score") == 0
    assert choose_box(boxes, scores, None, "best-overlap") == 0  # no original box: best score
    assert (
        choose_box(boxes, scores, np.array([200, 200, 220, 220], np.float32), "best-overlap") == 0
    )  # no overlap
    tied = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    assert (
        choose_box(
            tied, np.array([0.2, 0.6], np.float32), np.array([0, 0, 10, 10], np.float32), "best-overlap"
        )
        == 1
    )
    with pytest.raises(ValueError, match="at least one box"):
        choose_box(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), reference, "highest-score")


def test_box_helpers():
    np.testing.assert_allclose(box_iou(np.array([[0, 0, 10, 10], [5, 0, 15, 10]], float), np.array([0, 0, 10, 10])),
                               [1.0, 50 / 150])  # fmt: skip
    assert mask_box(np.zeros((5, 5), bool)) is None
    np.testing.assert_array_equal(mask_box(rectangle_mask(20, 30, (3, 4, 9, 15))), [3, 4, 9, 15])
    clipped = box_mask(np.array([-5.0, 2.5, 7.2, 40.0]), (20, 10))
    np.testing.assert_array_equal(clipped, rectangle_mask(20, 10, (0, 2, 8, 20)))
    assert detection_text("  Red Shoe ") == "red shoe." and detection_text("box.") == "box."
    with pytest.raises(ValueError, match="default_prompt"):
        detection_text("   ")


def test_grounded_config_rejects_bad_values_with_the_fix(grounded_yaml):
    with pytest.raises(ValueError, match="'float32', 'float16' or 'bfloat16'"):
        GroundedConfig(dtype="float64")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        GroundedConfig(batch_size=0)
    with pytest.raises(ConfigError, match="box_choice"):
        load_config(ConsistencyConfig, grounded_yaml, ["grounded.box_choice=largest"])


def test_grounded_efficientsam_backend_segments_with_efficientsam(tmp_path):
    pytest.importorskip("hfpc_reward.consistency.efficientsam")
    pytest.importorskip("hfpc_reward.testing.tiny_efficientsam")
    from hfpc_reward.testing import write_tiny_models

    written = write_tiny_models(tmp_path, only=["grounded_sam", "efficientsam"])
    path = next(
        (
            path
            for path in written.values()
            if yaml.safe_load(path.read_text()).get("backend") == "grounded-efficientsam"
        ),
        None,
    )
    if path is None:
        pytest.skip("the efficientsam tiny kit writes no grounded-efficientsam config")
    finder = GroundedMaskFinder(load_config(ConsistencyConfig, path, ["grounded.box_threshold=0"]))
    assert type(finder.segmenter).__name__ == "EfficientSamSegmenter"
    images = [photo(96, 128, 19), photo(70, 50, 20)]
    products = finder.original_products(images, [None, None], [None, None])
    # generated == original: the same detections, so best-overlap picks the original's own box
    for image, product, (mask, notes) in zip(images, products, finder.generated_masks(images, products)):
        assert product.source == "detected" and mask.shape == (image.height, image.width)
        assert product.cache["image_embedding"] is not None  # EfficientSAM's encoding of the original is kept
        np.testing.assert_array_equal(mask, product.mask)
        assert notes == []
