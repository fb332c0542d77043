"""Product defects for the sample-data generator, applied to a premultiplied RGBA product layer.

Every defect returns the changed layer and its measured magnitude. Meaning of `defect_magnitude` per kind,
and the minimum at which the change counts as a defect (`MIN_DEFECT_MAGNITUDE`; below it a reviewer would
accept the product, so the generator never emits a smaller one):

- expanded: object expansion E = (area(gen OR orig) - area(orig)) / area(orig): extra stuff (bulge, taller
  lid, stand, handle, blob) grown onto the silhouette. Minimum 0.05.
- truncated: lost area / original area: part of the product cut away (background shows through). Min 0.05.
- recoloured: hue rotation of the product in degrees (0-180). Minimum 20.
- label_changed: fraction of product pixels whose colour changed by more than 0.12 (max channel) after the
  label / text / logo was redrawn or removed. Minimum 0.02 (a changed brand word on a label).
- texture_changed: same measure, after a surface pattern (stripes, dots, checks, photo texture) was
  printed over the product. Minimum 0.10.
- rescaled: |s - 1| for the scale factor s about the product's foot point. Minimum 0.08.
- shifted: displacement / sqrt(product area). Minimum 0.06.
- melted: fraction of the product area inside the band where the outline dissolves and drips into the
  background. Minimum 0.06.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import cv2
import numpy as np

DEFECT_KINDS = (
    "expanded",
    "truncated",
    "recoloured",
    "label_changed",
    "texture_changed",
    "rescaled",
    "shifted",
    "melted",
)
MIN_DEFECT_MAGNITUDE = {
    "expanded": 0.05,
    "truncated": 0.05,
    "recoloured": 20.0,
    "label_changed": 0.02,
    "texture_changed": 0.10,
    "rescaled": 0.08,
    "shifted": 0.06,
    "melted": 0.06,
}
# upper end of the magnitudes drawn per kind (label changes are measured, not drawn)
MAX_DEFECT_MAGNITUDE = {
    "expanded": 0.6,
    "truncated": 0.45,
    "recoloured": 180.0,
    "texture_changed": 1.0,
    "rescaled": 0.4,
    "shifted": 0.45,
    "melted": 0.35,
}
COLOUR_CHANGE = 0.12  # a pixel counts as changed when a channel moved by more than this (0-1 scale)


@dataclass
class ProductLayer:
    """A product on a transparent canvas: premultiplied colour (H,W,3) and alpha (H,W), float32 in [0,1]."""

    colour: np.ndarray
    alpha: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.alpha > 0.5

    def straight_colour(self) -> np.ndarray:
        return self.colour / np.maximum(self.alpha, 1e-4)[..., None]

    def over(self, top: ProductLayer) -> ProductLayer:
        """`top` composited over this layer (both premultiplied)."""
        keep = 1.0 - top.alpha
        return ProductLayer(top.colour + self.colour * keep[..., None], top.alpha + self.alpha * keep)


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def changed_fraction(before: ProductLayer, after: ProductLayer) -> float:
    """Fraction of the original product's pixels whose colour changed visibly."""
    inside = before.mask
    diff = np.abs(after.colour - before.colour).max(axis=-1)
    return float((diff[inside] > COLOUR_CHANGE).mean()) if inside.any() else 0.0


def apply_defect(
    kind: str,
    layer: ProductLayer,
    rng: np.random.Generator,
    redraw: Callable[[np.random.Generator], ProductLayer],
    textures: list[np.ndarray],
) -> tuple[ProductLayer, float]:
    """Apply one defect of `kind` with a random magnitude; returns (new layer, measured magnitude).

    `redraw(rng)` draws the same product with another label; `textures` are greyscale photos in [0,1].
    """
    minimum = MIN_DEFECT_MAGNITUDE[kind]
    for _ in range(6):  # a drawn change can measure below the minimum (e.g. a tiny label): try again
        if kind == "label_changed":
            changed = redraw(rng)
            magnitude = changed_fraction(layer, changed)
        elif kind == "texture_changed":
            changed = _retexture(layer, rng, textures)
            magnitude = changed_fraction(layer, changed)
        else:
            target = log_uniform(rng, minimum * 1.05, MAX_DEFECT_MAGNITUDE[kind])
            changed, magnitude = _GEOMETRIC[kind](layer, target, rng)
        if magnitude >= minimum:
            return changed, magnitude
    raise RuntimeError(f"could not make a {kind} defect of at least {minimum}")


def _area(layer: ProductLayer) -> float:
    return float(layer.mask.sum())


def _expand(layer: ProductLayer, target: float, rng: np.random.Generator) -> tuple[ProductLayer, float]:
    mask = layer.mask
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    width, height = x1 - x0 + 1, y1 - y0 + 1
    area = _area(layer)
    colour = layer.straight_colour()[ys, xs].reshape(-1, 3)
    tone = colour[rng.integers(len(colour))] if rng.random() < 0.6 else rng.uniform(0.1, 0.9, 3)
    shape = rng.choice(["bulge", "lid", "stand", "handle", "blob"])
    # where the extra part attaches and how wide it is: drawn once, only its size is fitted below
    cx = int((x0 + x1) // 2)
    part_width = int(width * rng.uniform(0.5, 1.2))
    row = int(rng.uniform(y0 + 0.2 * height, y1 - 0.2 * height))
    cols = np.nonzero(mask[row])[0]
    on_right = rng.random() < 0.5
    edge = int(cols.max() if on_right else cols.min())
    angle = float(rng.uniform(-30, 30))
    elongation = 1.3 if shape == "bulge" else 0.8
    canvas = np.zeros(mask.shape, np.uint8)
    scale = 1.0
    for _attempt in range(5):  # grow the extra part until the measured expansion is near the target
        canvas[:] = 0
        extra_area = target * area * scale
        h = max(2, int(extra_area / max(part_width, 1)))
        if shape == "lid":
            cv2.rectangle(canvas, (cx - part_width // 2, y0 - h), (cx + part_width // 2, y0 + 2), 255, -1)
        elif shape == "stand":
            top, bottom = (
                (cx - part_width // 3, cx + part_width // 3),
                (cx - part_width // 2, cx + part_width // 2),
            )
            pts = np.array(
                [[top[0], y1 - 2], [top[1], y1 - 2], [bottom[1], y1 + h], [bottom[0], y1 + h]], np.int32
            )
            cv2.fillPoly(canvas, [pts], 255)
        elif shape == "handle":
            ry = int(height * 0.25)
            rx = max(4, int(extra_area / (np.pi * ry * 0.5)))
            side = int(x1 if on_right else x0)
            cv2.ellipse(canvas, (side, int((y0 + y1) // 2)), (rx, ry), 0, 0, 360, 255, max(3, int(rx * 0.45)))
        else:  # bulge / blob: an ellipse centred on a boundary point on the side
            radius = np.sqrt(2.2 * extra_area / np.pi)
            axes = (int(radius * elongation), int(radius / elongation))
            cv2.ellipse(canvas, (edge, row), axes, angle, 0, 360, 255, -1)
        measured = ((canvas > 0) & ~mask).sum() / area
        if abs(measured - target) < 0.25 * target:
            break
        scale *= target / max(measured, 1e-3)
    soft = cv2.GaussianBlur(canvas.astype(np.float32) / 255.0, (0, 0), 0.8)
    shade = np.linspace(1.05, 0.8, mask.shape[1], dtype=np.float32)[None, :, None]
    added = ProductLayer(np.clip(tone[None, None, :] * shade, 0, 1) * soft[..., None], soft)
    grown = layer.over(added) if shape in ("stand", "handle") else added.over(layer)
    union = grown.mask | mask
    return grown, float((union.sum() - area) / area)


def _truncate(layer: ProductLayer, target: float, rng: np.random.Generator) -> tuple[ProductLayer, float]:
    mask = layer.mask
    ys, xs = np.nonzero(mask)
    angle = rng.choice([-np.pi / 2, 0.0, np.pi, np.pi / 2]) + rng.uniform(-0.5, 0.5)
    direction = np.array([np.cos(angle), np.sin(angle)])
    projection = xs * direction[0] + ys * direction[1]
    cut = np.quantile(projection, 1.0 - target)  # everything beyond `cut` along `direction` is lost
    yy, xx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]].astype(np.float32)
    distance = xx * direction[0] + yy * direction[1] - cut
    if rng.random() < 0.5:  # a ragged bite instead of a straight cut
        noise = cv2.GaussianBlur(rng.normal(0, 1, mask.shape).astype(np.float32), (0, 0), 6)
        distance = distance + noise / (noise.std() + 1e-6) * 5.0
    keep = np.clip(0.5 - distance, 0.0, 1.0)
    cut_layer = ProductLayer(layer.colour * keep[..., None], layer.alpha * keep)
    return cut_layer, float(1.0 - cut_layer.mask.sum() / _area(layer))


def _recolour(layer: ProductLayer, target: float, rng: np.random.Generator) -> tuple[ProductLayer, float]:
    straight = np.clip(layer.straight_colour(), 0, 1)
    hsv = cv2.cvtColor(straight, cv2.COLOR_RGB2HSV)  # float input: hue in degrees 0-360
    hsv[..., 0] = (hsv[..., 0] + target * rng.choice([-1, 1])) % 360.0
    hsv[..., 1] = np.maximum(hsv[..., 1], 0.35)  # a grey product gets a tint, so the hue shift shows
    shifted = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    keep_grey = hsv[..., 2] < 0.12  # near-black stays black
    shifted[keep_grey] = straight[keep_grey]
    return ProductLayer(shifted * layer.alpha[..., None], layer.alpha.copy()), float(target)


def _warp(layer: ProductLayer, matrix: np.ndarray) -> ProductLayer:
    height, width = layer.alpha.shape
    colour = cv2.warpAffine(layer.colour, matrix, (width, height), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(layer.alpha, matrix, (width, height), flags=cv2.INTER_LINEAR)
    return ProductLayer(colour, alpha)


def _rescale(layer: ProductLayer, target: float, rng: np.random.Generator) -> tuple[ProductLayer, float]:
    ys, xs = np.nonzero(layer.mask)
    factor = 1.0 + target if rng.random() < 0.5 else 1.0 - min(target, 0.35)
    anchor = ((xs.min() + xs.max()) / 2.0, ys.max() if rng.random() < 0.7 else ys.mean())
    matrix = np.array(
        [[factor, 0, anchor[0] * (1 - factor)], [0, factor, anchor[1] * (1 - factor)]], np.float32
    )
    return _warp(layer, matrix), float(abs(factor - 1.0))


def _shift(layer: ProductLayer, target: float, rng: np.random.Generator) -> tuple[ProductLayer, float]:
    ys, xs = np.nonzero(layer.mask)
    height, width = layer.alpha.shape
    distance = target * np.sqrt(_area(layer))
    for _ in range(20):  # pick a direction that keeps the product inside the frame
        angle = rng.uniform(0, 2 * np.pi)
        dx, dy = distance * np.cos(angle), distance * np.sin(angle)
        if (
            xs.min() + dx >= 2
            and xs.max() + dx < width - 2
            and ys.min() + dy >= 2
            and ys.max() + dy < height - 2
        ):
            break
    else:
        dx, dy = 0.0, 0.0
    matrix = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
    return _warp(layer, matrix), float(np.hypot(dx, dy) / np.sqrt(_area(layer)))


def _melt(layer: ProductLayer, target: float, rng: np.random.Generator) -> tuple[ProductLayer, float]:
    mask = layer.mask
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    depths = inside[mask]
    band = max(2.0, float(np.quantile(depths, target)))  # pixels closer than `band` to the edge melt
    noise = cv2.GaussianBlur(rng.normal(0, 1, mask.shape).astype(np.float32), (0, 0), 4)
    noise /= noise.std() + 1e-6
    fade = np.clip((inside - band * (0.5 + 0.35 * noise)) / band, 0.0, 1.0)
    fade = np.where(mask, np.maximum(fade, 0.15 * (inside > band)), 0.0).astype(np.float32)
    kernel = max(3, int(band * 1.5)) | 1
    drip = cv2.blur(layer.colour, (3, kernel)), cv2.blur(layer.alpha, (3, kernel))  # smeared downwards
    shift = np.float32([[1, 0, 0], [0, 1, band * 0.6]])
    drip_colour = cv2.warpAffine(drip[0], shift, mask.shape[::-1]) * 0.6
    drip_alpha = cv2.warpAffine(drip[1], shift, mask.shape[::-1]) * 0.6
    melted = ProductLayer(drip_colour * (1 - fade[..., None]), drip_alpha * (1 - fade))
    melted = melted.over(ProductLayer(layer.colour * fade[..., None], layer.alpha * fade))
    band_area = float((mask & (inside <= band)).sum())
    return melted, band_area / max(_area(layer), 1.0)


def _retexture(layer: ProductLayer, rng: np.random.Generator, textures: list[np.ndarray]) -> ProductLayer:
    height, width = layer.alpha.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    pattern_kind = rng.choice(["stripes", "dots", "checks", "photo"])
    period = rng.uniform(8, 30)
    if pattern_kind == "stripes":
        angle = rng.uniform(0, np.pi)
        pattern = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0).astype(
            np.float32
        )
    elif pattern_kind == "dots":
        pattern = (np.mod(xx, period) - period / 2) ** 2 + (np.mod(yy, period) - period / 2) ** 2 < (
            period / 3.2
        ) ** 2
        pattern = pattern.astype(np.float32)
    elif pattern_kind == "checks":
        pattern = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
    else:
        texture = textures[rng.integers(len(textures))]
        pattern = cv2.resize(texture, (width, height), interpolation=cv2.INTER_LINEAR)
        pattern = (pattern - pattern.min()) / max(float(np.ptp(pattern)), 1e-6)
    ink = rng.uniform(0.0, 1.0, 3).astype(np.float32)
    strength = rng.uniform(0.5, 0.9)
    coverage = np.ones_like(layer.alpha)
    if rng.random() < 0.4:  # only a region of the surface changes
        ys = np.nonzero(layer.mask)[0]
        cut = rng.uniform(np.quantile(ys, 0.2), np.quantile(ys, 0.6))
        coverage = (yy > cut).astype(np.float32)
    weight = (pattern * strength * coverage)[..., None]
    straight = layer.straight_colour()
    changed = straight * (1 - weight) + ink[None, None, :] * weight
    return replace(layer, colour=np.clip(changed, 0, 1) * layer.alpha[..., None])


_GEOMETRIC = {
    "expanded": _expand,
    "truncated": _truncate,
    "recoloured": _recolour,
    "rescaled": _rescale,
    "shifted": _shift,
    "melted": _melt,
}


# --- harmless changes: what a good generator legitimately does around an unchanged product ----------


def compose_generation(
    layer: ProductLayer, background: np.ndarray, rng: np.random.Generator, horizon: int | None
) -> tuple[np.ndarray, list[str]]:
    """The product layer over `background` with random harmless changes; returns (RGB float, their names)."""
    size = layer.alpha.shape[0]
    harmless: list[str] = []
    if rng.random() < 0.5:
        sigma = rng.uniform(0.6, 1.4) * size / 512
        layer = ProductLayer(
            cv2.GaussianBlur(layer.colour, (0, 0), sigma), cv2.GaussianBlur(layer.alpha, (0, 0), sigma)
        )
        harmless.append("feathered_edges")
    image = background.copy()
    if rng.random() < (0.9 if horizon is not None else 0.5):
        image = _drop_shadow(image, layer, rng)
        harmless.append("soft_shadow")
    if rng.random() < (0.6 if horizon is not None else 0.15):
        image = _reflection(image, layer, rng)
        harmless.append("reflection")
    image = image * (1 - layer.alpha[..., None]) + layer.colour
    if rng.random() < 0.5:
        gain = rng.uniform(0.94, 1.06) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
        image = np.clip(image * gain, 0, 1) ** rng.uniform(0.94, 1.06)
        harmless.append("colour_grading")
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), rng.uniform(0.4, 0.9))
        harmless.append("blur")
    if rng.random() < 0.4:
        image = image + rng.normal(0, rng.uniform(1.0, 4.0) / 255, image.shape).astype(np.float32)
        harmless.append("noise")
    return np.clip(image, 0, 1).astype(np.float32), harmless


def _drop_shadow(image: np.ndarray, layer: ProductLayer, rng: np.random.Generator) -> np.ndarray:
    size = layer.alpha.shape[0]
    dx, dy = rng.uniform(-0.03, 0.03) * size, rng.uniform(0.0, 0.02) * size
    shifted = cv2.warpAffine(layer.alpha, np.float32([[1, 0, dx], [0, 1, dy]]), (size, size))
    shadow = cv2.GaussianBlur(shifted, (0, 0), rng.uniform(4, 12) * size / 512)
    return image * (1 - rng.uniform(0.2, 0.5) * shadow)[..., None]


def _reflection(image: np.ndarray, layer: ProductLayer, rng: np.random.Generator) -> np.ndarray:
    ys = np.nonzero(layer.mask.any(axis=1))[0]
    top, bottom = int(ys.min()), int(ys.max())
    size = layer.alpha.shape[0]
    span = min(bottom - top, size - 1 - bottom)
    if span < 4:
        return image
    rows = slice(bottom + 1, bottom + 1 + span)
    mirrored = slice(bottom, bottom - span, -1)
    fade = (np.linspace(1.0, 0.0, span, dtype=np.float32) ** 1.5 * rng.uniform(0.12, 0.3))[:, None]
    alpha = layer.alpha[mirrored] * fade
    image = image.copy()
    image[rows] = image[rows] * (1 - alpha[..., None]) + layer.colour[mirrored] * fade[..., None]
    return image
