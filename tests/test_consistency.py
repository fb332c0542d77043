"""The consistency checker's API: metrics, classic backend, verdict, size policy, batching and errors."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from hfpc_reward.config import ConfigError, load_config
from hfpc_reward.consistency.checker import ConsistencyInputError, ProductConsistencyChecker
from hfpc_reward.consistency.classic import ClassicMaskFinder, studio_mask
from hfpc_reward.consistency.config import ClassicConfig, ConsistencyConfig, ThresholdConfig
from hfpc_reward.consistency.metrics import METRIC_NAMES, boundary_f_score, mask_metrics
from hfpc_reward.consistency.verdict import verdict
from hfpc_reward.images import ImageLoadError

SIZE = 256


def product_mask(size: int = SIZE) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[int(size * 0.3) : int(size * 0.8), int(size * 0.35) : int(size * 0.65)] = True
    return mask


def draw_product(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A red can with a yellow label and dark text stripes, painted where `mask` is true."""
    out = image.copy()
    out[mask] = (190, 30, 40)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    label = np.zeros_like(mask)
    label[y0 + (y1 - y0) // 3 : y0 + 2 * (y1 - y0) // 3, x0 : x1 + 1] = True
    out[label & mask] = (240, 220, 60)
    for k in range(3):
        row = y0 + (y1 - y0) // 3 + 8 + 10 * k
        out[row : row + 3, x0 + 8 : x1 - 8] = (30, 30, 30)
    return out


def textured_background(seed: int, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (size, size, 3)).astype(np.float32), (0, 0), 6)
    base = np.array([70, 120, 160], np.float32) if seed % 2 else np.array([90, 140, 80], np.float32)
    return np.clip(base + 250 * noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def scene():
    mask = product_mask()
    original = draw_product(np.full((SIZE, SIZE, 3), 245, np.uint8), mask)
    generated = draw_product(textured_background(1), mask)
    return original, generated, mask


@pytest.fixture(scope="module")
def checker():
    return ProductConsistencyChecker.from_config(ConsistencyConfig())


def jpeg(array: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def test_kept_product_on_a_new_background_is_consistent(checker, scene):
    original, generated, mask = scene
    report = checker.check([original], [generated], masks=[mask])[0]
    assert report.consistent and report.error is None and report.reasons == []
    assert set(report.metrics) == set(METRIC_NAMES)
    assert report.metrics["iou"] > 0.98 and report.metrics["delta_e"] < 2.0 and report.score > 0.8


def test_harmless_changes_pass(checker, scene):
    original, generated, mask = scene
    rng = np.random.default_rng(0)
    changed = generated.astype(np.float32)
    below = np.zeros_like(mask)
    below[int(SIZE * 0.8) : int(SIZE * 0.86), int(SIZE * 0.3) : int(SIZE * 0.72)] = True
    changed[below] *= 0.6  # soft shadow under the product
    changed = changed * 1.05 + 4  # mild colour grading
    changed = cv2.GaussianBlur(changed, (0, 0), 0.7) + rng.normal(0, 4, changed.shape)  # blur and noise
    changed = jpeg(np.clip(changed, 0, 255).astype(np.uint8), 75)
    report = checker.check([original], [changed], masks=[mask])[0]
    assert report.consistent, report.reasons


def test_product_coloured_expansion_is_found_and_measured(checker, scene):
    original, generated, mask = scene
    grown = mask.copy()
    grown[int(SIZE * 0.3) : int(SIZE * 0.6), int(SIZE * 0.65) : int(SIZE * 0.73)] = (
        True  # a bulge on the side
    )
    expanded = generated.copy()
    expanded[grown & ~mask] = (190, 30, 40)
    truth = (grown.sum() - mask.sum()) / mask.sum()
    report = checker.check([original], [expanded], masks=[mask])[0]
    assert not report.consistent
    assert any(reason.startswith("expanded") for reason in report.reasons)
    assert report.metrics["expansion"] == pytest.approx(truth, abs=0.05)
    assert report.metrics["lost_area"] < 0.02


def test_a_shifted_product_is_moved_and_nothing_else(checker, scene):
    original, generated, mask = scene
    shift = SIZE // 8
    moved = np.roll(generated, shift, axis=1)
    moved[:, :shift] = generated[:, :shift]
    report = checker.check([original], [moved], masks=[mask])[0]
    assert not report.consistent
    assert report.primary_reason == "moved" and report.failed_checks == ["moved"]
    assert len(report.reasons) == 1 and report.reasons[0].startswith("moved")
    assert report.to_record()["primary_reason"] == "moved"


def test_truncation_is_found_and_measured(checker, scene):
    original, generated, mask = scene
    truncated = generated.copy()
    cut = mask.copy()
    cut[: int(SIZE * 0.65)] = False  # the bottom part of the product is replaced by background
    truncated[cut] = textured_background(1)[cut]
    report = checker.check([original], [truncated], masks=[mask])[0]
    assert not report.consistent
    assert any(reason.startswith("truncated") for reason in report.reasons)
    assert report.metrics["lost_area"] == pytest.approx(cut.sum() / mask.sum(), abs=0.06)


def test_recolour_and_changed_label_are_appearance_failures_each_with_its_own_reason(checker, scene):
    original, generated, mask = scene
    recoloured = generated.copy()
    recoloured[mask] = generated[mask][:, ::-1]  # RGB -> BGR: a blue can
    report = checker.check([original], [recoloured], masks=[mask])[0]
    assert not report.consistent and report.metrics["iou"] > 0.95
    assert any(reason.startswith("recoloured (ΔE") for reason in report.reasons)
    # a colour map explains it all: recoloured, not also a melted outline or a changed label
    assert report.metrics["mapped_delta_e"] < 2.5 < report.metrics["delta_e"]
    assert report.failed_checks == ["recoloured"] and report.primary_reason == "recoloured"

    relabelled = generated.copy()
    relabelled[int(SIZE * 0.47) : int(SIZE * 0.62), int(SIZE * 0.38) : int(SIZE * 0.62)] = (
        240,
        220,
        60,
    )  # text gone
    report = checker.check([original], [relabelled], masks=[mask])[0]
    assert not report.consistent and report.metrics["ssim"] < 0.9
    assert report.metrics["mapped_delta_e"] > 2.5  # no colour map brings the text back
    assert report.primary_reason == "relabelled" and "recoloured" not in report.failed_checks


def latent_round_trip(image: np.ndarray, factor: int) -> np.ndarray:
    """Down `factor`x and back up, as a VAE's latent softens a whole generated image."""
    small = cv2.resize(image, (SIZE // factor, SIZE // factor), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)


def test_a_label_softened_by_a_latent_round_trip_is_no_relabel_but_a_lost_one_still_is(checker, scene):
    original, generated, mask = scene
    report = checker.check([original], [latent_round_trip(generated, 5)], masks=[mask])[0]
    assert report.consistent, report.reasons  # before: "label or texture changed (SSIM 0.87)"
    relabelled = generated.copy()
    relabelled[int(SIZE * 0.47) : int(SIZE * 0.62), int(SIZE * 0.38) : int(SIZE * 0.62)] = (240, 220, 60)
    report = checker.check([original], [latent_round_trip(relabelled, 5)], masks=[mask])[0]
    assert not report.consistent and report.primary_reason == "relabelled"


def test_mask_from_alpha_and_from_studio_background(checker, scene):
    original, generated, mask = scene
    rgba = np.dstack([original, np.where(mask, 255, 0).astype(np.uint8)])
    alpha_product = checker.prepare_originals([rgba])[0]
    assert alpha_product.source == "alpha" and np.array_equal(alpha_product.mask, mask)
    studio, notes = studio_mask(original, ClassicConfig())
    assert notes == [] and (studio & mask).sum() / (studio | mask).sum() > 0.95
    report = checker.check([original], [generated])[0]  # no mask: studio extraction
    assert report.consistent, report.reasons


def test_size_policy_resizes_same_aspect_and_refuses_a_stretch(checker, scene):
    original, generated, mask = scene
    bigger = cv2.resize(generated, (2 * SIZE, 2 * SIZE), interpolation=cv2.INTER_CUBIC)
    report = checker.check([original], [bigger], masks=[mask])[0]
    assert report.consistent and report.metrics["aspect_mismatch"] == 0.0
    stretched = cv2.resize(generated, (int(SIZE * 1.3), SIZE), interpolation=cv2.INTER_CUBIC)
    report = checker.check([original], [stretched], masks=[mask])[0]
    assert not report.consistent
    assert report.metrics["aspect_mismatch"] == pytest.approx(np.log(1.3), abs=0.01)
    assert any(reason.startswith("aspect ratio differs") for reason in report.reasons)


class CountingFinder(ClassicMaskFinder):
    """The real classic backend, counting how many originals it prepared."""

    prepared = 0

    def original_products(self, originals, masks, prompts):
        CountingFinder.prepared += len(originals)
        return super().original_products(originals, masks, prompts)


def test_original_side_work_once_per_distinct_original(tmp_path, scene):
    original, generated, mask = scene
    Image.fromarray(original).save(tmp_path / "o.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    config = ConsistencyConfig()
    checker = ProductConsistencyChecker(config, CountingFinder(config))
    other = draw_product(np.full((SIZE, SIZE, 3), 230, np.uint8), mask)
    originals = [tmp_path / "o.png", tmp_path / "o.png", original.copy(), other, other.copy()]
    masks = [tmp_path / "m.png", tmp_path / "m.png", mask, mask, mask]
    CountingFinder.prepared = 0
    reports = checker.check(originals, [generated] * 5, masks=masks)
    assert CountingFinder.prepared == 3  # the path, the in-memory copy, the other product (same pixels twice)
    assert all(report.consistent for report in reports)
    products = checker.prepare_originals([original], [mask])
    again = checker.check_prepared(products * 2, [generated, generated])
    assert [r.metrics for r in again] == [reports[2].metrics] * 2


def test_tensor_batch_matches_list_batch(checker, scene):
    torch = pytest.importorskip("torch")
    original, generated, mask = scene
    as_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1).float().div(255).unsqueeze(0)
    from_tensors = checker.check(as_tensor(original), as_tensor(generated), masks=[mask])[0]
    from_arrays = checker.check([original], [generated], masks=[mask])[0]
    assert from_tensors.consistent == from_arrays.consistent
    assert from_tensors.metrics["iou"] == pytest.approx(from_arrays.metrics["iou"], abs=1e-6)


def test_one_bad_item_does_not_lose_the_batch(checker, scene, tmp_path):
    original, generated, mask = scene
    missing = tmp_path / "missing.png"
    empty_mask = np.zeros_like(mask)
    reports = checker.check(
        [original, original, original],
        [generated, missing, generated],
        masks=[mask, mask, empty_mask],
        errors="report",
    )
    assert reports[0].consistent and reports[0].error is None
    assert "does not exist" in reports[1].error and reports[1].score == 0.0 and reports[1].consistent is None
    assert reports[1].failed_checks == ["error"] and reports[1].primary_reason == "error"
    assert "product mask (given) is empty" in reports[2].error
    assert reports[1].reasons == [f"error: {reports[1].error}"] and reports[1].metrics == {}
    with pytest.raises(ImageLoadError, match="does not exist"):
        checker.check([original], [missing], masks=[mask])
    with pytest.raises(ConsistencyInputError, match="covers 100.0% of the image"):
        checker.check([original], [generated], masks=[np.ones_like(mask)])
    with pytest.raises(ValueError, match="errors must be"):
        checker.check([original], [generated], errors="ignore")


def test_mask_metrics_values():
    m_orig = np.zeros((100, 100), bool)
    m_orig[20:60, 20:60] = True  # 1600 px
    m_gen = np.zeros_like(m_orig)
    m_gen[20:60, 30:80] = True  # 2000 px, overlap 1200
    metrics = mask_metrics(m_orig, m_gen, boundary_tolerance=0.02)
    assert metrics["iou"] == pytest.approx(1200 / 2400)
    assert metrics["expansion"] == pytest.approx((2400 - 1600) / 1600)
    assert metrics["lost_area"] == pytest.approx(400 / 1600)
    assert metrics["area_ratio"] == pytest.approx(2000 / 1600)
    assert metrics["centroid_shift"] == pytest.approx(15 / np.hypot(40, 40), abs=1e-6)
    assert boundary_f_score(m_orig, m_orig, 1.0) == 1.0
    assert mask_metrics(m_orig, np.zeros_like(m_orig), 0.02)["centroid_shift"] == 1.0


def test_verdict_score_and_thresholds_from_config():
    good = {
        "iou": 0.99,
        "expansion": 0.01,
        "lost_area": 0.0,
        "centroid_shift": 0.0,
        "boundary_f": 0.99,
        "delta_e": 1.0,
        "ssim": 0.98,
        "changed_area": 0.0,
        "edge_changed": 0.0,
        "bleed": 0.0,
        "reach": 0.0,
        "halo": 0.0,
        "aspect_mismatch": 0.0,
    }
    outcome = verdict(good, ThresholdConfig())
    assert outcome.consistent and 0.5 <= outcome.score <= 1.0 and outcome.reasons == []
    assert outcome.failed_checks == []
    bad = dict(good, expansion=0.23, delta_e=14.2, ssim=0.41)
    outcome = verdict(bad, ThresholdConfig())
    assert not outcome.consistent and 0.0 <= outcome.score < 0.5
    assert outcome.failed_checks == ["expanded", "recoloured"]  # the SSIM drop is explained by the recolour
    assert outcome.reasons == ["expanded 23%", "recoloured (ΔE 14.2)"]
    loose = load_config(
        ConsistencyConfig,
        None,
        ["thresholds.max_expansion=0.3", "thresholds.max_delta_e=20", "thresholds.min_ssim=0.3"],
    )
    assert verdict(bad, loose.thresholds).consistent
    with pytest.raises(ConfigError, match="max_expansion must be > 0"):
        load_config(ConsistencyConfig, None, ["thresholds.max_expansion=-1"])
    with pytest.raises(ConfigError, match="segment_size"):
        load_config(ConsistencyConfig, None, ["classic.segment_size=8"])


def test_verdict_names_an_interior_change_by_its_kind_not_a_melted_outline():
    good = dict.fromkeys(("expansion", "lost_area", "centroid_shift", "bleed", "reach", "halo"), 0.0)
    good.update(iou=0.99, boundary_f=0.99, aspect_mismatch=0.0, delta_e=1.0, ssim=0.98)
    changed = dict(good, delta_e=37.0, ssim=0.8, changed_area=1.0, edge_changed=1.0)
    recoloured = verdict(dict(changed, mapped_delta_e=0.9), ThresholdConfig())
    assert recoloured.failed_checks == ["recoloured"]  # the edge zone changed with the colour
    relabelled = verdict(dict(changed, mapped_delta_e=12.0), ThresholdConfig())
    assert relabelled.failed_checks == ["relabelled"]  # no colour map explains it
    assert all(not line.startswith("recoloured") for line in relabelled.reasons)
    # product colour past the outline (halo) is a bleed whatever happened inside
    bled = verdict(dict(changed, mapped_delta_e=0.9, halo=0.5), ThresholdConfig())
    assert bled.failed_checks[0] == "bled"
    # a results row written before mapped_delta_e existed keeps the colour-first order
    assert verdict(changed, ThresholdConfig()).failed_checks == ["recoloured"]
    # a new colour partly mistaken for background is no truncation; a product that lost a part is one
    partly_lost = dict(changed, mapped_delta_e=0.9, lost_area=0.05, iou=0.95)
    assert verdict(partly_lost, ThresholdConfig()).failed_checks == ["recoloured"]
    cut = dict(partly_lost, changed_area=0.06, edge_changed=0.1)
    assert verdict(cut, ThresholdConfig()).failed_checks[0] == "truncated"


def test_verdict_calls_a_product_found_intact_elsewhere_moved():
    # the masks saw only the part it left (what a segmenter that missed the new place reports)
    left = dict.fromkeys(("expansion", "bleed", "reach", "halo", "changed_area", "edge_changed"), 0.0)
    left.update(iou=0.5, boundary_f=0.5, aspect_mismatch=0.0, lost_area=0.5, centroid_shift=0.03)
    left.update(delta_e=25.0, ssim=0.5, mapped_delta_e=20.0)
    assert verdict(dict(left, moved_by=0.0), ThresholdConfig()).failed_checks == ["truncated"]
    moved = verdict(dict(left, moved_by=0.17), ThresholdConfig())
    assert moved.failed_checks == ["moved"] and moved.reasons == ["moved (17% of its size)"]
    # a consistent pair stays consistent whatever the search found
    assert verdict(
        dict(left, lost_area=0.0, iou=0.99, boundary_f=0.99, delta_e=1.0, ssim=0.98, moved_by=0.17),
        ThresholdConfig(),
    ).consistent


def test_fit_thresholds_separates_labels_and_never_ends_worse():
    from hfpc_reward.consistency.calibrate import detection_metrics, fit_thresholds

    rng = np.random.default_rng(0)
    good = {
        "iou": 1.0,
        "expansion": 0.0,
        "lost_area": 0.0,
        "centroid_shift": 0.0,
        "boundary_f": 1.0,
        "delta_e": 1.0,
        "ssim": 0.99,
        "changed_area": 0.0,
        "edge_changed": 0.0,
        "bleed": 0.0,
        "reach": 0.0,
        "halo": 0.0,
        "aspect_mismatch": 0.0,
    }
    metrics, truth = [], []
    for k in range(
        60
    ):  # consistent pairs drift by up to 3 dE; recoloured ones by 4 to 12 (over the default 2.5)
        consistent = k % 2 == 0
        delta_e = rng.uniform(0.2, 3.0) if consistent else rng.uniform(4.0, 12.0)
        metrics.append(dict(good, delta_e=delta_e))
        truth.append(consistent)
    start = ThresholdConfig()
    before = detection_metrics(truth, [verdict(m, start).consistent for m in metrics])
    fitted = fit_thresholds(metrics, truth, start)
    after = detection_metrics(truth, [verdict(m, fitted).consistent for m in metrics])
    assert before["false_rejection"] > 0 and after["f1"] == 1.0 and after["false_rejection"] == 0.0
    assert 3.0 <= fitted.max_delta_e <= 4.0
    with pytest.raises(ValueError, match="both consistent and inconsistent"):
        fit_thresholds(metrics[::2], truth[::2], start)


def test_a_tiny_generated_image_is_an_error_not_a_verdict(scene):
    original, _, mask = scene
    checker = ProductConsistencyChecker.from_config(ConsistencyConfig())
    tiny = Image.new("RGB", (1, 1), (200, 30, 40))
    report = checker.check([original], [tiny], masks=[mask], errors="report")[0]
    assert report.consistent is None and report.primary_reason == "error"
    assert "1x1 px, below min_image_size=32" in report.error
    with pytest.raises(ConsistencyInputError, match="the generated image is 1x1 px"):
        checker.check([original], [tiny], masks=[mask])
    lenient = ProductConsistencyChecker.from_config(
        load_config(ConsistencyConfig, None, ["min_image_size=1"])
    )
    assert lenient.check([original], [tiny], masks=[mask], errors="report")[0].error is None


def test_a_palette_png_of_a_consistent_image_stays_consistent(tmp_path):
    mask = product_mask()
    scene = draw_product(textured_background(3), mask)
    ramp = (0.6 + 0.4 * np.linspace(0, 1, SIZE))[None, :, None]  # a shaded product: many colours to quantise
    original = np.where(mask[..., None], np.clip(scene * ramp, 0, 255), scene).astype(np.uint8)
    checker = ProductConsistencyChecker.from_config(ConsistencyConfig())
    palette_png = tmp_path / "generated.png"
    Image.fromarray(original).quantize(32).save(palette_png)
    assert Image.open(palette_png).mode == "P"
    report = checker.check([original], [palette_png], masks=[mask])[0]
    assert report.consistent, report.reasons  # before: "recoloured (ΔE 5.1)" from quantisation alone
    assert report.metrics["delta_e"] < 1.0
    recoloured = np.where(mask[..., None], original[..., ::-1], original)
    Image.fromarray(recoloured).quantize(32).save(palette_png)
    assert not checker.check([original], [palette_png], masks=[mask])[0].consistent
    # a flat three-colour generation whose can turned orange: mapping the red original onto its palette
    # gave orange, so the recolour vanished (consistent, ΔE 0); that palette cannot draw the product
    flat = np.full_like(original, (170, 200, 230))
    flat[SIZE * 3 // 4 :] = (120, 120, 120)
    red, orange = (
        np.where(mask[..., None], (190, 30, 40), original),
        np.where(mask[..., None], (240, 140, 20), flat),
    )
    report = checker.check([red.astype(np.uint8)], [orange.astype(np.uint8)], masks=[mask])[0]
    assert not report.consistent and report.primary_reason == "recoloured"


def test_a_dithered_palette_png_is_judged_as_the_eye_sees_it(tmp_path):
    mask = product_mask()
    original = draw_product(textured_background(3), mask)
    checker = ProductConsistencyChecker.from_config(ConsistencyConfig())
    dithered = tmp_path / "generated.png"
    Image.fromarray(original).convert("P").save(dithered)  # PIL's default: web palette, Floyd-Steinberg
    report = checker.check([original], [dithered], masks=[mask])[0]
    assert report.consistent, report.reasons  # before: "recoloured" with SSIM 0.4 from the dither pattern
    recoloured = np.where(mask[..., None], original[..., ::-1], original)
    Image.fromarray(recoloured).convert("P").save(dithered)
    report = checker.check([original], [dithered], masks=[mask])[0]
    assert not report.consistent and report.primary_reason == "recoloured"


def test_overlay_has_titled_panels_and_paints_expansion_in_its_own_colour(checker, scene):
    from hfpc_reward.consistency.overlays import EXPANDED_COLOUR, overlay_image

    original, generated, mask = scene
    grown = mask.copy()
    grown[int(SIZE * 0.3) : int(SIZE * 0.6), int(SIZE * 0.65) : int(SIZE * 0.78)] = True
    expanded = generated.copy()
    expanded[grown & ~mask] = (190, 30, 40)
    product = checker.prepare_originals([original], [mask])[0]
    ((report, details),) = checker.inspect_prepared([product], [expanded])
    picture = overlay_image(details, report, max_delta_e=2.5)
    assert picture.shape[1] == 3 * details.original.shape[1] and picture.shape[0] > details.original.shape[0]
    title_height = (picture.shape[0] - details.original.shape[0]) // 4
    assert (picture[:title_height] < 100).any()  # panel titles are drawn above the panels
    expected = 0.35 * np.array([190, 30, 40]) + 0.65 * np.array(EXPANDED_COLOUR)
    tinted = np.abs(picture.astype(int) - expected).sum(axis=2) < 40
    assert tinted[:, SIZE : 2 * SIZE].sum() > 0.5 * (grown & ~mask).sum()  # the bulge, in the generated panel
    from hfpc_reward.consistency.overlays import LEGEND, MIN_PANEL_WIDTH

    for width in (64, 96, 1024):  # the caption and the whole legend fit whatever the size
        small = cv2.resize(original, (width, width))
        product = checker.prepare_originals([small], [cv2.resize(mask.astype(np.uint8), (width, width)) > 0])[
            0
        ]
        ((report, details),) = checker.inspect_prepared([product], [cv2.resize(expanded, (width, width))])
        picture = overlay_image(details, report, 2.5)
        side = details.original.shape[1]
        assert picture.shape[1] == 3 * side * -(-MIN_PANEL_WIDTH // side)  # small images: enlarged whole
        legend = picture[-40:].reshape(-1, 3)
        for name, colour in LEGEND:  # every swatch is drawn, none dropped for want of room
            assert (legend == colour).all(axis=1).any(), name


def test_a_mask_a_few_pixels_off_is_snapped_back_to_the_product(checker, scene):
    from hfpc_reward.consistency.classic import refine_mask

    original, generated, mask = scene
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    dilated = cv2.dilate(mask.astype(np.uint8), kernel) > 0
    for wrong in (dilated, cv2.erode(mask.astype(np.uint8), kernel) > 0):
        refined = refine_mask(original, wrong, reach_px=6)
        assert (refined ^ mask).sum() < 0.25 * (wrong ^ mask).sum()
        report = checker.check([original], [generated], masks=[wrong])[0]
        assert report.consistent, report.reasons  # before: "outline melted", "recoloured" from the 3 px ring
    unrefined = ProductConsistencyChecker.from_config(
        load_config(ConsistencyConfig, None, ["refine_mask_fraction=0"])
    )
    assert not unrefined.check([original], [generated], masks=[dilated])[0].consistent


def test_studio_extraction_leaves_the_soft_cast_shadow_out(scene):
    original, generated, mask = scene
    shadow = cv2.GaussianBlur(np.roll(mask, (10, 8), axis=(0, 1)).astype(np.float32), (0, 0), 5)
    shaded = (original * (1 - 0.3 * shadow)[..., None]).astype(np.uint8)
    shaded[mask] = original[mask]
    extracted, notes = studio_mask(shaded, ClassicConfig())
    assert notes == [] and (extracted & mask).sum() / (extracted | mask).sum() > 0.97
    checker = ProductConsistencyChecker.from_config(ConsistencyConfig())
    assert checker.check([shaded], [generated])[0].consistent


def test_an_outline_bled_into_the_background_is_caught(checker, scene):
    original, generated, mask = scene
    ring = (cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0) & ~mask
    bled = generated.copy()
    bled[ring] = (0.8 * np.array([190, 30, 40]) + 0.2 * generated[ring]).astype(np.uint8)
    report = checker.check([original], [bled], masks=[mask])[0]
    assert not report.consistent and report.primary_reason in ("bled", "expanded")
    assert report.metrics["bleed"] > ThresholdConfig().max_bleed


def test_a_thin_limb_grown_out_of_the_product_is_caught_by_its_reach(checker, scene):
    """A limb in the product's colour covers little area (expansion under its threshold) but reaches far."""
    original, generated, mask = scene
    grown = generated.copy()
    ys, xs = np.nonzero(mask)
    limb = np.zeros_like(mask)
    limb[ys.max() - 30 : ys.max() - 20, xs.max() + 1 : xs.max() + 40] = True  # 10 px wide, 39 px out
    grown[limb] = (190, 30, 40)
    report = checker.check([original], [grown], masks=[mask])[0]
    assert report.metrics["expansion"] < ThresholdConfig().max_expansion
    assert report.metrics["reach"] > ThresholdConfig().max_reach
    assert not report.consistent and report.primary_reason == "expanded"


def test_an_object_behind_the_product_meeting_it_at_an_edge_is_no_expansion(checker, scene):
    """A background object in a colour near one of the product's (its label's) that meets the product at a
    clear colour step (its red top) is not the product grown; the same object continuing that red is."""
    original, generated, mask = scene
    ys, xs = np.nonzero(mask)
    block = np.zeros_like(mask)
    block[ys.min() + 10 : ys.min() + 40, xs.max() + 1 : xs.max() + 45] = True  # touches the red top
    behind = generated.copy()
    behind[block] = (
        235,
        200,
        80,
    )  # a yellow object: the label's hue, but not its exact colour, at the red part
    assert checker.check([original], [behind], masks=[mask])[0].consistent
    continuing = generated.copy()
    continuing[block] = (190, 30, 40)  # the red of the part it touches: grown out of the product
    report = checker.check([original], [continuing], masks=[mask])[0]
    assert not report.consistent and report.primary_reason == "expanded"


def test_a_glow_of_product_colour_is_caught_and_a_blurred_generation_is_not(checker, scene):
    original, generated, mask = scene
    glow = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 4) * 2.0
    glow = np.clip(glow, 0, 0.9)[..., None] * (~mask)[..., None]
    haloed = (generated * (1 - glow) + np.array([190, 30, 40]) * glow).astype(np.uint8)
    report = checker.check([original], [haloed], masks=[mask])[0]
    assert report.metrics["halo"] > ThresholdConfig().max_halo
    assert not report.consistent and report.primary_reason == "bled"
    from hfpc_reward.consistency.overlays import BLED_COLOUR, overlay_image

    ((report, details),) = checker.inspect_prepared(checker.prepare_originals([original], [mask]), [haloed])
    assert details.glow.sum() > 0.3 * (glow[..., 0] > 0.3).sum() and not (details.glow & mask).any()
    panel = overlay_image(details, report, 2.5)[:, SIZE : 2 * SIZE].astype(int)
    tinted = np.abs(panel - (0.35 * np.array([190, 30, 40]) + 0.65 * np.array(BLED_COLOUR))).sum(axis=2) < 60
    assert tinted.sum() > 0.3 * details.glow.sum()  # the glow is drawn in the bled colour
    blurred = cv2.GaussianBlur(generated, (0, 0), 0.8)
    report = checker.check([original], [blurred], masks=[mask])[0]
    assert report.metrics["halo"] < ThresholdConfig().max_halo / 2 and report.consistent, report.reasons


def test_the_grading_fit_follows_the_unchanged_part_of_the_product():
    """Mild grading is fitted on the pixels the first fit explains best: a part that changed does not drag it."""
    from hfpc_reward.consistency.metrics import fit_grading

    rng = np.random.default_rng(0)
    original = rng.uniform(40, 200, (64, 64, 3)).astype(np.float32)
    generated = original * 1.05 + 6.0  # a mild global grading ...
    generated[:, :24] = 250.0 - original[:, :24]  # ... and 38% of the product changed beyond it
    gain, offset = fit_grading(original, generated, np.ones((64, 64), bool), gain=0.15, offset=20.0)
    assert np.allclose(gain, 1.05, atol=0.02) and np.allclose(offset, 6.0, atol=3.0)


def test_a_product_with_no_contrast_to_its_backdrop_gets_no_halo_verdict(checker):
    """A white product on a white backdrop: almost no ring pixel has a product / background mix to measure,
    so a busy new background cannot make up a halo."""
    mask = product_mask()
    original = np.full((SIZE, SIZE, 3), 245, np.uint8)
    original[mask] = (238, 238, 240)
    generated = textured_background(2)
    generated[mask] = original[mask]
    report = checker.check([original], [generated], masks=[mask])[0]
    assert report.metrics["halo"] == 0.0


def test_a_product_found_intact_elsewhere_is_moved_not_truncated(checker, scene):
    original, _, mask = scene
    shifted = np.roll(mask, SIZE // 10, axis=0)
    generated = draw_product(textured_background(1), shifted)  # moved down on a new background
    report = checker.check([original], [generated], masks=[mask])[0]
    assert not report.consistent
    assert report.metrics["moved_by"] == pytest.approx((SIZE // 10) / np.hypot(128, 77), abs=0.03)
    assert report.primary_reason == "moved" and report.failed_checks == ["moved"]
    # a product that lost its top is found nowhere else intact: truncated, not moved
    cut = mask.copy()
    cut[: int(SIZE * 0.45)] = False
    report = checker.check([original], [draw_product(textured_background(1), cut)], masks=[mask])[0]
    assert report.metrics["moved_by"] == 0.0 and report.primary_reason == "truncated"


@pytest.mark.parametrize("corner", [False, True])
def test_appearance_metrics_read_only_their_window(scene, monkeypatch, corner):
    """The appearance metrics cut both images to the product's window: every value and map equals the one
    computed on the whole image (a window cut too tight would change the blurs near its border)."""
    from hfpc_reward.consistency import appearance

    original, _, mask = scene
    # a small product (in a corner: its window meets the image border), with a glow, a recolour and noise
    size = SIZE // 3
    small = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
    m = np.zeros_like(mask)
    at = (0, SIZE - size) if corner else (SIZE // 3, SIZE // 4)
    m[at[0] : at[0] + size, at[1] : at[1] + size] = small
    before = draw_product(np.full_like(original, 245), m)
    after = draw_product(textured_background(3), m)
    glow = (
        np.clip(cv2.GaussianBlur(m.astype(np.float32), (0, 0), 2) * 2.0, 0, 0.9)[..., None] * (~m)[..., None]
    )
    after = np.clip(after * (1 - glow) + np.array([190, 30, 40]) * glow, 0, 255)
    after[m & (after[..., 1] > 150)] = (60, 60, 200)  # the label recoloured
    after = (after + np.random.default_rng(0).normal(0, 4, after.shape)).clip(0, 255).astype(np.uint8)
    config = ConsistencyConfig().metrics
    windowed = appearance.original_appearance(before, m, config)
    assert windowed.region.size < 0.6 * m.size  # the window is a real cut
    monkeypatch.setattr(appearance, "WINDOW_MARGIN", 10 * SIZE)  # the window becomes the whole image
    whole = appearance.original_appearance(before, m, config)
    assert whole.region.shape == m.shape
    values, drift, glow_map = appearance.appearance_metrics(windowed, after, config)
    expected, drift_whole, glow_whole = appearance.appearance_metrics(whole, after, config)
    assert values["halo"] > 0 and values["changed_area"] > 0
    assert values == expected
    np.testing.assert_array_equal(drift, drift_whole)
    np.testing.assert_array_equal(glow_map, glow_whole)


def test_a_product_thinner_than_an_analysis_pixel_is_judged_not_crashed(checker):
    """A 3 px needle in a 2048 px image covers under half of every pixel at the analysis size: its mask kept
    the pixels it covers most instead of vanishing (it raised TypeError in the appearance window)."""
    mask = np.zeros((2048, 2048), bool)
    mask[200:1800, 1000:1003] = True
    original = np.full((2048, 2048, 3), 245, np.uint8)
    original[mask] = (20, 20, 20)
    report = checker.check([original], [original.copy()], masks=[mask])[0]
    assert report.consistent and report.error is None
