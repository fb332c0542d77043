"""Validation family "cutouts": products cut from real photos, drawn with signed distance fields.

Written apart from `hfpc_reward.sample` (PIL drawing) and benchmarks/heldout_consistency_set.py (OpenCV
drawing) so that a judge tuned on one of them can be measured on data it never saw. Products are real
objects cut out of the photos that ship with scikit-image (the coins of coins.png, the fundus disc of
retina.jpg) or silhouettes (superellipses, capsules, rounded boxes, built from signed distance fields)
filled with a crop of a photo (coffee, cat, china, flower) and a printed label band. Originals sit on a
studio backdrop, half of them with a soft cast shadow (not part of the product mask). Generations
composite the product onto another photo with harmless changes (JPEG 82-95, noise, slight blur, mild
grading, a soft shadow) and, for about half of them, one defect (DEFECTS). Image sides vary from 96 to
1024 px.

    pairs = cutout_pairs(n_pairs=120, seed=0)    # list[FamilyPair]
"""

from __future__ import annotations

import io
from functools import cache

import cv2
import numpy as np
from PIL import Image
from scipy.ndimage import distance_transform_edt

from hfpc_reward.sample.families.base import DEFECTS, FamilyPair, photo, plan_defects

SIDES = (96, 128, 192, 256, 320, 384, 448, 512, 640, 768, 1024)
SIDE_WEIGHTS = np.array([1, 2, 2, 3, 3, 3, 3, 4, 2, 1, 1], np.float64)
FILLS = ("coffee.png", "chelsea.png", "china.jpg", "flower.jpg", "astronaut.png")
SCENES = (
    "rocket.jpg",
    "motorcycle_left.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
)
GENERATIONS_PER_ORIGINAL = 3


@cache
def coin_alphas() -> list[np.ndarray]:
    """The larger coins of coins.png, each an alpha crop (real objects cut by Otsu thresholding)."""
    grey = photo("coins.png")[..., 0]
    grey8 = (grey * 255).astype(np.uint8)
    _, binary = cv2.threshold(cv2.GaussianBlur(grey8, (5, 5), 0), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary)
    alphas = []
    for k in range(1, count):
        x, y, w, h, area = stats[k]
        if area > 900 and 0.7 < w / h < 1.4 and x > 0 and y > 0:
            alphas.append(((labels[y : y + h, x : x + w] == k), photo("coins.png")[y : y + h, x : x + w]))
    return alphas


def _sdf_shape(rng, side: int) -> np.ndarray:
    """An anti-aliased silhouette (alpha in [0,1]) of a random SDF shape centred in a side x side frame."""
    yy, xx = (np.mgrid[0:side, 0:side].astype(np.float32) + 0.5) / side - 0.5
    a, b = rng.uniform(0.16, 0.3), rng.uniform(0.22, 0.38)
    shape = rng.choice(["superellipse", "capsule", "box"])
    if shape == "superellipse":
        n = rng.uniform(2.0, 5.0)
        sdf = ((np.abs(xx / a) ** n + np.abs(yy / b) ** n) ** (1 / n) - 1.0) * min(a, b)
    elif shape == "capsule":
        radius = a
        sdf = np.hypot(xx, np.maximum(np.abs(yy) - (b - radius), 0)) - radius
    else:
        corner = rng.uniform(0.02, 0.08)
        qx, qy = np.abs(xx) - a + corner, np.abs(yy) - b + corner
        sdf = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - corner
    return np.clip(0.5 - sdf * side, 0.0, 1.0)


def new_product(rng, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(colour (H,W,3) float straight RGB, alpha (H,W)) of a product filling about a third of the frame."""
    kind = rng.choice(["coin", "retina", "shape", "shape", "shape"])
    if kind in ("coin", "retina"):
        if kind == "coin":
            cut, pixels = coin_alphas()[rng.integers(len(coin_alphas()))]
            pixels = pixels * np.float32([1.0, 0.85, 0.55]) + np.float32([0.1, 0.05, 0.0])  # brass
        else:
            pixels = photo("retina.jpg")
            cut = cv2.GaussianBlur(pixels.mean(axis=2), (0, 0), 3) > 0.06
        extent = rng.uniform(0.35, 0.6) * side
        scale = extent / max(cut.shape)
        size = (max(2, round(cut.shape[1] * scale)), max(2, round(cut.shape[0] * scale)))
        small_alpha = cv2.resize(cut.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        small_colour = cv2.resize(
            np.clip(pixels, 0, 1).astype(np.float32), size, interpolation=cv2.INTER_AREA
        )
        alpha, colour = np.zeros((side, side), np.float32), np.zeros((side, side, 3), np.float32)
        y0, x0 = (side - size[1]) // 2 + rng.integers(-side // 10, side // 10 + 1), (side - size[0]) // 2
        alpha[y0 : y0 + size[1], x0 : x0 + size[0]] = small_alpha
        colour[y0 : y0 + size[1], x0 : x0 + size[0]] = small_colour
        return colour, alpha
    alpha = _sdf_shape(rng, side)
    fill = photo(str(rng.choice(FILLS)))
    y, x = rng.integers(0, fill.shape[0] // 3), rng.integers(0, fill.shape[1] // 3)
    crop = fill[y : y + 2 * fill.shape[0] // 3, x : x + 2 * fill.shape[1] // 3]
    colour = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
    tint = rng.uniform(0.5, 1.1, 3).astype(np.float32)
    colour = np.clip(colour * tint, 0, 1)
    ys = np.nonzero(alpha.max(axis=1) > 0.5)[0]
    top = ys[0] + int((ys[-1] - ys[0]) * rng.uniform(0.35, 0.55))
    band = slice(top, top + max(2, int((ys[-1] - ys[0]) * rng.uniform(0.12, 0.22))))
    colour[band] = rng.uniform(0.05, 0.95, 3).astype(np.float32)
    text = photo("text.png")[..., 0] < 0.45
    lines = cv2.resize(text.astype(np.float32), (side, max(1, band.stop - band.start))) > 0.5
    colour[band][lines] = 1.0 - colour[band][lines]
    return colour, alpha


def studio_original(rng, colour, alpha, shadow: bool) -> np.ndarray:
    side = alpha.shape[0]
    tone = rng.uniform(0.9, 1.0)
    backdrop = np.full((side, side, 3), tone, np.float32) * rng.uniform(0.97, 1.0, 3).astype(np.float32)
    if rng.random() < 0.3:  # a soft vertical gradient
        backdrop *= np.linspace(1.0, rng.uniform(0.9, 0.97), side, dtype=np.float32)[:, None, None]
    if shadow:
        backdrop = cast_shadow(rng, backdrop, alpha)
    return backdrop * (1 - alpha[..., None]) + colour * alpha[..., None]


def cast_shadow(rng, image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """A soft shadow of the product, offset down-right and darkening by 10-35 %."""
    side = alpha.shape[0]
    shift = np.float32([[1, 0, rng.uniform(0.01, 0.05) * side], [0, 1, rng.uniform(0.02, 0.06) * side]])
    cast = cv2.warpAffine(alpha, shift, (side, side))
    cast = cv2.GaussianBlur(cast, (0, 0), rng.uniform(0.01, 0.03) * side + 0.5)
    return image * (1.0 - rng.uniform(0.1, 0.35) * cast)[..., None]


def scene(rng, side: int) -> np.ndarray:
    picture = photo(str(rng.choice(SCENES)))
    crop_side = int(min(picture.shape[:2]) * rng.uniform(0.5, 1.0))
    y = rng.integers(0, picture.shape[0] - crop_side + 1)
    x = rng.integers(0, picture.shape[1] - crop_side + 1)
    crop = picture[y : y + crop_side, x : x + crop_side]
    return cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA) * rng.uniform(0.7, 1.1, 3).astype(
        np.float32
    )


def defect(kind: str, rng, colour, alpha) -> tuple[np.ndarray, np.ndarray]:
    """The product layer (colour, alpha) after one defect of DEFECTS."""
    side = alpha.shape[0]
    solid = alpha > 0.5
    ys, xs = np.nonzero(solid)
    size = float(np.hypot(np.ptp(xs), np.ptp(ys)))
    if kind == "expanded":  # the product grew: a blob attached to the outline, in its nearest colours
        edge = np.flatnonzero(cv2.dilate(solid.astype(np.uint8), np.ones((3, 3))).ravel() & ~solid.ravel())
        cy, cx = np.unravel_index(rng.choice(edge), solid.shape)
        radius = rng.uniform(0.12, 0.22) * size
        blob = np.zeros((side, side), np.float32)
        axes = (int(radius), int(radius * rng.uniform(0.6, 1.0)))
        cv2.ellipse(blob, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA)
        return _grown(colour, alpha, np.maximum(alpha, blob))
    if kind == "bled":  # product colours smeared 7-13 px (at 512 px) outward around the outline
        reach = max(2.0, rng.uniform(7, 13) * side / 512)
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * int(reach) + 1, 2 * int(reach) + 1))
        smear = cv2.GaussianBlur(cv2.dilate(alpha, disk), (0, 0), reach / 3) * rng.uniform(0.75, 0.95)
        return _grown(colour, alpha, np.maximum(alpha, smear))
    if kind == "truncated":  # a half-plane of the product is gone
        angle = rng.uniform(0, 2 * np.pi)
        direction = np.array([np.cos(angle), np.sin(angle)])
        projection = (xs - xs.mean()) * direction[0] + (ys - ys.mean()) * direction[1]
        cut_at = np.quantile(projection, 1 - rng.uniform(0.15, 0.4))
        yy, xx = np.mgrid[0:side, 0:side]
        keep = ((xx - xs.mean()) * direction[0] + (yy - ys.mean()) * direction[1]) < cut_at
        return colour, alpha * keep
    if kind == "recoloured":
        hsv = cv2.cvtColor(np.clip(colour, 0, 1).astype(np.float32), cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(50, 180)) % 360
        hsv[..., 1] = np.maximum(hsv[..., 1], 0.35)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), alpha
    if kind == "relabelled":  # a patch over a third of the product in a new flat colour with stripes
        y0 = int(ys.min() + np.ptp(ys) * rng.uniform(0.2, 0.5))
        patch = np.zeros_like(solid)
        patch[y0 : y0 + int(np.ptp(ys) * 0.3)] = True
        new = colour.copy()
        new[patch] = rng.uniform(0, 1, 3)
        stripes = patch & ((np.arange(side)[None, :] // max(2, side // 40)) % 2 == 0)
        new[stripes] = 1.0 - new[stripes]
        return new, alpha
    if kind == "moved":
        angle = rng.uniform(0, 2 * np.pi)
        distance = rng.uniform(0.12, 0.3) * size
        shift = np.float32([[1, 0, distance * np.cos(angle)], [0, 1, distance * np.sin(angle)]])
        return cv2.warpAffine(colour, shift, (side, side)), cv2.warpAffine(alpha, shift, (side, side))
    if kind == "rescaled":
        scale = rng.choice([rng.uniform(0.72, 0.85), rng.uniform(1.15, 1.3)])
        matrix = cv2.getRotationMatrix2D((float(xs.mean()), float(ys.max())), 0.0, scale)
        return cv2.warpAffine(colour, matrix, (side, side)), cv2.warpAffine(alpha, matrix, (side, side))
    raise ValueError(f"unknown defect {kind!r}; one of {DEFECTS}")


def _grown(colour, alpha, new_alpha) -> tuple[np.ndarray, np.ndarray]:
    """The product layer with alpha raised to `new_alpha`, new pixels taking the nearest product colour."""
    _, (iy, ix) = distance_transform_edt(alpha <= 0.5, return_indices=True)
    nearest = cv2.GaussianBlur(colour[iy, ix], (0, 0), 1.0)
    weight = (alpha / np.maximum(new_alpha, 1e-4))[..., None]
    return colour * weight + nearest * (1 - weight), new_alpha


def generation(rng, colour, alpha) -> tuple[np.ndarray, list[str]]:
    """The product layer composited on a photo with harmless changes; returns uint8 RGB and their names."""
    side = alpha.shape[0]
    background = scene(rng, side)
    changes = []
    if rng.random() < 0.5:
        background = cast_shadow(rng, background, alpha)
        changes.append("shadow")
    image = background * (1 - alpha[..., None]) + colour * alpha[..., None]
    if rng.random() < 0.5:
        image = image * rng.uniform(0.96, 1.04, 3).astype(np.float32) + rng.uniform(-0.015, 0.015, 3)
        changes.append("grading")
    if rng.random() < 0.5:
        image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), rng.uniform(0.3, 0.8))
        changes.append("blur")
    image = image + rng.normal(0, rng.uniform(0.003, 0.012), image.shape).astype(np.float32)
    pixels = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    quality = int(rng.integers(82, 96))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    changes.append(f"jpeg_q{quality}")
    return np.asarray(Image.open(buffer).convert("RGB")), changes


def cutout_pairs(
    n_pairs: int = 120, seed: int = 0, defect_fraction: float = 0.5, sides: tuple[int, ...] | None = None
) -> list[FamilyPair]:
    """`n_pairs` pairs, GENERATIONS_PER_ORIGINAL per original; image sides drawn from SIDES (or `sides`)."""
    plan = plan_defects(n_pairs, defect_fraction, seed)
    pairs = []
    for first in range(0, n_pairs, GENERATIONS_PER_ORIGINAL):
        index = first // GENERATIONS_PER_ORIGINAL
        rng = np.random.default_rng([seed, 5, index])
        side = int(rng.choice(SIDES, p=SIDE_WEIGHTS / SIDE_WEIGHTS.sum()))
        side = side if sides is None else int(rng.choice(sides))
        colour, alpha = new_product(rng, side)
        shadow = bool(rng.random() < 0.5)
        original = (np.clip(studio_original(rng, colour, alpha, shadow), 0, 1) * 255 + 0.5).astype(np.uint8)
        for k in range(first, min(first + GENERATIONS_PER_ORIGINAL, n_pairs)):
            grng = np.random.default_rng([seed, 5, index, k])
            kind = plan[k]
            layer = (colour, alpha) if kind == "none" else defect(kind, grng, colour, alpha)
            generated, changes = generation(grng, *layer)
            pairs.append(
                FamilyPair(
                    family="cutouts",
                    original_id=f"c{index:04d}",
                    original=original,
                    generated=generated,
                    mask=alpha > 0.5,
                    defect=kind,
                    studio_shadow=shadow,
                    harmless=changes,
                )
            )
    return pairs
