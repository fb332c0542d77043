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

Appearance metrics, measured on the original product's pixels (m_orig without a thin band inside its outline,
`ignore_band`, so feathered edges do not count), the same pixels compared in both images:
- `delta_e`: mean CIE76 colour difference (Euclidean distance in CIELAB, L in 0..100) between the original
  and the generated product at a coarse scale: the generated image blurred with sigma 2 px, the original
  with sigma 2 or 3 px (per pixel the smaller difference, so a slightly blurred generation, noise or JPEG
  are not "drift"), after compensating a *mild* global colour grading: a per-channel gain/offset fitted on
  the product, clamped to 1 +- `grading_gain` and +- `grading_offset`, so a real recolour is not absorbed.
- `ssim`: mean structural similarity (Gaussian window, sigma 1.5, greyscale) over the product pixels, after
  the same compensation, per pixel the better of the original as is or blurred (sigma 1 px); a changed label
  or texture lowers it.
- `changed_area`: fraction of the product pixels whose local colour difference exceeds `changed_delta_e`
  (catches a recoloured part or a replaced label that is too small to move the mean).
- `edge_changed`: fraction of the product's edge zone (inside the outline, from the ignored band to 3 times its
  width) whose colour difference exceeds `edge_delta_e` (lower than `changed_delta_e`): an outline that
  melted into the background blends background into this zone.
- `halo`: how much more of the product's colour the thin ring just outside the outline gained in the
  generated image than in the original, in the ring's inner half over its outer half (a glow fades with
  distance; an object behind the product does not), clipped at 0. Per ring pixel x, alpha is its share of
  the product colour p (the nearest product pixel well inside the outline) in a mix with the background
  colour b (the nearest pixel past the ring), in each image with its own p and b:
  alpha = (x - b).(p - b) / |p - b|^2. Pixels where p and b are too alike (HALO_MIN_CONTRAST), that are a
  shadow of b, or whose colour is far off the line from b to p (another object, HALO_OFF_LINE) are left
  out, and a ring with too few pixels left (HALO_MIN_DEFINED) scores 0. The original's alpha (the largest
  over HALO_ORIGINAL_BLURS) carries the anti-aliasing and any mask error of the outline, which the
  generated image shares, so only a glow or a smear of the product into the new background remains.
- `aspect_mismatch`: |log(aspect ratio of the generated image / aspect ratio of the original)|, set by the
  checker before alignment (0 when the sizes agree).
- `mapped_delta_e`: the mean CIE76 difference left on the product pixels (at the coarse scale of `delta_e`)
  after the best free affine colour map (RGB -> RGB, least squares) from the original to the generation, or
  back, whichever leaves more. No threshold of its own: a recolour maps colours one to one and leaves
  little; a changed label, print or pattern merges or splits colours and leaves the change, so it tells the
  verdict which of the two a failed pair primarily is.
- `moved_by`: how far (/ the product's box diagonal) the original product has to be shifted to match the
  generated image best, searched within SHIFT_REACH of its size at SHIFT_WORK_SIZE, when it matches there
  clearly better than where it was (SHIFT_RESIDUAL); else 0. No threshold of its own: a failed pair whose
  product is found intact elsewhere (beyond `max_centroid_shift`) is "moved", even where the masks only
  saw the part it left (a truncation) or the part it entered (an expansion).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
from PIL import Image

from hfpc_reward.consistency.colour import colour_at_nearest, fast_lab, lab_norm, nearest_labels, shadow_like
from hfpc_reward.consistency.config import MetricsConfig
from hfpc_reward.consistency.geometry import mask_box

MIN_IGNORE_PX = 3  # the ignored band is at least this wide: anti-aliasing, JPEG and blur at low resolution
IGNORE_IMAGE_FRACTION = 0.01  # ... and at least this share of the image side
EDGE_ZONE = 3  # the edge zone reaches this many ignored-band widths into the product
GAIN_RIDGE = (
    100.0  # (0-255 levels)^2: below this channel variance the grading fit prefers an offset to a gain
)
GRADING_SAMPLE = 4096  # product pixels (evenly strided) the colour grading is fitted on
SHIFT_WORK_SIZE = 64  # longest side (px) at which `moved_by` searches for the product
SHIFT_REACH = 0.35  # x the product's box side: how far `moved_by` searches in every direction
SHIFT_RESIDUAL = 0.5  # a shift counts when its RMS difference is at most this share of the one in place
MAP_SAMPLE = 1024  # product pixels (evenly strided) the affine colour maps of `mapped_delta_e` are fitted on
GRADING_INLIER_LEVELS = 24.0  # summed |RGB| residual (0-255 levels) a pixel may keep in the grading's refit
SSIM_BLUR = (0.0, 1.0)  # px: SSIM against the original as is and slightly blurred (the better one counts)
DRIFT_BLUR = (2.0, 3.0)  # px at the analysis size: colour is compared at this scale (structure: SSIM)
HALO_RING = 0.04  # x box diagonal: the ring of `halo` reaches this far outside the outline (at least 2 px)
HALO_MIN_CONTRAST = 12.0  # Lab distance between product and background colour below which alpha is undefined
HALO_BLUR = 0.7  # px at the analysis size: both images are blurred this much before the halo (noise, JPEG)
HALO_ORIGINAL_BLURS = (0.0, 1.0, 1.6)  # px: the original's alpha is the largest at these extra blurs, so a
# slightly blurred or resampled generation (its edge spread a pixel or two) is no halo
HALO_OFF_LINE = 0.3  # x |p - b|: a ring colour farther than this from the line p-b is no mix of the two
HALO_MIN_DEFINED = 0.25  # share of the ring with alpha defined in both images below which halo is 0
HALO_SHOWN = 0.3  # a ring pixel whose product share rose by more than this is drawn as bled in overlays
HALO_SHADOW_CHROMA = 12.0  # a ring pixel darker than its background colour within this chroma is a shadow
MAX_PALETTE = 256  # an image with at most this many distinct colours is quantised (palette PNG, GIF, ...)
WINDOW_MARGIN = 16  # px past the halo ring's reference that the appearance metrics cut the images to: the
# widest blur of the generated image (DRIFT_BLUR's 3 px: a 12 px kernel radius) and then some
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


@dataclass
class OriginalAppearance:
    """The original's side of the appearance metrics, at the analysis size: computed once per original.

    Everything but `rgb`, `mask` and `shift` covers only `window`, the part of the image the metrics read."""

    rgb: np.ndarray  # (H,W,3) uint8 original
    mask: np.ndarray  # (H,W) bool product mask
    window: tuple[slice, slice]  # the product's box grown by every ring and blur the metrics use
    region: np.ndarray  # (h,w) bool product pixels compared (the mask without the ignored band)
    edge_zone: np.ndarray  # (h,w) bool the region's part within EDGE_ZONE bands of the outline
    blurred: list[np.ndarray]  # (h,w,3) float32 original blurred at each DRIFT_BLUR sigma
    greys: list[
        tuple[np.ndarray, np.ndarray, np.ndarray]
    ]  # per SSIM_BLUR: greyscale original, local mean, variance
    halo_ring: HaloRing  # the ring outside the outline where `halo` is measured, with the original's alpha
    shift: ShiftTemplate | None  # the product `moved_by` searches for in the generated image


@dataclass
class HaloRing:
    """Where the `halo` metric looks (at the analysis size; in `OriginalAppearance`, its window) and the original's
    side of it."""

    ring: np.ndarray  # (H,W) bool pixels just outside the outline (up to HALO_RING x the box diagonal)
    width: float  # px: how far the ring reaches outside the outline
    near: (
        np.ndarray
    )  # (N,) bool ring pixels in the ring's inner half (a glow fades: more product colour there)
    inner: tuple[np.ndarray, np.ndarray]  # nearest_labels of the product zone giving p, and that zone
    outer: tuple[np.ndarray, np.ndarray]  # nearest_labels of the zone past the ring giving b, and that zone
    alpha: np.ndarray  # (N,) float32 the original's alpha at the ring pixels (NaN where undefined)


def halo_ring(
    original: np.ndarray, m_orig: np.ndarray, depth: np.ndarray, region: np.ndarray, band: int
) -> HaloRing:
    """The ring, its reference zones and the original's alpha there (see `halo` in the module docstring);
    `depth` is each product pixel's distance to the outline."""
    dist_out = outside_distance(m_orig)
    width = max(2.0, HALO_RING * box_diagonal(m_orig))
    inner = region & (depth <= 2 * band + 1)
    inner = inner if inner.any() else m_orig
    outer = (dist_out > width + band) & (dist_out <= width + 2 * band + 1)
    # only ring pixels facing open background: in a handle's hole or a narrow gap the nearest background
    # reference is far away and says nothing about the colour there
    to_outer = outside_distance(outer)
    ring = (dist_out > 0) & (dist_out <= width) & (to_outer <= width + band + 1)
    halo = HaloRing(
        ring=ring,
        width=width,
        near=dist_out[ring] <= width / 2,
        inner=(nearest_labels(inner), inner),
        outer=(nearest_labels(outer), outer),
        alpha=np.empty(0, np.float32),
    )
    # a blur spreads the product outward: the original's alpha is its most blurred-looking one
    stacked = np.stack(
        [
            _ring_alpha(halo, cv2.GaussianBlur(original, (0, 0), sigma) if sigma else original)
            for sigma in HALO_ORIGINAL_BLURS
        ]
    )
    most = np.where(np.isnan(stacked), -np.inf, stacked).max(0)
    halo.alpha = np.where(np.isfinite(most), most, np.nan).astype(np.float32)
    return halo


def _ring_alpha(halo: HaloRing, rgb: np.ndarray) -> np.ndarray:
    """Per ring pixel, its share of the product colour in a mix with the background colour (NaN: undefined)."""
    lab = fast_lab(cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), HALO_BLUR))
    if not halo.outer[1].any():
        return np.full(int(halo.ring.sum()), np.nan, np.float32)
    x = lab[halo.ring]
    p = colour_at_nearest(lab, *halo.inner, at=halo.ring)
    b = colour_at_nearest(lab, *halo.outer, at=halo.ring)
    direction = p - b
    squared = np.einsum("nc,nc->n", direction, direction)
    # clipped symmetrically around both ends (0 = background, 1 = product) so noise averages out
    share = np.einsum("nc,nc->n", x - b, direction) / np.maximum(squared, 1e-6)
    # a mix of the two lies near the line between them; a colour off it (another object) says nothing
    off_line = lab_norm(x - b - share[:, None] * direction)
    mixed = off_line <= HALO_OFF_LINE * np.sqrt(squared)
    alpha = np.clip(share, -1.0, 2.0)
    shadow = shadow_like(x[None], b[None], HALO_SHADOW_CHROMA)[0]
    return np.where((squared >= HALO_MIN_CONTRAST**2) & ~shadow & mixed, alpha, np.nan).astype(np.float32)


def halo(original: OriginalAppearance, generated: np.ndarray) -> tuple[float, np.ndarray]:
    """The `halo` metric (module docstring) of `generated` (uint8 RGB, the original's window at the analysis
    size), and the window's bool map of the ring pixels whose product share rose by more than HALO_SHOWN."""
    ring = original.halo_ring
    difference = _ring_alpha(ring, generated) - ring.alpha
    defined = ~np.isnan(difference)
    glow = np.zeros(ring.ring.shape, bool)
    glow[ring.ring] = defined & (np.nan_to_num(difference) > HALO_SHOWN)
    if defined.mean() < HALO_MIN_DEFINED:  # mostly product-coloured surroundings: no verdict either way
        return 0.0, glow
    near, far = difference[defined & ring.near], difference[defined & ~ring.near]
    return (float(max(0.0, near.mean() - far.mean())) if len(near) and len(far) else 0.0), glow


def original_appearance(
    original: np.ndarray, m_orig: np.ndarray, config: MetricsConfig
) -> OriginalAppearance:
    """Everything the appearance metrics need from the original (uint8 RGB) and its product mask."""
    # the band covers feathered edges (a share of the product's size) and masks a pixel or two off (a share
    # of the image side)
    band = max(
        MIN_IGNORE_PX,
        round(max(config.ignore_band * box_diagonal(m_orig), IGNORE_IMAGE_FRACTION * max(m_orig.shape))),
    )
    region = cv2.erode(m_orig.astype(np.uint8), disk(band)) > 0
    if region.sum() < 16:  # a thin product: keep its pixels rather than nothing
        region = m_orig
    depth = cv2.distanceTransform(m_orig.astype(np.uint8), cv2.DIST_L2, 3)
    original_float = original.astype(np.float32)
    ring = halo_ring(original, m_orig, depth, region, band)
    # computed on the whole image, then cut to the window: the original's side is exact to the last bit
    window = _window(m_orig, ring.width + 2 * band + 2)
    greys = []
    for sigma in SSIM_BLUR:
        grey = _grey(cv2.GaussianBlur(original_float, (0, 0), sigma) if sigma else original_float)
        grey_mean = _ssim_blur(grey)
        variance = _ssim_blur(grey * grey) - grey_mean * grey_mean
        greys.append((grey[window], grey_mean[window], variance[window]))
    return OriginalAppearance(
        rgb=original,
        mask=m_orig,
        window=window,
        region=region[window],
        edge_zone=(region & (depth <= EDGE_ZONE * band))[window],
        blurred=[cv2.GaussianBlur(original_float, (0, 0), sigma)[window] for sigma in DRIFT_BLUR],
        greys=greys,
        halo_ring=replace(
            ring,
            ring=ring.ring[window],
            inner=(ring.inner[0][window], ring.inner[1][window]),
            outer=(ring.outer[0][window], ring.outer[1][window]),
        ),
        shift=shift_template(original, m_orig),
    )


def _window(mask: np.ndarray, reach: float) -> tuple[slice, slice]:
    """The box of `mask` grown by `reach` px (the halo ring and its background reference) plus WINDOW_MARGIN
    (the widest blur applied to the generated image), within the image: no metric reads a pixel outside it,
    nor a blur of one, so cutting the generated image to it changes no value."""
    x0, y0, x1, y1 = (int(edge) for edge in mask_box(mask))
    grow = int(np.ceil(reach)) + WINDOW_MARGIN
    height, width = mask.shape
    return slice(max(0, y0 - grow), min(height, y1 + grow)), slice(max(0, x0 - grow), min(width, x1 + grow))


def appearance_metrics(
    original: OriginalAppearance, generated: np.ndarray, config: MetricsConfig
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Colour and structure drift of the product pixels (`generated`: uint8 RGB at the original's size), and
    the halo just outside them.

    Returns the metrics, the drift map ((H,W) float32 CIE76 difference after compensation, 0 off-product)
    and the glow map ((H,W) bool ring pixels that took on product colour, see `halo`).
    """
    full_generated, window = generated, original.window
    generated, rgb, region = generated[window], original.rgb[window], original.region
    inside = original.mask[window][..., None]
    # off the product, use the original's pixels: windows near the outline then see only product changes
    composite = np.where(inside, generated, rgb).astype(np.float32)
    coarse = cv2.GaussianBlur(composite, (0, 0), DRIFT_BLUR[1])
    g, o = fit_grading(original.blurred[1], coarse, region, config.grading_gain, config.grading_offset)
    corrected = np.where(inside, undo_grading(composite, g, o), rgb.astype(np.float32))
    # colour: the original as the fitted grading renders it (clipping included) against the generation, the
    # original at two blur levels so that a slightly blurred generation is not "drift"
    graded = np.clip(rgb.astype(np.float32) * g + o, 0, 255)
    generated_lab = rgb_to_lab(cv2.GaussianBlur(np.where(inside, generated, graded), (0, 0), DRIFT_BLUR[0]))
    drift = np.minimum(
        *(
            lab_norm(rgb_to_lab(np.clip(blurred * g + o, 0, 255)) - generated_lab)
            for blurred in original.blurred
        )
    )
    drift = np.where(region, drift, 0.0).astype(np.float32)
    ssim_map = _ssim_map(original, _grey(corrected))
    zone = original.edge_zone
    metrics = {
        "delta_e": float(drift[region].mean()),
        "ssim": float(np.clip(ssim_map[region].mean(), -1.0, 1.0)),
        "changed_area": float((drift[region] > config.changed_delta_e).mean()),
        "edge_changed": float((drift[zone] > config.edge_delta_e).mean()) if zone.any() else 0.0,
    }
    metrics["halo"], glow = halo(original, generated)
    metrics["mapped_delta_e"] = mapped_delta_e(original.blurred[1], coarse, region)
    metrics["moved_by"] = moved_by(original.shift, full_generated)
    return metrics, _uncut(drift, original), _uncut(glow, original)


def _uncut(values: np.ndarray, original: OriginalAppearance) -> np.ndarray:
    """A map of the window placed in a zero map of the whole image."""
    whole = np.zeros(original.mask.shape, values.dtype)
    whole[original.window] = values
    return whole


@dataclass
class ShiftTemplate:
    """The original product `moved_by` searches for, at SHIFT_WORK_SIZE: computed once per original."""

    size: tuple[int, int]  # (width, height) of the search image
    box: tuple[int, int, int, int]  # y0, y1, x0, x1 of the product in it
    reach: int  # px searched in every direction
    template: np.ndarray  # (h,w,3) float32 product box of the original
    weights: np.ndarray  # (h,w,3) float32 1 on the product's pixels, 0 on the backdrop


def shift_template(original: np.ndarray, mask: np.ndarray) -> ShiftTemplate | None:
    """The `moved_by` template of an original (uint8 RGB) and its mask; None for a product too small."""
    size = fitted_size(*mask.shape, SHIFT_WORK_SIZE)
    small = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5
    if small.sum() < 16:
        return None
    x0, y0, x1, y1 = (int(edge) for edge in mask_box(small))
    template = cv2.resize(original, size, interpolation=cv2.INTER_AREA)[y0:y1, x0:x1].astype(np.float32)
    weights = np.repeat(small[y0:y1, x0:x1, None], 3, axis=2).astype(np.float32)
    reach = max(2, round(SHIFT_REACH * max(y1 - y0, x1 - x0)))
    return ShiftTemplate(size, (y0, y1, x0, x1), reach, template, weights)


def moved_by(product: ShiftTemplate | None, generated: np.ndarray) -> float:
    """The shift (/ box diagonal) at which the original's product pixels match `generated` (uint8 RGB) best
    (mean squared RGB difference), when that match leaves at most SHIFT_RESIDUAL of the RMS difference in
    place; else 0 (see the module docstring)."""
    if product is None:
        return 0.0
    (y0, y1, x0, x1), reach = product.box, product.reach
    padded = cv2.copyMakeBorder(
        cv2.resize(generated, product.size, interpolation=cv2.INTER_AREA).astype(np.float32),
        reach,
        reach,
        reach,
        reach,
        cv2.BORDER_REPLICATE,
    )
    squared = cv2.matchTemplate(
        padded[y0 : y1 + 2 * reach, x0 : x1 + 2 * reach],
        product.template,
        cv2.TM_SQDIFF,
        mask=product.weights,
    )
    dy, dx = np.unravel_index(int(np.argmin(squared)), squared.shape)
    if squared[dy, dx] > SHIFT_RESIDUAL**2 * squared[reach, reach]:
        return 0.0
    return float(np.hypot(dy - reach, dx - reach) / np.hypot(y1 - y0, x1 - x0))


def mapped_delta_e(original: np.ndarray, generated: np.ndarray, region: np.ndarray) -> float:
    """How far the change on `region` is from a recolour: the mean CIE76 difference left after the affine
    colour map (3x3 + offset, least squares on a sample) that best turns `original` into `generated`, or the
    one back, whichever leaves more (float RGB, same scale). A recolour maps colours one to one both ways;
    text that vanished merges two colours (no map back), new print splits one (no map forth)."""
    pixels = strided_pixels(region, MAP_SAMPLE)
    if len(pixels) < 8:
        return 0.0
    src = original.reshape(-1, 3)[pixels].astype(np.float64)
    dst = generated.reshape(-1, 3)[pixels].astype(np.float64)
    return max(_affine_residual(src, dst), _affine_residual(dst, src))


def _affine_residual(src: np.ndarray, dst: np.ndarray) -> float:
    """Mean Lab distance between (N,3) RGB `dst` and the best affine map of `src`."""
    design = np.hstack([src, np.ones((len(src), 1))])
    coefficients, *_ = np.linalg.lstsq(design, dst, rcond=None)
    return float(lab_norm(rgb_to_lab((design @ coefficients)[None]) - rgb_to_lab(dst[None])).mean())


def _ssim_blur(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), 1.5)


def _ssim_map(original: OriginalAppearance, y: np.ndarray) -> np.ndarray:
    """Per pixel the best SSIM against the original at each SSIM_BLUR level."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_y = _ssim_blur(y)
    var_y = _ssim_blur(y * y) - mu_y * mu_y
    maps = []
    for x, mu_x, var_x in original.greys:
        cov = _ssim_blur(x * y) - mu_x * mu_y
        maps.append(
            ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
        )
    return np.maximum(*maps)


def _grey(rgb: np.ndarray) -> np.ndarray:
    return np.clip(rgb @ np.array([0.299, 0.587, 0.114], np.float32), 0, 255)


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
