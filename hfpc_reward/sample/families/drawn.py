"""Validation family "drawn": products drawn with scikit-image polygons and ellipses, procedural textures.

Written apart from the other three families (PIL drawing in `hfpc_reward.sample`, OpenCV drawing in
benchmarks/heldout_consistency_set.py, SDF cut-outs of photos in cutouts.py), so it is the held-out truth
for a judge designed while looking at those. Products are unions of `skimage.draw` polygons and ellipses
(bottles, boxes, cans, lamps, irregular stones), filled with a procedural texture (stripes, checks,
value noise, a radial gradient, dots) in a palette of its own (earthy, neon, pastel, monochrome, metallic).
Originals sit on a studio backdrop, half of them with a cast shadow, some of those hard-edged. Generations
put the product on a procedural background (wood grain, tiles, clouds, fabric weave, plain wall) with
harmless changes of their own magnitudes (gamma 0.9-1.1, a resample, unsharp mask, noise, JPEG 75-97 or
WebP) and, for about half of them, one defect: a grown limb (expanded), a halo or a one-sided smudge
(bled), a bite taken out (truncated), a channel swap or hue shift (recoloured), a new texture on a part
(relabelled), a translation (moved), a rescale (rescaled). Sides from 96 to 1024 px.

    pairs = drawn_pairs(n_pairs=120, seed=0)    # list[FamilyPair]
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image
from skimage import draw

from hfpc_reward.sample.families.base import DEFECTS, FamilyPair, plan_defects

SIDES = (96, 112, 160, 224, 300, 400, 512, 576, 720, 900, 1024)
PALETTES = {  # RGB in [0,1]: a product draws two or three of its palette's colours
    "earthy": ((0.55, 0.35, 0.2), (0.35, 0.45, 0.25), (0.8, 0.7, 0.5), (0.45, 0.25, 0.15)),
    "neon": ((0.1, 0.95, 0.4), (0.95, 0.1, 0.7), (0.2, 0.4, 1.0), (1.0, 0.9, 0.1)),
    "pastel": ((0.95, 0.75, 0.8), (0.7, 0.85, 0.95), (0.8, 0.95, 0.75), (0.95, 0.9, 0.7)),
    "mono": ((0.12, 0.12, 0.13), (0.45, 0.45, 0.47), (0.85, 0.85, 0.86), (0.25, 0.25, 0.3)),
    "metal": ((0.75, 0.6, 0.3), (0.6, 0.62, 0.66), (0.72, 0.45, 0.3), (0.9, 0.88, 0.8)),
}
GENERATIONS_PER_ORIGINAL = 3


def _union(side: int, shapes: list) -> np.ndarray:
    """A (side, side) bool mask of the union of polygons ("poly", rows, cols) and ellipses ("ellipse", ...)."""
    mask = np.zeros((side, side), bool)
    for shape in shapes:
        if shape[0] == "poly":
            rr, cc = draw.polygon(shape[1], shape[2], shape=mask.shape)
        else:
            rr, cc = draw.ellipse(*shape[1:5], shape=mask.shape, rotation=shape[5])
        mask[rr, cc] = True
    return mask


def silhouette(rng, side: int) -> np.ndarray:
    """A product outline (bool mask) of a random kind, about a quarter to a half of the frame tall."""
    cy, cx = side * rng.uniform(0.42, 0.58), side * rng.uniform(0.42, 0.58)
    h, w = side * rng.uniform(0.25, 0.42), side * rng.uniform(0.12, 0.25)
    kind = rng.choice(["bottle", "box", "can", "lamp", "stone"])
    if kind == "bottle":  # body, shoulders, neck
        neck = w * rng.uniform(0.25, 0.4)
        rows = [cy + h, cy + h, cy - h * 0.3, cy - h * 0.55, cy - h, cy - h, cy - h * 0.55, cy - h * 0.3]
        cols = [cx - w, cx + w, cx + w, cx + neck, cx + neck, cx - neck, cx - neck, cx - w]
        return _union(side, [("poly", rows, cols)])
    if kind == "box":  # a box seen slightly from above: front face and lid
        lean = w * rng.uniform(0.1, 0.4)
        front = ("poly", [cy - h * 0.6, cy - h * 0.6, cy + h, cy + h], [cx - w, cx + w, cx + w, cx - w])
        lid = (
            "poly",
            [cy - h * 0.6, cy - h, cy - h, cy - h * 0.6],
            [cx - w, cx - w + lean, cx + w + lean, cx + w],
        )
        return _union(side, [front, lid])
    if kind == "can":  # a cylinder: a rectangle with elliptical top and bottom
        cap = h * rng.uniform(0.08, 0.15)
        body = ("poly", [cy - h, cy - h, cy + h, cy + h], [cx - w, cx + w, cx + w, cx - w])
        return _union(
            side, [body, ("ellipse", cy - h, cx, cap, w, 0.0), ("ellipse", cy + h, cx, cap, w, 0.0)]
        )
    if kind == "lamp":  # a shade on a stem on a base
        shade = (
            "poly",
            [cy - h, cy - h, cy - h * 0.2, cy - h * 0.2],
            [cx - w * 0.5, cx + w * 0.5, cx + w, cx - w],
        )
        stem_rows = [cy - h * 0.2, cy - h * 0.2, cy + h * 0.8, cy + h * 0.8]
        stem = ("poly", stem_rows, [cx - w * 0.12, cx + w * 0.12, cx + w * 0.12, cx - w * 0.12])
        return _union(side, [shade, stem, ("ellipse", cy + h * 0.85, cx, h * 0.12, w * 0.8, 0.0)])
    angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(7, 12))))  # an irregular stone
    radii = rng.uniform(0.7, 1.0, len(angles))
    rows, cols = cy + h * 0.8 * radii * np.sin(angles), cx + h * 0.8 * radii * np.cos(angles)
    return _union(side, [("poly", rows, cols), ("ellipse", cy, cx, h * 0.55, h * 0.6, rng.uniform(0, np.pi))])


def _value_noise(rng, side: int, cells: int) -> np.ndarray:
    """Smooth noise in [0,1]: a cells x cells random grid upsampled bicubically."""
    grid = rng.random((cells + 3, cells + 3)).astype(np.float32)
    big = cv2.resize(
        grid, (side + side // cells * 3, side + side // cells * 3), interpolation=cv2.INTER_CUBIC
    )
    return np.clip(big[:side, :side], 0, 1)


def texture(rng, side: int, colours: np.ndarray) -> np.ndarray:
    """A (side, side, 3) float texture mixing `colours` (2 or 3 RGB rows) by a procedural pattern."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    kind = rng.choice(["stripes", "checks", "noise", "radial", "dots"])
    period = rng.uniform(0.04, 0.15)
    if kind == "stripes":
        angle = rng.uniform(0, np.pi)
        t = (np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period) > 0).astype(np.float32)
    elif kind == "checks":
        t = (((xx // period) + (yy // period)) % 2).astype(np.float32)
    elif kind == "noise":
        t = _value_noise(rng, side, int(rng.integers(3, 9)))
    elif kind == "radial":
        t = np.clip(np.hypot(xx - 0.5, yy - 0.5) * 2.5, 0, 1)
    else:
        t = ((np.hypot((xx % period) / period - 0.5, (yy % period) / period - 0.5)) < 0.3).astype(np.float32)
    t = cv2.GaussianBlur(t, (0, 0), max(0.5, side / 512))  # printed, not aliased
    first, second = colours[0], colours[1]
    image = first * (1 - t[..., None]) + second * t[..., None]
    if len(colours) > 2:  # a third colour as a flat label patch
        top, height = int(side * rng.uniform(0.4, 0.55)), int(side * rng.uniform(0.06, 0.12))
        image[top : top + height] = colours[2]
    return image.astype(np.float32)


def new_product(rng, side: int) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(colour (H,W,3) float, alpha (H,W) float, recipe) of one product; the recipe redraws its texture."""
    mask = silhouette(rng, side)
    palette = np.array(PALETTES[str(rng.choice(list(PALETTES)))], np.float32)
    colours = palette[rng.permutation(len(palette))[: int(rng.integers(2, 4))]]
    texture_seed = int(rng.integers(1 << 30))
    colour = texture(np.random.default_rng(texture_seed), side, colours)
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(0.4, 0.7 * side / 512))  # anti-aliased
    return colour, alpha, (palette, colours)


def backdrop(rng, side: int, alpha: np.ndarray, shadow: bool) -> np.ndarray:
    """A studio backdrop (light, warm or cool, maybe a vignette) with an optional cast shadow."""
    tone = np.float32(rng.uniform(0.85, 0.99)) * rng.uniform(0.96, 1.0, 3).astype(np.float32)
    image = np.broadcast_to(tone, (side, side, 3)).astype(np.float32).copy()
    if rng.random() < 0.4:
        yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side - 0.5
        image *= (1 - rng.uniform(0.03, 0.08) * (xx * xx + yy * yy) * 4)[..., None]
    if shadow:
        image = cast_shadow(rng, image, alpha)
    return image


def cast_shadow(rng, image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The product's shadow, offset to one side, hard or soft, darkening by 15-40 %."""
    side = alpha.shape[0]
    dx, dy = rng.uniform(-0.06, 0.06) * side, rng.uniform(0.0, 0.05) * side
    cast = cv2.warpAffine(alpha, np.float32([[1, 0.15, dx], [0, 1, dy]]), (side, side))
    if rng.random() < 0.7:
        cast = cv2.GaussianBlur(cast, (0, 0), rng.uniform(0.01, 0.04) * side + 0.5)
    return image * (1 - rng.uniform(0.15, 0.4) * cast)[..., None]


def scene(rng, side: int) -> np.ndarray:
    """A procedural background: wood grain, tiles, clouds, fabric weave or a plain wall."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    base = rng.uniform(0.15, 0.85, 3).astype(np.float32)
    other = np.clip(base + rng.uniform(-0.3, 0.3, 3), 0, 1).astype(np.float32)
    kind = rng.choice(["wood", "tiles", "clouds", "weave", "wall"])
    if kind == "wood":
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (yy * rng.uniform(6, 14) + 0.6 * _value_noise(rng, side, 4)))
    elif kind == "tiles":
        cell = rng.uniform(0.08, 0.2)
        grout = (np.minimum(xx % cell, yy % cell) < cell * 0.08).astype(np.float32)
        t = grout + 0.3 * _value_noise(rng, side, 6) * (1 - grout)
    elif kind == "clouds":
        t = 0.6 * _value_noise(rng, side, 3) + 0.4 * _value_noise(rng, side, 11)
    elif kind == "weave":
        period = rng.uniform(0.01, 0.03)
        t = 0.5 + 0.25 * (np.sin(2 * np.pi * xx / period) + np.sin(2 * np.pi * yy / period))
    else:
        t = 0.2 * _value_noise(rng, side, 2)
    return (base * (1 - t[..., None]) + other * t[..., None]).astype(np.float32)


def defect(kind: str, rng, colour, alpha, recipe) -> tuple[np.ndarray, np.ndarray]:
    """The product layer (colour, alpha) after one defect of DEFECTS, written differently from cutouts."""
    side = alpha.shape[0]
    solid = alpha > 0.5
    ys, xs = np.nonzero(solid)
    size = float(np.hypot(np.ptp(xs), np.ptp(ys)))
    cy, cx = ys.mean(), xs.mean()
    if kind == "expanded":  # a limb grows out of the product: a polygon from the centre past the outline
        angle = rng.uniform(0, 2 * np.pi)
        reach = _extent(solid, cy, cx, angle) + rng.uniform(0.15, 0.3) * size
        width = rng.uniform(0.08, 0.16) * size
        normal = np.array([-np.sin(angle), np.cos(angle)]) * width / 2
        tip_y, tip_x = cy + reach * np.sin(angle), cx + reach * np.cos(angle)
        rows = [cy + normal[1], tip_y + normal[1] * 0.7, tip_y - normal[1] * 0.7, cy - normal[1]]
        cols = [cx + normal[0], tip_x + normal[0] * 0.7, tip_x - normal[0] * 0.7, cx - normal[0]]
        limb = cv2.GaussianBlur(_union(side, [("poly", rows, cols)]).astype(np.float32), (0, 0), 0.7)
        return colour, np.maximum(alpha, limb)  # the texture continues into the limb
    if kind == "bled":
        mean = colour[solid].mean(axis=0)
        if rng.random() < 0.5:  # a halo: the product's mean colour glowing 6-14 px (at 512 px) around it
            reach = max(2.0, rng.uniform(6, 14) * side / 512)
            halo = cv2.GaussianBlur(alpha, (0, 0), reach / 2) * 3.0
            glow = np.clip(halo, 0, 1) * rng.uniform(0.7, 0.95)
        else:  # a smudge: the product dragged 8-18 px (at 512 px) to one side, fading
            reach = max(3.0, rng.uniform(8, 18) * side / 512)
            angle = rng.uniform(0, 2 * np.pi)
            glow = np.zeros_like(alpha)
            for step in np.linspace(0, reach, 8):
                shift = np.float32([[1, 0, step * np.cos(angle)], [0, 1, step * np.sin(angle)]])
                glow = np.maximum(glow, cv2.warpAffine(alpha, shift, (side, side)) * (1 - 0.5 * step / reach))
        new_alpha = np.maximum(alpha, glow)
        weight = (alpha / np.maximum(new_alpha, 1e-4))[..., None]
        return colour * weight + mean * (1 - weight), new_alpha
    if kind == "truncated":  # a round bite out of the outline
        angle = rng.uniform(0, 2 * np.pi)
        edge = _extent(solid, cy, cx, angle)
        radius = rng.uniform(0.22, 0.35) * size
        bite = _union(
            side, [("ellipse", cy + edge * np.sin(angle), cx + edge * np.cos(angle), radius, radius, 0.0)]
        )
        return colour, alpha * (1 - cv2.GaussianBlur(bite.astype(np.float32), (0, 0), 0.7))
    if kind == "recoloured":
        if rng.random() < 0.5:
            return colour[..., list(rng.choice([[1, 2, 0], [2, 0, 1], [2, 1, 0]]))], alpha
        hsv = cv2.cvtColor(colour, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(60, 300)) % 360
        hsv[..., 1] = np.clip(hsv[..., 1] + 0.3, 0, 1)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), alpha
    if kind == "relabelled":  # a part of the product redrawn with another texture
        palette, _ = recipe
        new = texture(rng, side, palette[rng.permutation(len(palette))[:2]])
        part = np.zeros_like(solid)
        top = int(ys.min() + np.ptp(ys) * rng.uniform(0.2, 0.5))
        part[top : top + int(np.ptp(ys) * rng.uniform(0.25, 0.4))] = True
        return np.where(part[..., None], new, colour), alpha
    if kind == "moved":
        distance, angle = rng.uniform(0.1, 0.25) * size, rng.uniform(0, 2 * np.pi)
        shift = np.float32([[1, 0, distance * np.cos(angle)], [0, 1, distance * np.sin(angle)]])
        return cv2.warpAffine(colour, shift, (side, side)), cv2.warpAffine(alpha, shift, (side, side))
    if kind == "rescaled":
        scale = float(rng.choice([rng.uniform(0.7, 0.84), rng.uniform(1.16, 1.35)]))
        matrix = cv2.getRotationMatrix2D((float(cx), float(cy)), 0.0, scale)
        return cv2.warpAffine(colour, matrix, (side, side)), cv2.warpAffine(alpha, matrix, (side, side))
    raise ValueError(f"unknown defect {kind!r}; one of {DEFECTS}")


def _extent(solid: np.ndarray, cy: float, cx: float, angle: float) -> float:
    """Distance from (cy, cx) to the last product pixel along `angle`."""
    steps = np.arange(0, max(solid.shape), 1.0)
    rows = np.clip((cy + steps * np.sin(angle)).astype(int), 0, solid.shape[0] - 1)
    cols = np.clip((cx + steps * np.cos(angle)).astype(int), 0, solid.shape[1] - 1)
    inside = np.flatnonzero(solid[rows, cols])
    return float(steps[inside[-1]]) if len(inside) else 0.0


def generation(rng, colour, alpha) -> tuple[np.ndarray, list[str]]:
    """The product layer on a procedural scene with harmless changes; returns uint8 RGB and their names."""
    side = alpha.shape[0]
    background = scene(rng, side)
    changes = []
    if rng.random() < 0.4:
        background = cast_shadow(rng, background, alpha)
        changes.append("shadow")
    image = np.clip(background * (1 - alpha[..., None]) + colour * alpha[..., None], 0, 1)
    if rng.random() < 0.5:
        image = image ** rng.uniform(0.9, 1.1)
        changes.append("gamma")
    if rng.random() < 0.3:  # a resample: down by up to 30% and back
        small = max(16, int(side * rng.uniform(0.7, 0.9)))
        image = cv2.resize(cv2.resize(image, (small, small), interpolation=cv2.INTER_AREA), (side, side))
        changes.append("resample")
    elif rng.random() < 0.3:
        image = np.clip(image * 1.4 - 0.4 * cv2.GaussianBlur(image, (0, 0), 1.0), 0, 1)
        changes.append("sharpen")
    image = image + rng.normal(0, rng.uniform(0.002, 0.015), image.shape).astype(np.float32)
    pixels = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    if rng.random() < 0.25:
        Image.fromarray(pixels).save(buffer, format="WEBP", quality=int(rng.integers(80, 96)))
        changes.append("webp")
    else:
        quality = int(rng.integers(75, 98))
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        changes.append(f"jpeg_q{quality}")
    return np.asarray(Image.open(buffer).convert("RGB")), changes


def drawn_pairs(
    n_pairs: int = 120, seed: int = 0, defect_fraction: float = 0.5, sides: tuple[int, ...] | None = None
) -> list[FamilyPair]:
    """`n_pairs` pairs, GENERATIONS_PER_ORIGINAL per original; image sides drawn from SIDES (or `sides`)."""
    plan = plan_defects(n_pairs, defect_fraction, seed + 11)
    pairs = []
    for first in range(0, n_pairs, GENERATIONS_PER_ORIGINAL):
        index = first // GENERATIONS_PER_ORIGINAL
        rng = np.random.default_rng([seed, 17, index])
        side = int(rng.choice(SIDES if sides is None else sides))
        colour, alpha, recipe = new_product(rng, side)
        shadow = bool(rng.random() < 0.5)
        studio = backdrop(rng, side, alpha, shadow)
        original = np.clip(studio * (1 - alpha[..., None]) + colour * alpha[..., None], 0, 1)
        original = (original * 255 + 0.5).astype(np.uint8)
        for k in range(first, min(first + GENERATIONS_PER_ORIGINAL, n_pairs)):
            grng = np.random.default_rng([seed, 17, index, k])
            kind = plan[k]
            layer = (colour, alpha) if kind == "none" else defect(kind, grng, colour, alpha, recipe)
            generated, changes = generation(grng, *layer)
            pairs.append(
                FamilyPair(
                    family="drawn",
                    original_id=f"d{index:04d}",
                    original=original,
                    generated=generated,
                    mask=alpha > 0.5,
                    defect=kind,
                    studio_shadow=shadow,
                    harmless=changes,
                )
            )
    return pairs
