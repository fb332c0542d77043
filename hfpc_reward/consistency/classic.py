"""The classic consistency backend: weight-free, OpenCV + numpy, runs anywhere in a few milliseconds.

Original side (once per distinct original): the product mask is the given mask (the checker passes the
alpha channel of a transparent original as the given mask), else it is extracted from a studio background
(`studio_mask`: distance from the border colour, morphology, hole filling). The original is then reduced to
`classic.segment_size` and a colour model of the product (a smoothed Lab histogram) is kept.

Generated side (mask-guided segmentation), at the same reduced size:
- inside the original product, a pixel is *kept* when it still matches the original (Lab distance below
  `same_delta_e` after compensating mild global colour grading); a pixel that no longer matches and looks
  like the new background (log-likelihood ratio product/background below -`product_margin`) is *lost*;
- outside it, up to `search_fraction` x the product's size, a pixel that looks like the product
  (ratio above `product_margin`), is not a shadow (a darker, same-hue version of the nearby background),
  did not stay as it was in the original and is connected to the product is *added* (object expansion);
- a band of `band_fraction` x the product's size around the outline keeps the original's label, so
  feathered or anti-aliased edges do not count.
The background colour model averages two histograms of the generated image: every pixel outside the product
(re-fitted once without the added pixels) and the pixels beyond the search zone, which an expansion cannot
reach (so a large expansion does not become "background" itself). The generated mask is the original mask
minus lost plus added, at the original's size.

Known limit: expansion is found when it is made of product-like colours (the product grew). An object of
another colour attached to the product (a stand, a handle in a new colour) cannot be told from a background
object next to the product by colour alone; it is missed unless it also covers the product (appearance metrics).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from hfpc_reward.consistency.backends import OriginalProduct
from hfpc_reward.consistency.config import ClassicConfig, ConsistencyConfig
from hfpc_reward.consistency.metrics import box_diagonal, disk, fit_grading, rgb_to_lab, undo_grading

STUDIO_WORK_SIZE = 512  # longest side at which studio-background extraction runs
_EPS = 1e-4  # floor of histogram probabilities (unseen colours)


class ClassicMaskFinder:
    """`MaskFinder` of the "classic" backend (see the module docstring)."""

    def __init__(self, config: ConsistencyConfig):
        self.config = config.classic
        self.metrics_config = config.metrics

    def original_products(
        self,
        originals: Sequence[Image.Image],
        masks: Sequence[np.ndarray | None],
        prompts: Sequence[str | None],
    ) -> list[OriginalProduct]:
        products = []
        for image, mask, prompt in zip(originals, masks, prompts):
            rgb = np.asarray(image.convert("RGB"))
            notes: list[str] = []
            source = "given"
            if mask is None:
                mask, notes = studio_mask(rgb, self.config)
                source = "studio"
            products.append(
                OriginalProduct(
                    image=image,
                    mask=mask,
                    source=source,
                    prompt=prompt or "",
                    notes=notes,
                    cache=self._prepare(rgb, mask),
                )
            )
        return products

    def generated_masks(
        self, generated: Sequence[Image.Image], products: Sequence[OriginalProduct]
    ) -> list[tuple[np.ndarray, list[str]]]:
        return [
            self._generated_mask(np.asarray(image.convert("RGB")), product)
            for image, product in zip(generated, products)
        ]

    def _prepare(self, rgb: np.ndarray, mask: np.ndarray) -> dict:
        height, width = mask.shape
        scale = min(1.0, self.config.segment_size / max(height, width))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        m_small = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5
        if not m_small.any():  # a product smaller than one reduced pixel: keep its brightest-overlap pixel
            m_small[np.unravel_index(np.argmax(cv2.resize(mask.astype(np.float32), size)), m_small.shape)] = (
                True
            )
        product_size = box_diagonal(m_small)
        band = max(1, round(self.config.band_fraction * product_size))
        dist_in = cv2.distanceTransform(m_small.astype(np.uint8), cv2.DIST_L2, 3)
        core = dist_in > band
        if core.sum() < 16:
            core = m_small
        lab8 = cv2.cvtColor(small, cv2.COLOR_RGB2LAB)
        return {
            "size": size,
            "small": small,
            "lab_blur": rgb_to_lab(cv2.GaussianBlur(small.astype(np.float32), (0, 0), 1.0)),
            "mask": m_small,
            "core": core,
            "dist_out": cv2.distanceTransform((~m_small).astype(np.uint8), cv2.DIST_L2, 3),
            "band": band,
            "search": max(band + 2, round(self.config.search_fraction * product_size)),
            "product_hist": self._histogram(lab8, core),
        }

    def _generated_mask(
        self, generated: np.ndarray, product: OriginalProduct
    ) -> tuple[np.ndarray, list[str]]:
        cache, cfg = product.cache, self.config
        small = cv2.resize(generated, cache["size"], interpolation=cv2.INTER_AREA)
        m_small, core, dist_out, band = cache["mask"], cache["core"], cache["dist_out"], cache["band"]
        g, o = fit_grading(
            cache["small"], small, core, self.metrics_config.grading_gain, self.metrics_config.grading_offset
        )
        lab_blur = rgb_to_lab(cv2.GaussianBlur(undo_grading(small, g, o), (0, 0), 1.0))
        same = np.linalg.norm(lab_blur - cache["lab_blur"], axis=2) < cfg.same_delta_e
        outside = ~m_small & (dist_out > band)
        ring = outside & (dist_out <= cache["search"])
        lab8 = cv2.cvtColor(small, cv2.COLOR_RGB2LAB)
        bins = self._bin_index(lab8)
        far = outside & ~ring
        local_background = self._local_mean(lab_blur, far if far.sum() > 32 else outside)
        shadow = self._shadow_like(lab_blur, local_background)
        seed = cv2.dilate(m_small.astype(np.uint8), disk(band + 1)) > 0
        far_background = (
            far if far.sum() > 64 else outside
        )  # the new background away from where expansion can be

        added = np.zeros_like(m_small)
        for _ in range(2):  # fit the background model, then re-fit it without the pixels found to be product
            background_hist = 0.5 * (
                self._histogram(lab8, far_background) + self._histogram(lab8, outside & ~added)
            )
            ratio = self._log_ratio(bins, cache["product_hist"], background_hist)
            candidates = ring & (ratio > cfg.product_margin) & ~shadow & ~same
            candidates = (
                cv2.morphologyEx(candidates.astype(np.uint8), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8)) > 0
            )
            added = _connected_to(candidates, seed)
        removed = core & ~same & (ratio < -cfg.product_margin)
        removed = cv2.morphologyEx(removed.astype(np.uint8), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8)) > 0

        full_size = (product.mask.shape[1], product.mask.shape[0])
        removed_full = cv2.resize(removed.astype(np.uint8), full_size, interpolation=cv2.INTER_NEAREST) > 0
        added_full = cv2.resize(added.astype(np.uint8), full_size, interpolation=cv2.INTER_NEAREST) > 0
        return (product.mask & ~removed_full) | added_full, []

    def _bin_index(self, lab8: np.ndarray) -> np.ndarray:
        bins = self.config.histogram_bins
        q = (lab8.astype(np.int32) * bins) >> 8
        return (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]

    def _histogram(self, lab8: np.ndarray, region: np.ndarray) -> np.ndarray:
        bins = self.config.histogram_bins
        counts = np.bincount(self._bin_index(lab8)[region], minlength=bins**3).astype(np.float32)
        smooth = gaussian_filter(counts.reshape(bins, bins, bins), sigma=0.7, mode="constant").ravel()
        return smooth / max(float(smooth.sum()), 1.0)

    def _log_ratio(
        self, bins: np.ndarray, product_hist: np.ndarray, background_hist: np.ndarray
    ) -> np.ndarray:
        ratio = np.log(product_hist[bins] + _EPS) - np.log(background_hist[bins] + _EPS)
        return cv2.GaussianBlur(ratio.astype(np.float32), (0, 0), 0.8)

    def _local_mean(self, lab: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """Mean Lab colour of the `reference` pixels near each pixel (normalised Gaussian convolution)."""
        weight = reference.astype(np.float32)
        side = 2 * max(2, round(0.15 * max(lab.shape[:2]))) + 1  # a box filter costs the same at any size
        norm = cv2.blur(weight, (side, side)) + 1e-6
        return cv2.blur(lab * weight[..., None], (side, side)) / norm[..., None]

    def _shadow_like(self, lab: np.ndarray, local: np.ndarray) -> np.ndarray:
        """Pixels that are a darker version of the nearby background: same hue, lower lightness."""
        ratio = lab[..., 0] / np.maximum(local[..., 0], 1.0)
        chroma_gap = np.hypot(lab[..., 1] - ratio * local[..., 1], lab[..., 2] - ratio * local[..., 2])
        return (ratio < 0.97) & (ratio > 0.2) & (chroma_gap < self.config.shadow_max_chroma)


def studio_mask(rgb: np.ndarray, config: ClassicConfig) -> tuple[np.ndarray, list[str]]:
    """Product mask of a photo on a plain studio backdrop: pixels far from the border colour, cleaned.

    Returns the (H,W) bool mask and notes (e.g. when the border is not a plain backdrop).
    """
    height, width = rgb.shape[:2]
    scale = min(1.0, STUDIO_WORK_SIZE / max(height, width))
    work = cv2.resize(
        rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
    )
    lab = rgb_to_lab(cv2.GaussianBlur(work.astype(np.float32), (0, 0), 1.0))
    border = np.concatenate(
        [
            lab[:2].reshape(-1, 3),
            lab[-2:].reshape(-1, 3),
            lab[:, :2].reshape(-1, 3),
            lab[:, -2:].reshape(-1, 3),
        ]
    )
    backdrop = np.median(border, axis=0)
    notes = []
    if np.percentile(np.linalg.norm(border - backdrop, axis=1), 90) > config.studio_delta_e:
        notes.append(
            "original has no plain studio background; its extracted product mask may be wrong (pass a mask)"
        )
    foreground = (np.linalg.norm(lab - backdrop, axis=2) > config.studio_delta_e).astype(np.uint8)
    radius = max(1, round(0.01 * max(work.shape[:2])))
    foreground = cv2.morphologyEx(foreground, cv2.MORPH_CLOSE, disk(radius))
    foreground = cv2.morphologyEx(foreground, cv2.MORPH_OPEN, disk(1))
    foreground = _fill_holes(foreground > 0)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground.astype(np.uint8), connectivity=8)
    if count > 1:
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = np.flatnonzero(areas >= 0.05 * areas.max()) + 1
        foreground = np.isin(labels, keep)
    else:
        notes.append("studio-background extraction found no product in the original")
    mask = cv2.resize(foreground.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
    return mask, notes


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    _, labels = cv2.connectedComponents((~mask).astype(np.uint8), connectivity=4)
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return mask | ~np.isin(labels, edge_labels)


def _connected_to(candidates: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The candidate pixels that belong to a connected region touching `seed`."""
    if not candidates.any():
        return candidates
    _, labels = cv2.connectedComponents((candidates | seed).astype(np.uint8), connectivity=8)
    touching = np.unique(labels[seed])
    return candidates & np.isin(labels, touching[touching > 0])
