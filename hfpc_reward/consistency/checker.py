"""ProductConsistencyChecker: is the product in a generated image still the product of the original?

    checker = ProductConsistencyChecker.from_config(load_config(ConsistencyConfig, "configs/consistency/classic.yaml"))
    reports = checker.check(originals, generated, masks=None, prompts=None)   # one ConsistencyReport per pair

Batches are lists of paths / PIL images / arrays, or (B,3,H,W) tensors in [0,1] (see images.py).
`masks[i]`: the product mask of originals[i] (path / array / PIL, white = product) or None; `prompts[i]`:
the product phrase detection backends look for (e.g. the category "bottle"), or None for the backend's
default; the classic backend does not use it.

Original-side work (loading, product mask, backend features) is done once per distinct original in a batch:
originals are the same when they are the same path, or have the same pixels (content hash), with the same
mask and prompt. A caller that sees the same originals across calls (a reward function) can keep that work:
`products = checker.prepare_originals(originals, masks)` once, then `checker.check_prepared(products, generated)`
as often as needed (`products[i]` may be repeated to pair one original with several generations).

Size policy: the generated image is resized (bicubic) to the original's size before any comparison. When
the aspect ratios differ by more than `thresholds.max_aspect_mismatch` (|log ratio|), the pair is
inconsistent with the reason "aspect ratio differs ..." (the product would be distorted); below it the
small stretch is ignored.

Errors: `errors="raise"` (default) raises `ConsistencyInputError` (or the image loader's `ImageLoadError`)
for the first bad item. `errors="report"` never raises for one bad item: its report has `error` set to the
message, `consistent=None`, `score=0.0`, empty `metrics`, `failed_checks=["error"]`, `primary_reason="error"` and
`reasons=["error: <message>"]`; every other
item is checked normally. Bad inputs include unreadable images, a product mask that is empty or covers
(nearly) the whole image (`min_mask_fraction` / `max_mask_fraction`), and a mask file that cannot be read.

Verdict: a pair is consistent when every metric is on the good side of its threshold (ThresholdConfig).
Each metric's badness is value / threshold (upper bounds) or (1 - value) / (1 - threshold) (lower bounds);
`score = 0.5 ** max(badness)`, so score >= 0.5 exactly when the pair is consistent, 1.0 for a perfect copy.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
from PIL import Image

from hfpc_reward import images
from hfpc_reward.consistency.appearance import OriginalAppearance, appearance_metrics, original_appearance
from hfpc_reward.consistency.backends import MaskFinder, OriginalProduct
from hfpc_reward.consistency.classic import MIN_REFINE_PX, refine_mask
from hfpc_reward.consistency.colour import lab_norm
from hfpc_reward.consistency.config import ConsistencyConfig
from hfpc_reward.consistency.metrics import (
    fitted_size,
    isolated_share,
    mask_metrics,
    quantisation_palette,
    quantise_to_palette,
    reduced_mask,
    rgb_to_lab,
)
from hfpc_reward.consistency.verdict import ConsistencyReport, PairDetails, error_report, verdict
from hfpc_reward.errors import UsageError

logger = logging.getLogger(__name__)

# backend name -> "module:class" taking the ConsistencyConfig; imported only when chosen
BACKENDS: dict[str, str] = {
    "classic": "hfpc_reward.consistency.classic:ClassicMaskFinder",
    "grounded-sam": "hfpc_reward.consistency.grounded_sam:GroundedMaskFinder",
    "grounded-efficientsam": "hfpc_reward.consistency.grounded_sam:GroundedMaskFinder",
}

DITHER_MARGIN = 0.3  # share of product pixels isolated from both row neighbours that a dithered
# generation has beyond the original mapped onto its palette without dithering (measured on `lit` pairs:
# 0.5-0.8 more when dithered, at most 0.23 more for an undithered 256-colour palette of a noisy generation)
DITHER_SMOOTHING = 1.0  # Gaussian sigma (px) that averages a dithered generation's pattern away
PALETTE_FAITHFUL_DELTA_E = 10.0  # mean CIE76 of the product mapped onto a quantised generation's palette
# up to which that palette draws the unchanged product (quantisation error), beyond it a recolour
ANALYSIS_KEY = "checker.original_appearance"  # the checker's entry in OriginalProduct.cache


class ConsistencyInputError(UsageError):
    """One item of a batch cannot be checked (bad image, bad mask); the message says what and which."""


def build_backend(config: ConsistencyConfig) -> MaskFinder:
    module_name, class_name = BACKENDS[config.backend].split(":")
    return getattr(importlib.import_module(module_name), class_name)(config)


class ProductConsistencyChecker:
    """Checks product consistency with one backend (see the module docstring for the whole contract)."""

    def __init__(self, config: ConsistencyConfig, backend: MaskFinder):
        self.config = config
        self.backend = backend

    @classmethod
    def from_config(cls, config: ConsistencyConfig) -> ProductConsistencyChecker:
        return cls(config, build_backend(config))

    def check(
        self,
        originals: Sequence[Any] | Any,
        generated: Sequence[Any] | Any,
        masks: Sequence[Any] | None = None,
        prompts: Sequence[str | None] | None = None,
        errors: str = "raise",
    ) -> list[ConsistencyReport]:
        """One report per (originals[i], generated[i]); original-side work once per distinct original."""
        originals, generated = images.split_batch(originals), images.split_batch(generated)
        if len(originals) != len(generated):
            raise ValueError(
                f"got {len(originals)} originals but {len(generated)} generated images; pair them 1:1"
            )
        masks = [None] * len(originals) if masks is None else list(masks)
        prompts = [None] * len(originals) if prompts is None else list(prompts)
        if not len(masks) == len(prompts) == len(originals):
            raise ValueError("masks and prompts must have one entry per original (None where unknown)")
        keys = [_original_key(o, m, p) for o, m, p in zip(originals, masks, prompts)]
        first_of = {key: i for i, key in reversed(list(enumerate(keys)))}
        unique = list(first_of.values())
        prepared = self.prepare_originals(
            [originals[i] for i in unique],
            [masks[i] for i in unique],
            [prompts[i] for i in unique],
            errors=errors,
        )
        by_key = dict(zip([keys[i] for i in unique], prepared))
        return self.check_prepared([by_key[key] for key in keys], generated, errors=errors)

    def prepare_originals(
        self,
        originals: Sequence[Any] | Any,
        masks: Sequence[Any] | None = None,
        prompts: Sequence[str | None] | None = None,
        errors: str = "raise",
    ) -> list[OriginalProduct | ConsistencyInputError]:
        """The original-side work for each original (no de-duplication here: pass distinct originals).

        With errors="report", a bad original is returned as its ConsistencyInputError instead of raising.
        """
        _check_errors_mode(errors)
        originals = images.split_batch(originals)
        masks = [None] * len(originals) if masks is None else list(masks)
        prompts = [None] * len(originals) if prompts is None else list(prompts)
        loaded = [_guard(errors, self._load_original, o, m) for o, m in zip(originals, masks)]
        good = [i for i, item in enumerate(loaded) if not isinstance(item, Exception)]
        results: list[Any] = list(loaded)
        products = _batch_or_each(
            errors,
            lambda idx: self.backend.original_products(
                [loaded[i][0] for i in idx], [loaded[i][1] for i in idx], [prompts[i] for i in idx]
            ),
            good,
        )
        for i, product in zip(good, products):
            if not isinstance(product, Exception):
                if loaded[i][2] == "alpha":
                    product.source = "alpha"
                product = _guard(errors, self._validate_mask, product, images.describe(originals[i]))
            results[i] = product
        return results

    def check_prepared(
        self,
        products: Sequence[OriginalProduct | Exception],
        generated: Sequence[Any] | Any,
        errors: str = "raise",
    ) -> list[ConsistencyReport]:
        """Reports for generated[i] against products[i] (from prepare_originals; repeats allowed)."""
        return [report for report, _ in self.inspect_prepared(products, generated, errors=errors)]

    def inspect_prepared(
        self,
        products: Sequence[OriginalProduct | Exception],
        generated: Sequence[Any] | Any,
        errors: str = "raise",
    ) -> list[tuple[ConsistencyReport, PairDetails | None]]:
        """Like check_prepared, also returning the arrays behind each report (None for an error)."""
        _check_errors_mode(errors)
        generated = images.split_batch(generated)
        if len(products) != len(generated):
            raise ValueError(f"got {len(products)} prepared originals but {len(generated)} generated images")
        aligned: list[Any] = list(products)
        for i, (product, source) in enumerate(zip(products, generated)):
            if not isinstance(product, Exception):
                aligned[i] = _guard(errors, self._align, source, product)
        good = [i for i, item in enumerate(aligned) if not isinstance(item, Exception)]
        found = _batch_or_each(
            errors,
            lambda idx: self.backend.generated_masks(
                [aligned[i][0] for i in idx], [products[i] for i in idx]
            ),
            good,
        )
        results: list[tuple[ConsistencyReport, PairDetails | None]] = [
            (error_report(str(item)), None) if isinstance(item, Exception) else None for item in aligned
        ]
        for i, mask_and_notes in zip(good, found):
            if isinstance(mask_and_notes, Exception):
                results[i] = (error_report(str(mask_and_notes)), None)
                continue
            product = products[i]
            original = _guard(errors, self._analysis_original, product, aligned[i][2])
            outcome = (
                original
                if isinstance(original, Exception)
                else _guard(errors, self._compare, original, aligned[i], mask_and_notes, product.notes)
            )
            results[i] = (error_report(str(outcome)), None) if isinstance(outcome, Exception) else outcome
        return results

    def _load_original(self, source: Any, mask_source: Any) -> tuple[Image.Image, np.ndarray | None, str]:
        loaded = images.open_image(source)
        self._check_size(loaded.rgb, "original", source)
        if mask_source is not None:
            try:
                mask = images.load_mask(mask_source, size=loaded.rgb.size)
            except images.ImageLoadError as exc:
                raise ConsistencyInputError(f"product mask: {exc}") from None
            if self.config.refine_mask_fraction > 0 and mask.any():
                reach = max(MIN_REFINE_PX, round(self.config.refine_mask_fraction * max(mask.shape)))
                mask = refine_mask(np.asarray(loaded.rgb), mask, reach)
            return loaded.rgb, mask, "given"
        if loaded.alpha is not None and not loaded.alpha.all():
            return loaded.rgb, loaded.alpha, "alpha"
        return loaded.rgb, None, "none"

    def _validate_mask(self, product: OriginalProduct, name: str) -> OriginalProduct:
        fraction = float(product.mask.mean())
        if fraction < self.config.min_mask_fraction:
            raise ConsistencyInputError(
                f"{name}: product mask ({product.source}) is empty ({fraction:.2%} of the image); "
                "pass a mask that marks the product in white"
            )
        if fraction > self.config.max_mask_fraction:
            raise ConsistencyInputError(
                f"{name}: product mask ({product.source}) covers {fraction:.1%} of the image, leaving no "
                "background to compare; pass a mask of the product only"
            )
        return product

    def _check_size(self, image: Image.Image, role: str, source: Any) -> None:
        if min(image.size) < self.config.min_image_size:
            raise ConsistencyInputError(
                f"{images.describe(source)}: the {role} image is {image.size[0]}x{image.size[1]} px, below "
                f"min_image_size={self.config.min_image_size} px per side; pass the full image "
                "(or lower min_image_size)"
            )

    def _align(self, source: Any, product: OriginalProduct) -> tuple[Image.Image, float, np.ndarray | None]:
        """The generated image at the original's size, its aspect mismatch and, when the generation is
        quantised (palette PNG, GIF) without dithering, the original mapped onto its palette.

        A dithered generation (its product scattered into more isolated pixels than the mapped original
        has) is smoothed instead, as the eye sees it, and compared like any other."""
        image = images.load_rgb(source)
        self._check_size(image, "generated", source)
        (w, h), (ow, oh) = image.size, product.image.size
        mismatch = abs(float(np.log((w / h) / (ow / oh))))
        palette = quantisation_palette(np.asarray(image))
        image = images.resize_to(image, (ow, oh))
        if palette is None:
            return image, mismatch, None
        mapped = quantise_to_palette(np.asarray(product.image.convert("RGB")), palette)
        rgb = np.asarray(image)
        if isolated_share(rgb, product.mask) > isolated_share(mapped, product.mask) + DITHER_MARGIN:
            return Image.fromarray(cv2.GaussianBlur(rgb, (0, 0), DITHER_SMOOTHING)), mismatch, None
        return image, mismatch, mapped

    def _analysis_original(
        self, product: OriginalProduct, mapped: np.ndarray | None = None
    ) -> OriginalAppearance:
        """The original's appearance arrays, kept in the product's cache (reused by every later call).

        Against a quantised generation, the original `mapped` onto its palette is compared instead, so the
        comparison sees what the quantisation would have made of the unchanged product (not cached), when
        the palette can draw the product: a few flat colours with none near it (the product's new colour
        among them) would turn a recolour into no change, so the original is then compared as it is."""
        rgb = np.asarray(product.image.convert("RGB"))
        if mapped is not None:
            drawn = lab_norm(
                rgb_to_lab(rgb[product.mask][None]) - rgb_to_lab(mapped[product.mask][None])
            ).mean()
            if drawn > PALETTE_FAITHFUL_DELTA_E:
                mapped = None
        rgb = rgb if mapped is None else mapped
        if mapped is None and ANALYSIS_KEY in product.cache:
            return product.cache[ANALYSIS_KEY]
        size = self._analysis_size(product.image.size)
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        appearance = original_appearance(small, reduced_mask(product.mask, size), self.config.metrics)
        if mapped is None:
            product.cache[ANALYSIS_KEY] = appearance
        return appearance

    def _analysis_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return fitted_size(size[1], size[0], self.config.metrics.analysis_size)

    def _compare(
        self,
        original: OriginalAppearance,
        aligned: tuple[Image.Image, float, np.ndarray | None],
        mask_and_notes: tuple[np.ndarray, list[str]],
        original_notes: list[str],
    ) -> tuple[ConsistencyReport, PairDetails]:
        (gen_image, aspect_mismatch, _), (gen_mask, gen_notes) = aligned, mask_and_notes
        size = (original.rgb.shape[1], original.rgb.shape[0])
        gen_rgb = cv2.resize(np.asarray(gen_image.convert("RGB")), size, interpolation=cv2.INTER_AREA)
        m_gen = reduced_mask(gen_mask, size)
        metrics = mask_metrics(
            original.mask, m_gen, self.config.metrics.boundary_tolerance, self.config.metrics.ignore_band
        )
        appearance, drift, glow = appearance_metrics(original, gen_rgb, self.config.metrics)
        metrics.update(appearance)
        metrics["aspect_mismatch"] = aspect_mismatch
        outcome = verdict(metrics, self.config.thresholds)
        report = ConsistencyReport(
            outcome.consistent,
            outcome.score,
            metrics,
            outcome.reasons + list(original_notes) + list(gen_notes),
            failed_checks=outcome.failed_checks,
            primary_reason=outcome.failed_checks[0] if outcome.failed_checks else None,
        )
        return report, PairDetails(original.rgb, gen_rgb, original.mask, m_gen, drift, glow)


def _original_key(source: Any, mask: Any, prompt: str | None) -> tuple:
    return (images.content_key(source), None if mask is None else images.content_key(mask), prompt)


def _check_errors_mode(errors: str) -> None:
    if errors not in ("raise", "report"):
        raise ValueError(f"errors must be 'raise' or 'report', got {errors!r}")


def _guard(errors: str, function: Callable, *args):
    """function(*args); with errors="report", an input problem is returned as a ConsistencyInputError."""
    if errors == "raise":
        return function(*args)
    try:
        return function(*args)
    except (ConsistencyInputError, images.ImageLoadError) as exc:
        return ConsistencyInputError(str(exc))
    except Exception as exc:  # noqa: BLE001 - one bad item must not lose the batch; the message goes into its report
        logger.warning("consistency check of one item failed: %s: %s", type(exc).__name__, exc)
        return ConsistencyInputError(f"{type(exc).__name__}: {exc}")


def _batch_or_each(errors: str, run_batch: Callable[[list[int]], list], indices: list[int]) -> list:
    """run_batch(indices) for the whole batch; if it fails with errors="report", once per item to isolate it."""
    if not indices:
        return []
    if errors == "raise":
        return run_batch(indices)
    try:
        return run_batch(indices)
    except Exception:  # noqa: BLE001 - retried item by item to find the bad one
        return [_guard(errors, lambda i: run_batch([i])[0], i) for i in indices]
