"""Drawn products of the sample world: specs (category, colours, label fields) and their PIL drawings."""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
from PIL import Image, ImageDraw

from hfpc_reward.sample.defects import ProductLayer
from hfpc_reward.sample.photos import PHOTOS, bundled_photo, label_font, sticker_cutout

CATEGORIES = ("bottle", "can", "jar", "box", "shoe", "sticker", "poster", "pump", "carton")


BRANDS = ("AQUA", "NOVA", "Bloom", "ZEST", "Pure", "OLEA", "Kappa", "VITA", "MOKA", "Lumen", "FJORD", "Sol")


LOGOS = ("circle", "triangle", "diamond", "ring", "none")


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


def random_colour(
    rng: np.random.Generator, saturation=(0.45, 0.9), value=(0.45, 0.9)
) -> tuple[int, int, int]:
    hsv = np.float32([[[rng.uniform(0, 360), rng.uniform(*saturation), rng.uniform(*value)]]])
    return tuple(int(c * 255) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def _label_fields(rng: np.random.Generator) -> dict:
    light = rng.random() < 0.6
    return {
        "paper": random_colour(rng, (0.0, 0.25), (0.85, 1.0))
        if light
        else random_colour(rng, (0.3, 0.9), (0.2, 0.6)),
        "ink": random_colour(rng, (0.5, 1.0), (0.1, 0.5))
        if light
        else random_colour(rng, (0.0, 0.3), (0.85, 1.0)),
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
    body, accent = random_colour(rng), random_colour(rng, value=(0.15, 0.8))
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
    font = label_font(max(8, int(height)))
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
    photo = bundled_photo(spec.photo)
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
    sticker = sticker_cutout().resize((side, side), Image.BILINEAR)
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
