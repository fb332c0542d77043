"""Appearance metrics: how the product's pixels changed between the original and the generated image.

Measured at `MetricsConfig.analysis_size` on the original product's pixels (m_orig without a thin band inside
its outline, `ignore_band`, so feathered edges do not count), the same pixels compared in both images, and
only within the product's window (`_window`: no value depends on a pixel outside it):
- `delta_e`: mean CIE76 colour difference (Euclidean distance in CIELAB, L in 0..100) between the original
  and the generated product at a coarse scale: the generated image blurred with sigma 2 px, the original
  with sigma 2 or 3 px (per pixel the smaller difference, so a slightly blurred generation, noise or JPEG
  are not "drift"), after compensating a *mild* global colour grading: a per-channel gain/offset fitted on
  the product, clamped to 1 +- `grading_gain` and +- `grading_offset`, so a real recolour is not absorbed.
- `ssim`: mean structural similarity (Gaussian window, sigma 1.5, greyscale) over the product pixels, after
  the same compensation, per pixel the best of the original as is or blurred (sigma 1 or 2 px); a changed label
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

from hfpc_reward.consistency.colour import colour_at_nearest, fast_lab, lab_norm, nearest_labels, shadow_like
from hfpc_reward.consistency.config import MetricsConfig
from hfpc_reward.consistency.geometry import mask_box
from hfpc_reward.consistency.metrics import (
    box_diagonal,
    disk,
    fit_grading,
    fitted_size,
    outside_distance,
    rgb_to_lab,
    strided_pixels,
    undo_grading,
)

MIN_IGNORE_PX = 3  # the ignored band is at least this wide: anti-aliasing, JPEG and blur at low resolution
IGNORE_IMAGE_FRACTION = 0.01  # ... and at least this share of the image side
EDGE_ZONE = 3  # the edge zone reaches this many ignored-band widths into the product
SHIFT_WORK_SIZE = 64  # longest side (px) at which `moved_by` searches for the product
SHIFT_REACH = 0.35  # x the product's box side: how far `moved_by` searches in every direction
SHIFT_RESIDUAL = 0.5  # a shift counts when its RMS difference is at most this share of the one in place
MAP_SAMPLE = 1024  # product pixels (evenly strided) the affine colour maps of `mapped_delta_e` are fitted on
SSIM_BLUR = (0.0, 1.0, 2.0)  # px: SSIM against the original as is and blurred (per pixel the best counts), so
# a generation softened as a VAE round trip softens it (labels and fine print included) is no relabel
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
WINDOW_MARGIN = 16  # px past the halo ring's reference that the appearance metrics cut the images to: the
# widest blur of the generated image (DRIFT_BLUR's 3 px: a 12 px kernel radius) and then some


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
    inside, rgb = original.mask[window][..., None], rgb.astype(np.float32)
    # off the product, use the original's pixels: windows near the outline then see only product changes
    composite = np.where(inside, generated, rgb)  # float32, as rgb is
    coarse = cv2.GaussianBlur(composite, (0, 0), DRIFT_BLUR[1])
    g, o = fit_grading(original.blurred[1], coarse, region, config.grading_gain, config.grading_offset)
    corrected = np.where(inside, undo_grading(composite, g, o), rgb)
    # colour: the original as the fitted grading renders it (clipping included) against the generation, the
    # original at two blur levels so that a slightly blurred generation is not "drift"
    graded = np.clip(rgb * g + o, 0, 255)
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
    return np.max(np.stack(maps), axis=0)


def _grey(rgb: np.ndarray) -> np.ndarray:
    return np.clip(rgb @ np.array([0.299, 0.587, 0.114], np.float32), 0, 255)
