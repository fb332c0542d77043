"""The classic consistency backend: weight-free, OpenCV + numpy, runs anywhere in a few milliseconds.

Original side (once per distinct original): the product mask is the given mask (the checker has already
snapped it to the original's edges, `refine_mask`; an alpha channel is used as is), else it is extracted
from a studio background (`studio_mask`: distance from the backdrop colour, minus the soft cast shadow,
then snapped with `refine_mask`). The original is reduced to `classic.segment_size`.

Generated side (mask-guided segmentation), at the same reduced size. An *uncertain band* of
max(`band_fraction` x the product's box diagonal, `band_image_fraction` x the image side) around the
outline keeps the original's label, so feathered edges and masks a few pixels off do not count.
- A pixel's distance to the product is the smaller of its Lab distance to the generated image's own
  colour at the nearest product pixel just inside the band (the product as it is now, shading and all)
  and to the nearest of the original product's k-means colours. The new background's colours
  are a small palette (k-means, `palette_size`) of the generated pixels away from the product, plus the
  local mean of the background around each pixel.
- Outside the product, up to `search_fraction` x its size, a pixel is *added* (object expansion, bleed)
  when its nearest product colour is closer than every background colour by `product_margin` (Lab), it is
  not a shadow (a darker, same-hue version of the nearby background, keeping MIN_SHADOW_RATIO of its
  lightness), it did not stay as it was in the original, and it is connected to the product by such
  pixels that do not go on past the search zone (that is a background object behind the product). A connected part is kept only when, where it touches the product, it mostly
  continues the colour of the product there (CONTINUITY_SHARE): grown product continues the product, an
  object behind it meets it at an edge. The palette is fitted again without the added pixels.
- Inside it (beyond the band), a pixel is *lost* when it no longer matches the original (`same_delta_e`,
  after mild grading) and is closer to the background than to the original's colour by `product_margin`.
The generated mask is the original mask minus lost plus added, at the original's size.

Known limit: expansion is found when it is made of product-like colours (the product grew). An object of
another colour attached to the product (a stand, a handle in a new colour) cannot be told from a background
object next to the product by colour alone; it is missed unless it also covers the product (appearance metrics).
So is a blob in one of the product's colours attached where the product has another colour (a purple blob
on the dark side of a purple box), and an object behind the product that continues its colour where they
meet (a purple bokeh disc touching a purple ball) is taken for grown product.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from hfpc_reward.consistency.backends import OriginalProduct
from hfpc_reward.consistency.colour import (
    colour_at_nearest,
    fast_lab,
    lab_norm,
    nearest_colour,
    nearest_labels,
    shadow_like,
)
from hfpc_reward.consistency.config import ClassicConfig, ConsistencyConfig
from hfpc_reward.consistency.metrics import (
    box_diagonal,
    disk,
    fit_grading,
    fitted_size,
    reduced_mask,
    undo_grading,
)

STUDIO_WORK_SIZE = 512  # longest side at which studio-background extraction runs
REFINE_WORK_SIZE = 256  # longest side at which a mask is snapped to the original's edges
PALETTE_SAMPLES = 2000  # background pixels (evenly strided) the k-means palette is fitted on
PRODUCT_COLOURS = 8  # k-means colours of the product used by mask refinement
MIN_REFINE_PX = 5  # mask refinement looks at least this many pixels either side of the given outline
REFINE_MARGIN = 6.0  # Lab distance by which a pixel must be closer to the other side to change sides
CONTINUITY_SHARE = 0.5  # a grown part continues the product's colour on at least this share of its contact
HOLE_FRACTION = 0.005  # studio extraction keeps see-through holes of at least this share of the product


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
        size = fitted_size(*mask.shape, self.config.segment_size)
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        m_small = reduced_mask(mask, size)
        product_size = box_diagonal(m_small)
        band = max(
            1,
            round(max(self.config.band_fraction * product_size, self.config.band_image_fraction * max(size))),
        )
        dist_in = cv2.distanceTransform(m_small.astype(np.uint8), cv2.DIST_L2, 3)
        core = dist_in > band
        if core.sum() < 16:
            core = m_small
        edge_core = core & (dist_in <= 2 * band + 1)  # the product just inside the band: its colour reference
        lab_blur = fast_lab(cv2.GaussianBlur(small.astype(np.float32), (0, 0), 1.0))
        return {
            "size": size,
            "small": small,
            "lab_blur": lab_blur,
            "product_palette": _palette(lab_blur, core, self.config.palette_size),
            "mask": m_small,
            "core": core,
            "nearest_product": (nearest_labels(edge_core), edge_core),  # see colour_at_nearest
            "dist_out": cv2.distanceTransform((~m_small).astype(np.uint8), cv2.DIST_L2, 3),
            "band": band,
            "search": max(band + 2, round(self.config.search_fraction * product_size)),
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
        lab = fast_lab(cv2.GaussianBlur(undo_grading(small, g, o), (0, 0), 1.0))
        to_original = lab_norm(lab - cache["lab_blur"])
        same = to_original < cfg.same_delta_e
        outside = ~m_small & (dist_out > band)
        ring = outside & (dist_out <= cache["search"])
        far = outside & ~ring
        beyond = far & (dist_out <= cache["search"] + 2 * band + 2)  # just past the search zone
        far_background = far if far.sum() > 64 else outside  # where an expansion cannot reach
        local_background = _local_mean(lab, far_background)
        shadow = self._shadow_like(lab, local_background)
        near = ring | beyond | m_small  # the only pixels whose product / background distances are used
        # the product's colour at its nearest edge pixel, where that pixel is still roughly the original's (a
        # part cut off and replaced by background is no reference for what the product looks like)
        nearest_product = cache["nearest_product"]
        roughly_same = (to_original < 2 * cfg.same_delta_e)[..., None].astype(np.float32)  # resampling, JPEG
        still_there = colour_at_nearest(roughly_same, *nearest_product)[..., 0] > 0.5
        to_nearest_product = np.where(
            still_there, lab_norm(lab - colour_at_nearest(lab, *nearest_product)), np.inf
        )
        to_product = np.minimum(to_nearest_product, _distance_to(lab, cache["product_palette"], near))
        seed = cv2.dilate(m_small.astype(np.uint8), disk(band + 1)) > 0

        added = np.zeros_like(m_small)
        background = far_background
        for _ in range(2):  # fit the background colours, then again without the pixels found to be product
            to_background = np.minimum(
                _distance_to(lab, _palette(lab, background, cfg.palette_size), near),
                lab_norm(lab - _local_mean(lab, background)),
            )
            candidates = (ring | beyond) & (to_product + cfg.product_margin < to_background) & ~shadow & ~same
            # specks away from the outline are noise; next to it a thin ring is a bleed, so it is kept
            opened = (
                cv2.morphologyEx(candidates.astype(np.uint8), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8)) > 0
            )
            candidates = opened | (candidates & (dist_out <= 2 * band + 2))
            # a product-like region that goes on past the search zone is a background object behind the
            # product (a red tank next to a red label), not the product grown
            attached = _connected_to(candidates, seed)
            added = attached & ~_connected_to(attached, beyond & attached) & ring
            # grown product continues the colour of the product where it touches it; an object behind the
            # product meets it at an edge in a colour of its own (a red tank against the dark rim of an
            # orange-red product)
            continues = to_nearest_product + cfg.product_margin < to_background
            added = _grown(added, continues, dist_out <= band + 2)
            # the product-like pixels and their fringe stay out of the background (k-means gives outliers
            # a colour of their own)
            found = cv2.dilate(candidates.astype(np.uint8), disk(2 * band + 1)) > 0
            background = far_background | (outside & ~found)
        # lost: no longer the original and close to a background colour; band pixels only next to lost core
        lost_like = m_small & ~same & (to_background < cfg.same_delta_e)
        lost_like &= to_background + cfg.product_margin < to_original
        lost_like = (
            cv2.morphologyEx(lost_like.astype(np.uint8), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8)) > 0
        )
        removed = _connected_to(lost_like, lost_like & core)

        full_size = (product.mask.shape[1], product.mask.shape[0])
        removed_full = cv2.resize(removed.astype(np.uint8), full_size, interpolation=cv2.INTER_NEAREST) > 0
        added_full = cv2.resize(added.astype(np.uint8), full_size, interpolation=cv2.INTER_NEAREST) > 0
        return (product.mask & ~removed_full) | added_full, []

    def _shadow_like(self, lab: np.ndarray, local: np.ndarray) -> np.ndarray:
        """Pixels that are a darker version of the nearby background: same hue, lower lightness."""
        return shadow_like(lab, local, self.config.shadow_max_chroma)


def _local_mean(lab: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Mean Lab colour of the `reference` pixels near each pixel (normalised box filter)."""
    weight = reference.astype(np.float32)
    side = 2 * max(2, round(0.15 * max(lab.shape[:2]))) + 1  # a box filter costs the same at any size
    norm = cv2.blur(weight, (side, side)) + 1e-6
    return cv2.blur(lab * weight[..., None], (side, side)) / norm[..., None]


def _palette(lab: np.ndarray, region: np.ndarray, colours: int) -> np.ndarray | None:
    """(K,3) k-means Lab colours of the `region` pixels (None when there are too few)."""
    pixels = lab[region]
    if len(pixels) < colours:
        return None
    pixels = np.ascontiguousarray(pixels[:: max(1, len(pixels) // PALETTE_SAMPLES)], dtype=np.float32)
    cv2.setRNGSeed(0)  # the same image always gets the same palette
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 8, 0.5)
    return cv2.kmeans(pixels, colours, None, criteria, 1, cv2.KMEANS_PP_CENTERS)[2]


def _distance_to(lab: np.ndarray, palette: np.ndarray | None, region: np.ndarray) -> np.ndarray:
    """Per pixel of `region`, the Lab distance to the nearest colour of `palette` (infinite elsewhere and
    without a palette)."""
    distance = np.full(lab.shape[:2], np.inf, np.float32)
    if palette is None:
        return distance
    pixels = lab[region]
    # (K, N): the minimum over the K palette colours is then a reduction over contiguous rows (fast)
    squared = (palette * palette).sum(1)[:, None] - 2 * palette @ pixels.T + (pixels * pixels).sum(1)[None]
    distance[region] = np.sqrt(np.maximum(squared.min(axis=0), 0.0))
    return distance


def refine_mask(rgb: np.ndarray, mask: np.ndarray, reach_px: int) -> np.ndarray:
    """`mask` snapped to the edges of `rgb` within `reach_px` of its outline (at REFINE_WORK_SIZE at most).

    Within that band a pixel changes side when its colour is closer (by REFINE_MARGIN) to the other side:
    to the nearest product pixel beyond the band inside (for joining, also one of the product's k-means
    colours), or to the nearest background pixel beyond it outside. A mask eroded or dilated by a few pixels (a segmenter's)
    comes back to the product's true outline where product and background differ.
    """
    height, width = mask.shape
    scale = min(1.0, REFINE_WORK_SIZE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    work = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    m_work = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5
    reach = max(1, round(reach_px * scale))
    inside = cv2.erode(m_work.astype(np.uint8), disk(reach)) > 0
    outside = cv2.dilate(m_work.astype(np.uint8), disk(reach)) == 0
    if inside.sum() < 16 or outside.sum() < 16:
        return mask
    lab = fast_lab(work)
    band = ~inside & ~outside
    to_near_in = lab_norm(lab - nearest_colour(lab, inside))
    to_out = lab_norm(lab - nearest_colour(lab, outside))
    # a pixel changes side only when clearly closer to the other one: mixed (anti-aliased) pixels keep the
    # given label; holes of the mask (inside a handle) stay holes. A thin part has no interior nearby, so a
    # pixel may also join by the product's k-means colours; it leaves only by its nearest interior colour
    # (a white print would otherwise keep a white backdrop in the mask)
    product_colours = _palette(lab, inside, PRODUCT_COLOURS)
    to_in = np.minimum(to_near_in, _distance_to(lab, product_colours, band & ~m_work))
    joins = band & ~m_work & (to_in + REFINE_MARGIN < to_out)
    leaves = band & m_work & (to_out + REFINE_MARGIN < to_near_in)
    refined = (m_work | joins) & ~leaves
    if scale == 1.0:
        return refined
    return cv2.resize(refined.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) > 0.5


def studio_mask(rgb: np.ndarray, config: ClassicConfig) -> tuple[np.ndarray, list[str]]:
    """Product mask of a photo on a plain studio backdrop: pixels far from the backdrop colour that are not
    its soft cast shadow (a darker, same-hue backdrop), cleaned and snapped to the edges (`refine_mask`).

    Returns the (H,W) bool mask and notes (e.g. when the border is not a plain backdrop).
    """
    height, width = rgb.shape[:2]
    work = cv2.resize(rgb, fitted_size(height, width, STUDIO_WORK_SIZE), interpolation=cv2.INTER_AREA)
    lab = fast_lab(cv2.GaussianBlur(work.astype(np.float32), (0, 0), 1.0))
    border = np.zeros(lab.shape[:2], bool)
    border[:2], border[-2:], border[:, :2], border[:, -2:] = True, True, True, True
    notes = []
    backdrop = _smooth_backdrop(lab, border)  # a soft gradient or vignette of the backdrop is followed
    spread = np.linalg.norm(lab[border] - backdrop[border], axis=1)
    if np.percentile(spread, 90) > config.studio_delta_e:
        notes.append(
            "original has no plain studio background; its extracted product mask may be wrong (pass a mask)"
        )
    distinct = np.linalg.norm(lab - backdrop, axis=2) > config.studio_delta_e
    shadow = shadow_like(lab, backdrop, config.shadow_max_chroma)
    foreground = (distinct & ~shadow).astype(np.uint8)
    radius = max(1, round(0.004 * max(work.shape[:2])))  # small: wider closes the gaps between legs
    foreground = cv2.morphologyEx(foreground, cv2.MORPH_CLOSE, disk(radius))
    foreground = cv2.morphologyEx(foreground, cv2.MORPH_OPEN, disk(1))
    foreground = _fill_holes(
        foreground > 0, keep=np.linalg.norm(lab - backdrop, axis=2) < config.studio_delta_e / 2
    )
    count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground.astype(np.uint8), connectivity=8)
    if count > 1:
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = np.flatnonzero(areas >= 0.05 * areas.max()) + 1
        foreground = np.isin(labels, keep)
    else:
        notes.append("studio-background extraction found no product in the original")
    mask = cv2.resize(foreground.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
    if count > 1:
        mask = refine_mask(rgb, mask, max(MIN_REFINE_PX, round(0.01 * max(height, width))))
    return mask, notes


def _smooth_backdrop(lab: np.ndarray, border: np.ndarray) -> np.ndarray:
    """The backdrop colour at every pixel: a quadratic surface in (x, y) per Lab channel, fitted on `border`."""
    height, width = border.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    xx, yy = xx / width - 0.5, yy / height - 0.5
    terms = np.stack([np.ones_like(xx), xx, yy, xx * xx, yy * yy, xx * yy], axis=-1)  # (H,W,6)
    coefficients, *_ = np.linalg.lstsq(terms[border], lab[border], rcond=None)
    return (terms @ coefficients).astype(np.float32)


def _fill_holes(mask: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """`mask` with its holes filled, except see-through ones: holes of at least HOLE_FRACTION of the mask's
    area whose pixels are mostly `keep` (the backdrop showing through, as inside a handle)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=4)
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    area = stats[:, cv2.CC_STAT_AREA]
    kept_share = np.bincount(labels.ravel(), weights=keep.ravel(), minlength=count) / np.maximum(area, 1)
    fill = (area < HOLE_FRACTION * mask.sum()) | (kept_share < 0.5)
    fill[0] = False  # the mask itself
    fill[edge_labels] = False  # background reaching the border is no hole
    return mask | fill[labels]


def _grown(regions: np.ndarray, continues: np.ndarray, contact_zone: np.ndarray) -> np.ndarray:
    """The connected parts of `regions` that look grown out of the product: at least CONTINUITY_SHARE of their
    pixels in `contact_zone` (where they touch it) `continues` the product's colour."""
    count, labels = cv2.connectedComponents(regions.astype(np.uint8), connectivity=8)
    if count <= 1:
        return regions
    contact = contact_zone & regions
    touching = np.bincount(labels[contact], minlength=count)
    continuing = np.bincount(labels[contact & continues], minlength=count)
    keep = continuing >= CONTINUITY_SHARE * np.maximum(touching, 1)
    keep[0] = False
    return keep[labels]


def _connected_to(candidates: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The candidate pixels that belong to a connected region touching `seed`."""
    if not candidates.any():
        return candidates
    _, labels = cv2.connectedComponents((candidates | seed).astype(np.uint8), connectivity=8)
    touching = np.unique(labels[seed & (labels > 0)])
    return candidates & np.isin(labels, touching[touching > 0])
