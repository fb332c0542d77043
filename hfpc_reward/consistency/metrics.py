"""Metrics comparing the product of an original image with the product found in a generated image.

All metrics are floats; masks are compared at `MetricsConfig.analysis_size` (longest side), after the
generated image was aligned to the original's size (see checker.py for the size policy).

Mask metrics (m_orig: product mask of the original, m_gen: product mask found in the generated image):
- `iou`: area(m_gen AND m_orig) / area(m_gen OR m_orig); 1 = identical masks.
- `expansion`: object expansion E = (area(m_gen OR m_orig) - area(m_orig)) / area(m_orig); 0 = nothing added.
- `lost_area`: fraction of m_orig that is not in m_gen (truncation); 0 = nothing lost.
- `area_ratio`: area(m_gen) / area(m_orig); 1 = same size (informational: expansion and loss carry the verdict).
- `centroid_shift`: distance between the two mask centroids / diagonal of m_orig's bounding box
  (1.0 when m_gen is empty).
- `boundary_f`: F-score of the two outlines, a boundary pixel matching when the other outline is within
  `boundary_tolerance` x the box diagonal (at least one pixel).
- `bleed`: share of the ring just outside the original outline (from 0.5 to 2 x `ignore_band` x the box
  diagonal away) that the generated product covers: an outline smeared outward into the
  background (a localised blob shows as `expansion` instead; both grow the product).
- `reach`: how far a solid part of m_gen (wider than 2 x `ignore_band` x the box diagonal) reaches beyond
  m_orig's outline, / box diagonal: a limb or blob grown out of the product reaches far while covering
  little area, which `expansion` (an area) misses; a thin fringe does not count (that is `bleed` / `halo`).

The appearance metrics (delta_e, ssim, changed_area, edge_changed, halo, mapped_delta_e, moved_by) are in
`appearance.py`. `aspect_mismatch`: |log(aspect ratio of the generated image / aspect ratio of the original)|,
set by the checker before alignment (0 when the sizes agree).
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from hfpc_reward.consistency.config import MetricsConfig

GAIN_RIDGE = (
    100.0  # (0-255 levels)^2: below this channel variance the grading fit prefers an offset to a gain
)
GRADING_SAMPLE = 4096  # product pixels (evenly strided) the colour grading is fitted on
GRADING_INLIER_LEVELS = 24.0  # summed |RGB| residual (0-255 levels) a pixel may keep in the grading's refit
MAX_PALETTE = 256  # an image with at most this many distinct colours is quantised (palette PNG, GIF, ...)
PALETTE_SAMPLE = 4096  # pixels (evenly strided) looked at first to rule quantisation out cheaply
METRIC_NAMES = (
    "iou",
    "expansion",
    "lost_area",
    "area_ratio",
    "centroid_shift",
    "boundary_f",
    "delta_e",
    "ssim",
    "changed_area",
    "edge_changed",
    "bleed",
    "reach",
    "halo",
    "aspect_mismatch",
    "mapped_delta_e",
    "moved_by",
)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(H,W,3) RGB, uint8 or float 0..255, as float32 CIELAB (L 0..100, a and b about -128..127)."""
    return cv2.cvtColor(np.clip(rgb, 0, 255).astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def fit_grading(original: np.ndarray, generated: np.ndarray, region: np.ndarray, gain: float, offset: float):
    """Per-channel gain g and offset o with generated ~= g * original + o on `region`, clamped to mild grading:
    least squares with a ridge (GAIN_RIDGE) that keeps the gain near 1 where the product has little contrast.
    Fitted twice: the second time on the pixels the first fit explains best (at least half of them), so a
    part of the product that changed or moved away does not drag the grading of the rest.

    Returns (g, o), each shape (3,), float32. Undo with (generated - o) / g. Clipped pixels (near 0 or 255
    in `generated`) are left out of the fit when enough others remain.
    """
    pixels = strided_pixels(region, GRADING_SAMPLE)  # a 2-parameter fit per channel: a sample will do
    src = original.reshape(-1, 3)[pixels].astype(np.float32)  # (N,3)
    dst = generated.reshape(-1, 3)[pixels].astype(np.float32)
    g, o = _fit_channels(src, dst, gain, offset)
    if len(src) >= 32:
        residual = np.abs(src * g + o - dst).sum(axis=1)
        inliers = residual <= max(GRADING_INLIER_LEVELS, float(np.median(residual)))
        g, o = _fit_channels(src[inliers], dst[inliers], gain, offset)
    return g, o


def strided_pixels(region: np.ndarray, count: int) -> np.ndarray:
    """Flat indices of about `count` of the `region` pixels, evenly strided in raster order (all when fewer)."""
    pixels = np.flatnonzero(region)
    return pixels[:: max(1, len(pixels) // count)]


def fitted_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """(width, height) of an image scaled down (never up) so that its longest side is at most `longest`."""
    scale = min(1.0, longest / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))


def reduced_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`mask` (bool) at `size` (width, height): the pixels more than half covered. A product thinner than
    that at the reduced size (a needle, a strap) keeps the pixels at least half as covered as the most
    covered one instead of vanishing; an empty mask stays empty."""
    if (mask.shape[1], mask.shape[0]) == size:
        return mask.astype(bool)
    coverage = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    reduced = coverage > 0.5
    if not reduced.any() and coverage.max() > 0:
        reduced = coverage >= coverage.max() / 2
    return reduced


def _fit_channels(src: np.ndarray, dst: np.ndarray, gain: float, offset: float):
    """The per-channel ridge least-squares fit of fit_grading on (N,3) pixels, all channels at once."""
    if len(src) < 2:
        return np.ones(3, np.float32), np.zeros(3, np.float32)
    weight = ((dst > 3) & (dst < 252)).astype(np.float32)  # a clipped pixel says nothing about the gain
    weight[:, weight.sum(axis=0) < 16] = 1.0  # ... unless too few others remain
    count = weight.sum(axis=0)
    src_mean, dst_mean = (weight * src).sum(axis=0) / count, (weight * dst).sum(axis=0) / count
    centred = src - src_mean
    covariance = (weight * centred * (dst - dst_mean)).sum(axis=0) / count
    variance = (weight * centred * centred).sum(axis=0) / count
    # least squares with a ridge pulling the gain to 1: a one-colour product (tiny variance) gets an offset
    g = np.clip((covariance + GAIN_RIDGE) / (variance + GAIN_RIDGE), 1.0 - gain, 1.0 + gain)
    o = np.clip(dst_mean - g * src_mean, -offset, offset)
    return g.astype(np.float32), o.astype(np.float32)


def quantisation_palette(rgb: np.ndarray) -> np.ndarray | None:
    """The (K,3) uint8 colours of a quantised image (at most MAX_PALETTE distinct), else None."""
    packed = rgb[..., 0].astype(np.uint32) << 16 | rgb[..., 1].astype(np.uint32) << 8 | rgb[..., 2]
    if len(np.unique(packed.ravel()[:: max(1, packed.size // PALETTE_SAMPLE)])) > MAX_PALETTE:
        return None
    colours = np.unique(packed)
    if len(colours) > MAX_PALETTE:
        return None
    return np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], axis=1).astype(np.uint8)


def quantise_to_palette(rgb: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """`rgb` (H,W,3 uint8) with every pixel replaced by its nearest `palette` colour (no dithering)."""
    lookup = Image.new("P", (1, 1))
    lookup.putpalette(palette.ravel().tolist() + palette[0].tolist() * (256 - len(palette)))
    mapped = Image.fromarray(rgb).quantize(palette=lookup, dither=Image.Dither.NONE)
    return np.asarray(mapped.convert("RGB"))


def isolated_share(rgb: np.ndarray, region: np.ndarray) -> float:
    """The share of `region`'s pixels (bool H,W) whose colour differs from both row neighbours: the
    pattern of a dithered image, rare where quantisation keeps flat areas flat."""
    packed = rgb[..., 0].astype(np.int32) << 16 | rgb[..., 1].astype(np.int32) << 8 | rgb[..., 2]
    middle = packed[:, 1:-1]
    isolated = (middle != packed[:, :-2]) & (middle != packed[:, 2:])
    inner = region[:, 1:-1]
    return float(isolated[inner].mean()) if inner.any() else 0.0


def undo_grading(generated: np.ndarray, g: np.ndarray, o: np.ndarray) -> np.ndarray:
    return (generated.astype(np.float32) - o) / g


def mask_metrics(
    m_orig: np.ndarray,
    m_gen: np.ndarray,
    boundary_tolerance: float,
    bleed_band: float = MetricsConfig.ignore_band,
) -> dict[str, float]:
    """The mask metrics of the module docstring for two bool masks of the same shape (m_orig non-empty)."""
    area_o = float(m_orig.sum())
    if area_o == 0:
        raise ValueError("the original product mask is empty; cannot compare masks")
    area_g = float(m_gen.sum())
    inter = float(np.logical_and(m_orig, m_gen).sum())
    union = area_o + area_g - inter
    diagonal = box_diagonal(m_orig)
    dist_out = outside_distance(m_orig)
    if area_g > 0:
        shift = float(np.linalg.norm(_centroid(m_gen) - _centroid(m_orig)) / diagonal)
    else:
        shift = 1.0
    return {
        "iou": inter / union,
        "expansion": (union - area_o) / area_o,
        "lost_area": (area_o - inter) / area_o,
        "area_ratio": area_g / area_o,
        "centroid_shift": min(shift, 1.0),
        "boundary_f": boundary_f_score(m_orig, m_gen, max(1.0, boundary_tolerance * diagonal)),
        "bleed": bleed(dist_out, m_gen, max(1.0, bleed_band * diagonal)),
        "reach": reach(m_orig, m_gen, dist_out, max(1, round(bleed_band * diagonal))) / diagonal,
    }


def reach(m_orig: np.ndarray, m_gen: np.ndarray, dist_out: np.ndarray, solid_px: int) -> float:
    """How far (px) the part of m_gen outside m_orig that survives an opening by a disk of `solid_px` (thin
    fringes do not) reaches beyond m_orig's outline (`dist_out`: outside_distance(m_orig)); 0 when nothing
    does."""
    added = (m_gen & ~m_orig).astype(np.uint8)
    if not added.any():
        return 0.0
    solid = cv2.morphologyEx(added, cv2.MORPH_OPEN, disk(solid_px)) > 0
    if not solid.any():
        return 0.0
    return float(dist_out[solid].max())


def bleed(dist_out: np.ndarray, m_gen: np.ndarray, width_px: float) -> float:
    """Share of the ring outside m_orig's outline (width_px / 2 to 2 x width_px away; `dist_out`:
    outside_distance(m_orig)) that m_gen covers."""
    ring = (dist_out > width_px / 2) & (dist_out <= 2 * width_px + 1)
    return float(m_gen[ring].mean()) if ring.any() else 0.0


def outside_distance(mask: np.ndarray) -> np.ndarray:
    """Per pixel, its distance (px) to `mask` (0 on the mask)."""
    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 3)


def boundary_f_score(m_a: np.ndarray, m_b: np.ndarray, tolerance_px: float) -> float:
    """F-score of the outlines of two bool masks: a boundary pixel matches within `tolerance_px` pixels."""
    edge_a, edge_b = _outline(m_a), _outline(m_b)
    if not edge_a.any() or not edge_b.any():
        return float(edge_a.any() == edge_b.any())
    dist_to_a = cv2.distanceTransform((~edge_a).astype(np.uint8), cv2.DIST_L2, 3)
    dist_to_b = cv2.distanceTransform((~edge_b).astype(np.uint8), cv2.DIST_L2, 3)
    precision = float((dist_to_a[edge_b] <= tolerance_px).mean())
    recall = float((dist_to_b[edge_a] <= tolerance_px).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _outline(mask: np.ndarray) -> np.ndarray:
    as_u8 = mask.astype(np.uint8)
    return (as_u8 - cv2.erode(as_u8, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)) > 0


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def box_diagonal(mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return 1.0
    return float(np.hypot(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))


def disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
