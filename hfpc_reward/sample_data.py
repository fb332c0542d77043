"""Sample product pairs with exact masks and known ground truth (`hfpc sample-data`).

Products (bottles, pump dispensers, cans, jars, boxes, gable-top cartons, shoes, stickers die-cut from
scikit-image's logo, framed photos; flat ones sometimes tilted) are drawn with PIL: labels, text, stripes,
logos, printed photos, cylinder shading and highlights. The photographs that ship inside scikit-image and
scikit-learn (no download) serve as backgrounds, textures and prints. 200 pairs at 512 px take about 10 s
of one core.

An *original* is the product on a studio background (white, light grey or a soft gradient); some
originals are saved as a ready RGBA cut-out (transparent background). A *generation* is the same product
composited at the same place on a new background (photo crop, tinted texture, tabletop scene with a
horizon) with harmless changes (JPEG, noise, slight blur, soft shadow, reflection, feathered edges, small
colour grading) and, for the defective share, one defect from `sample_defects.DEFECT_KINDS` (its
magnitude's meaning and minimum are documented there).

Manifest rows (paths relative to the manifest): origin, generation, mask (white = product of the
original), prompt, category, product_id, label (1 = consistent), consistent, defect, defect_magnitude,
harmless, generation_mask (the product's true mask in the generation).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from dataclasses import dataclass, replace
from functools import cache, lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from hfpc_reward.data import write_jsonl
from hfpc_reward.images import load_rgb
from hfpc_reward.sample_defects import DEFECT_KINDS, ProductLayer, apply_defect, compose_generation

logger = logging.getLogger(__name__)

CATEGORIES = ("bottle", "can", "jar", "box", "shoe", "sticker", "poster", "pump", "carton")
GENERATIONS_PER_ORIGINAL = 4
# bundled photos (skimage.data / sklearn.datasets images) -> what a background prompt calls them
PHOTOS = {
    "china.jpg": "in front of a traditional temple garden",
    "flower.jpg": "among flowers in bloom",
    "coffee.png": "on a cafe table next to a cup of coffee",
    "chelsea.png": "in a cosy living room",
    "hubble_deep_field.jpg": "against a starry night sky",
}
TEXTURES = {"brick.png": "a brick wall", "grass.png": "a lawn", "gravel.png": "a gravel path"}
BRANDS = ("AQUA", "NOVA", "Bloom", "ZEST", "Pure", "OLEA", "Kappa", "VITA", "MOKA", "Lumen", "FJORD", "Sol")
LOGOS = ("circle", "triangle", "diamond", "ring", "none")


def _photo_path(name: str) -> Path:
    """Where a bundled photo lies, found without importing scikit-learn / scikit-image (slow imports)."""
    package, folder = (
        ("sklearn", "datasets/images") if name in ("china.jpg", "flower.jpg") else ("skimage", "data")
    )
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            f"sample data needs the photos bundled with {package}: pip install scikit-learn scikit-image"
        )
    return Path(spec.origin).parent / folder / name


@cache
def _photo(name: str) -> np.ndarray:
    """A bundled photo as float32 RGB (H,W,3) in [0,1]."""
    return np.asarray(load_rgb(_photo_path(name)), dtype=np.float32) / 255.0


@cache
def _texture(name: str) -> np.ndarray:
    """A bundled greyscale texture as float32 (H,W) in [0,1]."""
    return _photo(name)[..., 0].copy()


@cache
def _sticker() -> Image.Image:
    """scikit-image's logo die-cut from its white page (with a white margin) as an RGBA sticker."""
    rgb = np.asarray(load_rgb(_photo_path("logo.png")))
    ink = (rgb.min(axis=2) < 235).astype(np.uint8)
    ink = cv2.morphologyEx(ink, cv2.MORPH_CLOSE, np.ones((15, 15), np.uint8))
    contours, _ = cv2.findContours(ink, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    silhouette = cv2.drawContours(np.zeros_like(ink), contours, -1, 255, -1)
    alpha = cv2.dilate(silhouette, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (17, 17)))
    return Image.fromarray(np.dstack([rgb, alpha]))


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


@dataclass(frozen=True)
class ProductSpec:
    """Everything needed to draw one product; a label change redraws it with other label fields."""

    category: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in canvas pixels
    body: tuple[int, int, int]  # main colour
    accent: tuple[int, int, int]  # cap / lid / sole / frame colour
    paper: tuple[int, int, int] | None  # label colour; None = no label
    ink: tuple[int, int, int]  # text and logo colour
    text: str
    logo: str
    stripes: int  # number of accent stripes on the label
    photo: str  # photo printed on boxes / framed in posters
    crop: tuple[float, float, float]  # where in the photo: u, v, zoom
    tilt: float = 0.0  # rotation in degrees about the box centre (flat products only)


def _colour(rng: np.random.Generator, saturation=(0.45, 0.9), value=(0.45, 0.9)) -> tuple[int, int, int]:
    hsv = np.float32([[[rng.uniform(0, 360), rng.uniform(*saturation), rng.uniform(*value)]]])
    return tuple(int(c * 255) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def _label_fields(rng: np.random.Generator) -> dict:
    light = rng.random() < 0.6
    return {
        "paper": _colour(rng, (0.0, 0.25), (0.85, 1.0)) if light else _colour(rng, (0.3, 0.9), (0.2, 0.6)),
        "ink": _colour(rng, (0.5, 1.0), (0.1, 0.5)) if light else _colour(rng, (0.0, 0.3), (0.85, 1.0)),
        "text": str(rng.choice(BRANDS)),
        "logo": str(rng.choice(LOGOS)),
        "stripes": int(rng.integers(0, 3)),
        "photo": str(rng.choice(list(PHOTOS))),
        "crop": (float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.3, 0.7))),
    }


def random_spec(rng: np.random.Generator, size: int, category: str | None = None) -> ProductSpec:
    category = category or str(rng.choice(CATEGORIES))
    aspect = {
        "bottle": 0.38,
        "can": 0.55,
        "jar": 0.85,
        "box": 0.75,
        "shoe": 1.7,
        "sticker": 1.0,
        "poster": 0.75,
        "pump": 0.42,
        "carton": 0.5,
    }
    height = size * rng.uniform(0.32, 0.8) * (0.6 if category == "shoe" else 1.0)
    width = min(height * aspect[category] * rng.uniform(0.85, 1.15), size * 0.8)
    margin = width / 2 + size * 0.04
    cx = float(np.clip(size * rng.uniform(0.3, 0.7), margin, size - margin))
    bottom = max(size * rng.uniform(0.8, 0.95), height + size * 0.05)
    box = (cx - width / 2, bottom - height, cx + width / 2, bottom)
    flat = category in ("box", "shoe", "sticker", "poster", "carton")
    tilt = float(rng.uniform(-12, 12)) if flat and rng.random() < 0.4 else 0.0
    body, accent = _colour(rng), _colour(rng, value=(0.15, 0.8))
    return ProductSpec(category, box, body, accent, **_label_fields(rng), tilt=tilt)


def relabel(spec: ProductSpec, rng: np.random.Generator) -> ProductSpec:
    """The same product with its label, text, logo or print changed (or the label removed)."""
    fields = _label_fields(rng)
    change = rng.choice(["all", "text", "colours", "remove"] if spec.category != "poster" else ["all"])
    if change == "text":
        fields = {"text": str(rng.choice([b for b in BRANDS if b != spec.text])), "logo": fields["logo"]}
    elif change == "colours":
        fields = {"paper": fields["paper"], "ink": fields["ink"]}
    elif change == "remove" and spec.paper is not None:
        fields = {"paper": None}
    return replace(spec, **fields)


def draw_product(spec: ProductSpec, size: int) -> ProductLayer:
    """Draw a product at 2x and downsample, returning a premultiplied layer on a size x size canvas."""
    scale = 2
    image = Image.new("RGBA", (size * scale, size * scale), (0, 0, 0, 0))
    x0, y0, x1, y1 = (v * scale for v in spec.box)
    _DRAWERS[spec.category](ImageDraw.Draw(image), image, spec, (x0, y0, x1, y1))
    rgba = np.asarray(image, dtype=np.float32) / 255.0
    alpha = rgba[..., 3]
    colour = rgba[..., :3] * alpha[..., None]
    colour = cv2.resize(colour, (size, size), interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(alpha, (size, size), interpolation=cv2.INTER_AREA)
    layer = ProductLayer(colour, alpha)
    if spec.category in ("bottle", "can", "jar", "pump"):
        _cylinder_shading(layer, spec.box)
    if spec.tilt:
        centre = ((spec.box[0] + spec.box[2]) / 2, (spec.box[1] + spec.box[3]) / 2)
        matrix = cv2.getRotationMatrix2D(centre, spec.tilt, 1.0)
        layer = ProductLayer(
            cv2.warpAffine(layer.colour, matrix, (size, size), flags=cv2.INTER_LINEAR),
            cv2.warpAffine(layer.alpha, matrix, (size, size), flags=cv2.INTER_LINEAR),
        )
    return layer


def _cylinder_shading(layer: ProductLayer, box) -> None:
    width = layer.alpha.shape[1]
    u = np.clip((np.arange(width, dtype=np.float32) - box[0]) / max(box[2] - box[0], 1), 0, 1)
    shade = 0.72 + 0.33 * np.clip(np.sin(np.pi * u), 0, 1) ** 0.7
    highlight = 0.55 * np.exp(-(((u - 0.28) / 0.05) ** 2))
    straight = layer.straight_colour() * shade[None, :, None]
    straight = straight + (1 - straight) * highlight[None, :, None]
    layer.colour[:] = np.clip(straight, 0, 1) * layer.alpha[..., None]


def _text(draw, spec, centre, height, fill=None) -> None:
    font = _font(max(8, int(height)))
    draw.text(centre, spec.text, font=font, fill=fill or spec.ink, anchor="mm")


def _logo(draw, spec, centre, radius) -> None:
    cx, cy = centre
    r = radius
    if spec.logo == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=spec.ink)
    elif spec.logo == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=spec.ink, width=max(2, int(r / 3)))
    elif spec.logo == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=spec.ink)
    elif spec.logo == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=spec.ink)


def _label(draw, spec, rect) -> None:
    """A paper label with stripes, logo and brand text inside `rect`."""
    if spec.paper is None:
        return
    x0, y0, x1, y1 = rect
    w, h = x1 - x0, y1 - y0
    draw.rectangle(rect, fill=spec.paper)
    for i in range(spec.stripes):
        y = y0 + h * (0.1 + 0.8 * i)
        draw.rectangle((x0, y, x1, y + h * 0.08), fill=spec.accent)
    _logo(draw, spec, (x0 + w / 2, y0 + h * 0.32), min(w, h) * 0.16)
    _text(draw, spec, (x0 + w / 2, y0 + h * 0.7), min(h * 0.25, w / max(len(spec.text), 1) * 1.6))


def _print_photo(image: Image.Image, spec: ProductSpec, rect) -> None:
    x0, y0, x1, y1 = (int(v) for v in rect)
    photo = _photo(spec.photo)
    ph, pw = photo.shape[:2]
    u, v, zoom = spec.crop
    ch, cw = int(ph * zoom), int(min(pw, ph * zoom * (x1 - x0) / max(y1 - y0, 1)))
    top, left = int((ph - ch) * v), int((pw - cw) * u)
    crop = (photo[top : top + ch, left : left + cw] * 255).astype(np.uint8)
    image.paste(Image.fromarray(crop).resize((max(x1 - x0, 1), max(y1 - y0, 1)), Image.BILINEAR), (x0, y0))


def _draw_bottle(draw, image, spec, box) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    draw.rounded_rectangle(
        (cx - 0.17 * w, y0, cx + 0.17 * w, y0 + 0.12 * h), radius=0.04 * w, fill=spec.accent
    )
    draw.rectangle((cx - 0.2 * w, y0 + 0.11 * h, cx + 0.2 * w, y0 + 0.3 * h), fill=spec.body)
    draw.ellipse((x0, y0 + 0.24 * h, x1, y0 + 0.52 * h), fill=spec.body)
    draw.rounded_rectangle((x0, y0 + 0.38 * h, x1, y1), radius=0.14 * w, fill=spec.body)
    _label(draw, spec, (x0, y0 + 0.5 * h, x1, y0 + 0.82 * h))


def _draw_can(draw, image, spec, box) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    rim = (200, 200, 205)
    draw.rounded_rectangle((x0, y0 + 0.03 * h, x1, y1 - 0.02 * h), radius=0.08 * w, fill=spec.body)
    draw.ellipse((x0 + 0.04 * w, y0, x1 - 0.04 * w, y0 + 0.08 * h), fill=rim)
    draw.rectangle((x0 + 0.04 * w, y1 - 0.05 * h, x1 - 0.04 * w, y1), fill=rim)
    _label(draw, spec, (x0, y0 + 0.3 * h, x1, y0 + 0.75 * h))


def _draw_jar(draw, image, spec, box) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    draw.rounded_rectangle((x0, y0 + 0.15 * h, x1, y1), radius=0.22 * w, fill=spec.body)
    draw.rounded_rectangle(
        (x0 + 0.06 * w, y0, x1 - 0.06 * w, y0 + 0.2 * h), radius=0.03 * w, fill=spec.accent
    )
    for i in range(1, 12):
        x = x0 + 0.06 * w + i * (0.88 * w / 12)
        draw.line(
            (x, y0 + 0.02 * h, x, y0 + 0.18 * h), fill=tuple(int(c * 0.7) for c in spec.accent), width=2
        )
    _label(draw, spec, (x0 + 0.08 * w, y0 + 0.38 * h, x1 - 0.08 * w, y0 + 0.8 * h))


def _draw_box(draw, image, spec, box) -> None:
    x0, y0, x1, y1 = box
    w = x1 - x0
    d = 0.16 * w
    light = tuple(min(255, int(c * 1.25 + 20)) for c in spec.body)
    dark = tuple(int(c * 0.62) for c in spec.body)
    draw.polygon([(x0, y0 + d), (x0 + d, y0), (x1, y0), (x1 - d, y0 + d)], fill=light)
    draw.polygon([(x1 - d, y0 + d), (x1, y0), (x1, y1 - d), (x1 - d, y1)], fill=dark)
    draw.rectangle((x0, y0 + d, x1 - d, y1), fill=spec.body)
    fw, fh = x1 - d - x0, y1 - y0 - d
    if spec.paper is not None:
        _print_photo(image, spec, (x0 + 0.1 * fw, y0 + d + 0.1 * fh, x1 - d - 0.1 * fw, y0 + d + 0.55 * fh))
    _text(
        draw,
        spec,
        (x0 + fw / 2, y0 + d + 0.72 * fh),
        min(0.14 * fh, fw / max(len(spec.text), 1) * 1.5),
        spec.ink,
    )
    _logo(draw, spec, (x0 + fw / 2, y0 + d + 0.88 * fh), 0.05 * fh)


def _draw_shoe(draw, image, spec, box) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    points = [
        (0.03, 0.78),
        (0.04, 0.2),
        (0.2, 0.05),
        (0.36, 0.12),
        (0.5, 0.38),
        (0.75, 0.5),
        (0.95, 0.6),
        (0.99, 0.8),
    ]
    draw.polygon([(x0 + px * w, y0 + py * h) for px, py in points], fill=spec.body)
    draw.rounded_rectangle((x0, y0 + 0.74 * h, x1, y1), radius=0.1 * h, fill=spec.accent)
    for i in range(4):
        x = x0 + (0.38 + 0.07 * i) * w
        draw.line(
            (x, y0 + (0.22 + 0.07 * i) * h, x + 0.06 * w, y0 + (0.3 + 0.07 * i) * h), fill=spec.ink, width=3
        )
    if spec.paper is not None:
        draw.arc(
            (x0 + 0.15 * w, y0 + 0.2 * h, x0 + 0.85 * w, y0 + 0.9 * h),
            200,
            330,
            fill=spec.paper,
            width=int(0.1 * h),
        )
        _text(draw, spec, (x0 + 0.5 * w, y0 + 0.87 * h), 0.16 * h, spec.paper)
    _logo(draw, spec, (x0 + 0.12 * w, y0 + 0.45 * h), 0.08 * h)


def _draw_sticker(draw, image, spec, box) -> None:
    x0, y0, x1, y1 = (int(v) for v in box)
    side = min(x1 - x0, y1 - y0)
    sticker = _sticker().resize((side, side), Image.BILINEAR)
    image.alpha_composite(sticker, (x0, y0))
    if spec.paper is not None:  # a printed ribbon with the brand across the lower part
        draw.rectangle((x0, y0 + 0.62 * side, x0 + side, y0 + 0.84 * side), fill=spec.paper)
        _text(draw, spec, (x0 + side / 2, y0 + 0.73 * side), 0.16 * side)
        _logo(draw, spec, (x0 + side * 0.88, y0 + side * 0.12), side * 0.1)


def _draw_poster(draw, image, spec, box) -> None:
    x0, y0, x1, y1 = box
    w = x1 - x0
    border = 0.07 * w
    draw.rectangle(box, fill=spec.accent)
    draw.rectangle((x0 + border, y0 + border, x1 - border, y1 - border), fill=(245, 245, 240))
    _print_photo(image, spec, (x0 + 1.8 * border, y0 + 1.8 * border, x1 - 1.8 * border, y1 - 1.8 * border))


def _draw_pump(draw, image, spec, box) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    side = 1 if spec.stripes % 2 else -1  # which way the nozzle points
    draw.rectangle((cx - 0.06 * w, y0 + 0.04 * h, cx + 0.06 * w, y0 + 0.3 * h), fill=spec.accent)
    draw.rounded_rectangle((cx - 0.2 * w, y0, cx + 0.2 * w, y0 + 0.1 * h), radius=0.03 * w, fill=spec.accent)
    nozzle = (cx, y0 + 0.02 * h, cx + side * 0.45 * w, y0 + 0.07 * h)
    draw.rectangle(
        (min(nozzle[0], nozzle[2]), nozzle[1], max(nozzle[0], nozzle[2]), nozzle[3]), fill=spec.accent
    )
    draw.rectangle((cx - 0.22 * w, y0 + 0.26 * h, cx + 0.22 * w, y0 + 0.36 * h), fill=spec.accent)
    draw.rounded_rectangle((x0, y0 + 0.34 * h, x1, y1), radius=0.2 * w, fill=spec.body)
    _label(draw, spec, (x0 + 0.05 * w, y0 + 0.5 * h, x1 - 0.05 * w, y0 + 0.85 * h))


def _draw_carton(draw, image, spec, box) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    front = x0 + 0.72 * w  # front face | darker side face
    dark = tuple(int(c * 0.65) for c in spec.body)
    draw.rectangle((x0 + 0.1 * w, y0, front - 0.1 * w, y0 + 0.07 * h), fill=spec.body)  # top fin
    draw.polygon(
        [
            (x0, y0 + 0.25 * h),
            (x0 + 0.1 * w, y0 + 0.06 * h),
            (front - 0.1 * w, y0 + 0.06 * h),
            (front, y0 + 0.25 * h),
        ],
        fill=tuple(min(255, int(c * 1.15)) for c in spec.body),
    )
    draw.polygon(
        [(front, y0 + 0.25 * h), (front - 0.1 * w, y0 + 0.06 * h), (x1, y0 + 0.2 * h), (x1, y0 + 0.3 * h)],
        fill=dark,
    )
    draw.rectangle((x0, y0 + 0.25 * h, front, y1), fill=spec.body)
    draw.polygon([(front, y0 + 0.25 * h), (x1, y0 + 0.3 * h), (x1, y1 - 0.02 * h), (front, y1)], fill=dark)
    _label(draw, spec, (x0 + 0.06 * w, y0 + 0.4 * h, front - 0.06 * w, y0 + 0.85 * h))


_DRAWERS = {
    "bottle": _draw_bottle,
    "can": _draw_can,
    "jar": _draw_jar,
    "box": _draw_box,
    "shoe": _draw_shoe,
    "sticker": _draw_sticker,
    "poster": _draw_poster,
    "pump": _draw_pump,
    "carton": _draw_carton,
}


# --- backgrounds ---------------------------------------------------------------------------------


def studio_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """White, light grey or a soft vertical / radial gradient, float32 (H,W,3)."""
    kind = rng.choice(["white", "grey", "gradient", "radial"])
    if kind == "white":
        return np.ones((size, size, 3), np.float32)
    if kind == "grey":
        return np.full((size, size, 3), rng.uniform(0.9, 0.97), np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    t = yy if kind == "gradient" else np.hypot(xx - 0.5, yy - 0.45) * 1.4
    low = rng.uniform(0.84, 0.93)
    return np.repeat((1.0 - (1.0 - low) * np.clip(t, 0, 1))[..., None], 3, axis=2)


def _photo_crop(rng: np.random.Generator, name: str, width: int, height: int) -> np.ndarray:
    photo = _photo(name) if name in PHOTOS else np.repeat(_texture(name)[..., None], 3, axis=2)
    ph, pw = photo.shape[:2]
    zoom = rng.uniform(0.45, 1.0)
    ch = int(min(ph, pw * height / width) * zoom)
    cw = int(ch * width / height)
    top, left = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = photo[top : top + ch, left : left + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=cv2.INTER_LINEAR)


def _tinted_texture(rng: np.random.Generator, name: str, width: int, height: int) -> np.ndarray:
    grey = _photo_crop(rng, name, width, height)
    tint = np.float32(_colour(rng, (0.1, 0.6), (0.6, 1.0))) / 255.0
    return np.clip(grey * tint * rng.uniform(0.9, 1.3), 0, 1)


def scene_background(
    rng: np.random.Generator, size: int, spec: ProductSpec
) -> tuple[np.ndarray, str, int | None]:
    """A new background: (image, background prompt, horizon row or None)."""
    kind = rng.choice(["photo", "texture", "tabletop", "tabletop"])
    if kind == "photo":
        name = str(rng.choice(list(PHOTOS)))
        image = _photo_crop(rng, name, size, size)
        if rng.random() < 0.6:  # shallow depth of field
            image = cv2.GaussianBlur(image, (0, 0), rng.uniform(1.5, 5))
        return image, PHOTOS[name], None
    if kind == "texture":
        name = str(rng.choice(list(TEXTURES)))
        return _tinted_texture(rng, name, size, size), f"against {TEXTURES[name]}", None
    height = spec.box[3] - spec.box[1]
    horizon = int(np.clip(spec.box[3] - height * rng.uniform(0.12, 0.45), size * 0.2, size - 4))
    wall_name = str(rng.choice(list(PHOTOS) + ["brick.png", "plain"]))
    if wall_name == "plain":
        wall = (
            np.ones((horizon, size, 3), np.float32) * np.float32(_colour(rng, (0.05, 0.4), (0.6, 0.95))) / 255
        )
        wall_text = "a plain painted wall"
    elif wall_name in TEXTURES:
        wall, wall_text = _tinted_texture(rng, wall_name, size, horizon), TEXTURES[wall_name]
    else:
        wall = cv2.GaussianBlur(_photo_crop(rng, wall_name, size, horizon), (0, 0), rng.uniform(2, 6))
        wall_text = "a blurred scene " + PHOTOS[wall_name]
    table_name = str(rng.choice(list(TEXTURES)))
    table = _tinted_texture(rng, table_name, size, size - horizon)
    depth = np.linspace(0.8, 1.05, size - horizon, dtype=np.float32)[:, None, None]
    image = np.concatenate([wall, np.clip(table * depth, 0, 1)], axis=0)
    surface = {"brick.png": "a tiled", "grass.png": "a wooden", "gravel.png": "a stone"}[table_name]
    return image, f"on {surface} table in front of {wall_text}", horizon


# --- writing originals, generations and manifests ------------------------------------------------


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, compress_level=1)


def _write_original(rng, spec: ProductSpec, layer: ProductLayer, out_dir: Path, product_id: str) -> dict:
    """Write the studio original (sometimes as an RGBA cut-out) and its mask; returns manifest fields."""
    size = layer.alpha.shape[0]
    (out_dir / "originals").mkdir(exist_ok=True)
    (out_dir / "masks").mkdir(exist_ok=True)
    origin = f"originals/{product_id}.png"
    if rng.random() < 0.2:
        straight = layer.straight_colour()
        _save_png(np.dstack([_to_uint8(straight), _to_uint8(layer.alpha)]), out_dir / origin)
    else:
        background = studio_background(rng, size)
        if rng.random() < 0.3:  # a soft studio contact shadow
            shadow = cv2.GaussianBlur(layer.alpha, (0, 0), 10 * size / 512)
            background = background * (1 - 0.25 * np.roll(shadow, int(0.01 * size), axis=0))[..., None]
        _save_png(_to_uint8(background * (1 - layer.alpha[..., None]) + layer.colour), out_dir / origin)
    mask = f"masks/{product_id}.png"
    _save_png(layer.mask.astype(np.uint8) * 255, out_dir / mask)
    return {"origin": origin, "mask": mask, "category": spec.category, "product_id": product_id}


def _write_generation(rng, spec, layer, defect: str, out_dir: Path, name: str) -> dict:
    """Write one generation of a product with harmless changes and an optional defect."""
    size = layer.alpha.shape[0]
    textures = [_texture(t) for t in TEXTURES]
    magnitude = 0.0
    if defect != "none":
        layer, magnitude = apply_defect(
            defect, layer, rng, lambda r: draw_product(relabel(spec, r), size), textures
        )
    background, prompt, horizon = scene_background(rng, size, spec)
    image, harmless = compose_generation(layer, background, rng, horizon)
    (out_dir / "generations").mkdir(exist_ok=True)
    (out_dir / "generation_masks").mkdir(exist_ok=True)
    pixels = Image.fromarray(_to_uint8(image))
    if rng.random() < 0.6:
        quality = int(rng.integers(70, 96))
        generation = f"generations/{name}.jpg"
        pixels.save(out_dir / generation, quality=quality)
        harmless.append(f"jpeg_q{quality}")
    else:
        generation = f"generations/{name}.png"
        pixels.save(out_dir / generation, compress_level=1)
    generation_mask = f"generation_masks/{name}.png"
    _save_png(layer.mask.astype(np.uint8) * 255, out_dir / generation_mask)
    return {
        "generation": generation,
        "prompt": f"a {spec.category} {prompt}",
        "label": int(defect == "none"),
        "consistent": defect == "none",
        "defect": defect,
        "defect_magnitude": round(float(magnitude), 4),
        "harmless": harmless,
        "generation_mask": generation_mask,
    }


def _defect_plan(n_pairs: int, defect_fraction: float, seed: int) -> list[str]:
    """Exactly round(n * fraction) defects, kinds balanced, at random positions."""
    if not 0.0 <= defect_fraction <= 1.0:
        raise ValueError(f"defect_fraction must be in [0, 1], got {defect_fraction}")
    rng = np.random.default_rng([seed, 7919])
    n_defects = round(n_pairs * defect_fraction)
    kinds = [DEFECT_KINDS[i % len(DEFECT_KINDS)] for i in range(n_defects)]
    plan = list(rng.permutation(kinds + ["none"] * (n_pairs - n_defects)))
    return [str(kind) for kind in plan]


def generate_pairs(
    out_dir: str | Path,
    n_pairs: int = 200,
    seed: int = 0,
    size: int = 512,
    defect_fraction: float = 0.5,
    generations_per_original: int = GENERATIONS_PER_ORIGINAL,
) -> Path:
    """Write `n_pairs` (original, generation) pairs with ground truth; returns out_dir/manifest.jsonl.

    Each original gets `generations_per_original` generations (the last one fewer when n_pairs is not a
    multiple). Same seed, same files.
    """
    if n_pairs < 1 or size < 64 or generations_per_original < 1:
        raise ValueError(
            f"need n_pairs >= 1, size >= 64 and generations_per_original >= 1, got n_pairs={n_pairs}, "
            f"size={size}, generations_per_original={generations_per_original}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = _defect_plan(n_pairs, defect_fraction, seed)
    manifest = out / "manifest.jsonl"
    rows = []
    with tqdm(total=n_pairs, desc="sample pairs", unit="pair") as progress:
        for index in range(0, n_pairs, generations_per_original):
            product = index // generations_per_original
            product_id = f"p{product:04d}"
            rng = np.random.default_rng([seed, product])
            spec = random_spec(rng, size, CATEGORIES[product % len(CATEGORIES)])
            layer = draw_product(spec, size)
            original = _write_original(rng, spec, layer, out, product_id)
            for k in range(index, min(index + generations_per_original, n_pairs)):
                gen_rng = np.random.default_rng([seed, product, k + 1])
                row = dict(
                    original, **_write_generation(gen_rng, spec, layer, plan[k], out, f"{product_id}_g{k}")
                )
                rows.append({key: row[key] for key in _ROW_ORDER})
                progress.update(1)
    write_jsonl(manifest, rows)
    logger.info(
        "wrote %d pairs (%d defective) to %s", len(rows), sum(not r["consistent"] for r in rows), manifest
    )
    return manifest


_ROW_ORDER = (
    "origin",
    "generation",
    "mask",
    "prompt",
    "category",
    "product_id",
    "label",
    "consistent",
    "defect",
    "defect_magnitude",
    "harmless",
    "generation_mask",
)


def generate_products(out_dir: str | Path, n_products: int = 16, seed: int = 0, size: int = 512) -> Path:
    """Write `n_products` studio originals with masks and background prompts; returns out_dir/products.jsonl."""
    if n_products < 1 or size < 64:
        raise ValueError(f"need n_products >= 1 and size >= 64, got n_products={n_products}, size={size}")
    out = Path(out_dir) / "products"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for product in tqdm(range(n_products), desc="sample products", unit="product"):
        rng = np.random.default_rng([seed, 104729, product])
        spec = random_spec(rng, size, CATEGORIES[product % len(CATEGORIES)])
        row = _write_original(rng, spec, draw_product(spec, size), out, f"s{product:04d}")
        place = str(rng.choice(list(PHOTOS.values()) + [f"against {t}" for t in TEXTURES.values()]))
        row["prompt"] = f"a {spec.category} {place}, professional product photography"
        rows.append(
            {key: f"products/{value}" if key in ("origin", "mask") else value for key, value in row.items()}
        )
    manifest = Path(out_dir) / "products.jsonl"
    write_jsonl(manifest, rows)
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output folder (manifest.jsonl, products.jsonl and images)")
    parser.add_argument(
        "--pairs", type=int, default=200, help="number of (original, generation) pairs; 0 = none"
    )
    parser.add_argument(
        "--products", type=int, default=16, help="number of studio products for fine-tuning; 0 = none"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--defect-fraction", type=float, default=0.5, help="share of defective generations")


def run(args: argparse.Namespace) -> int:
    if args.pairs < 0 or args.products < 0 or args.pairs + args.products == 0:
        logger.error("nothing to write: give --pairs and/or --products a positive count")
        return 2
    if args.pairs:
        path = generate_pairs(args.out, args.pairs, args.seed, args.size, args.defect_fraction)
        logger.info("pairs manifest: %s", path)
    if args.products:
        path = generate_products(args.out, args.products, args.seed, args.size)
        logger.info("products manifest: %s", path)
    return 0
