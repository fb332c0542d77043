"""Held-out product pairs for measuring the consistency checker on data it was never tuned on.

Built independently of `hfpc_reward.sample` on purpose: other products (mugs, phones, bags, lamps,
tubes, watches, a horse figurine cut from scikit-image's silhouette), drawn with OpenCV instead of PIL,
other photos (astronaut, rocket, motorcycles; moon / coins / camera as textures), other harmless-change
parameters and other defect magnitudes (every defect is well above what a reviewer would let pass).

    python benchmarks/heldout_consistency_set.py OUT --pairs 300 --seed 123

writes OUT/manifest.jsonl with the fields of our manifest: origin, generation, mask, prompt, category,
product_id, label, consistent, defect, defect_magnitude, harmless, generation_mask. Magnitudes mean what
`hfpc_reward/sample_defects.py` documents (expansion ratio, lost-area ratio, hue degrees, changed-pixel
fraction, |scale - 1|, shift / sqrt(area), melted-band fraction); they are measured here independently.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from functools import cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from hfpc_reward.data.manifest import read_jsonl, write_jsonl
from hfpc_reward.images import load_rgb
from hfpc_reward.sample.defects import DEFECT_KINDS as KINDS

RANGES = {  # magnitudes drawn per kind: clearly visible, never borderline
    "expanded": (0.12, 0.6),
    "truncated": (0.12, 0.45),
    "recoloured": (45.0, 180.0),
    "rescaled": (0.16, 0.4),
    "shifted": (0.14, 0.45),
    "melted": (0.12, 0.35),
}
MIN_CHANGED_FRACTION = 0.06  # label / texture changes smaller than this are redrawn
PRODUCTS = ("mug", "phone", "bag", "lamp", "tube", "watch", "figurine")
GENERATIONS_PER_ORIGINAL = 3
SCENES = {
    "astronaut.png": "in a space museum",
    "rocket.jpg": "at a rocket launch site",
    "motorcycle_left.png": "in a motorcycle garage",
    "motorcycle_right.png": "in a workshop",
}
SURFACES = {"moon.png": "grey stone", "coins.png": "hammered metal", "wood": "oak wood"}
WORDS = ("ORBIT", "kilo", "TERRA", "Mira", "QUILL", "ember", "RANGO", "Vela")


@cache
def photo(name: str) -> np.ndarray:
    folder = Path(importlib.util.find_spec("skimage").origin).parent / "data"  # no slow skimage import
    return np.asarray(load_rgb(folder / name), dtype=np.float32) / 255.0


@cache
def horse_alpha() -> np.ndarray:
    """The horse of skimage.data: a black silhouette on white, cut out as a float alpha."""
    grey = photo("horse.png")[..., 0]
    return cv2.GaussianBlur((grey < 0.5).astype(np.float32), (3, 3), 0)


def hsv_colour(rng, s=(0.5, 0.95), v=(0.45, 0.9)) -> np.ndarray:
    hsv = np.float32([[[rng.uniform(0, 360), rng.uniform(*s), rng.uniform(*v)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]


class Canvas:
    """Premultiplied colour + alpha, painted with anti-aliased OpenCV shapes at 2x."""

    def __init__(self, size: int):
        self.colour = np.zeros((size, size, 3), np.float32)
        self.alpha = np.zeros((size, size), np.float32)

    def paint(self, draw, colour, shade: np.ndarray | None = None) -> None:
        stencil = np.zeros(self.alpha.shape, np.uint8)
        draw(stencil)
        m = stencil.astype(np.float32) / 255.0
        fill = np.asarray(colour, np.float32)[None, None, :] * (1.0 if shade is None else shade[..., None])
        self.colour = self.colour * (1 - m[..., None]) + np.clip(fill, 0, 1) * m[..., None]
        self.alpha = self.alpha * (1 - m) + m

    def text(self, word, origin, scale, colour, thickness) -> None:
        self.paint(
            lambda s: cv2.putText(
                s, word, origin, cv2.FONT_HERSHEY_DUPLEX, scale, 255, thickness, cv2.LINE_AA
            ),
            colour,
        )

    def picture(self, image: np.ndarray, rect) -> None:
        x0, y0, x1, y1 = (int(v) for v in rect)
        self.colour[y0:y1, x0:x1] = cv2.resize(image, (x1 - x0, y1 - y0)) * self.alpha[y0:y1, x0:x1, None]

    def reduced(self) -> tuple[np.ndarray, np.ndarray]:
        half = (self.alpha.shape[1] // 2, self.alpha.shape[0] // 2)
        return cv2.resize(self.colour, half, interpolation=cv2.INTER_AREA), cv2.resize(
            self.alpha, half, interpolation=cv2.INTER_AREA
        )


def new_product(rng, size: int, kind: str) -> dict:
    tall = {"mug": 0.8, "phone": 0.5, "bag": 0.95, "lamp": 0.55, "tube": 0.3, "watch": 0.45, "figurine": 1.2}[
        kind
    ]
    h = size * rng.uniform(0.42, 0.68) / max(1.0, tall * 0.9)
    w = min(h * tall, size * 0.75)
    cx, bottom = size * rng.uniform(0.35, 0.65), size * rng.uniform(0.82, 0.95)
    cx = float(np.clip(cx, w / 2 + size * 0.03, size * 0.97 - w / 2))
    return dict(
        kind=kind,
        box=(cx - w / 2, max(bottom - h, size * 0.04), cx + w / 2, bottom),
        main=hsv_colour(rng),
        second=hsv_colour(rng, (0.0, 0.6), (0.1, 0.95)),
        **new_print(rng),
    )


def new_print(rng) -> dict:
    return {
        "word": str(rng.choice(WORDS)),
        "ink": hsv_colour(rng, (0.0, 1.0), (0.0, 1.0)),
        "badge": hsv_colour(rng, (0.6, 1.0), (0.7, 1.0)),
        "scene": str(rng.choice(list(SCENES))),
        "spot": (float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.1, 0.9))),
    }


def render(p: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw a product spec at 2x; returns (premultiplied colour, alpha) at `size`."""
    c = Canvas(size * 2)
    x0, y0, x1, y1 = (2 * v for v in p["box"])
    w, h = x1 - x0, y1 - y0
    X = lambda u: int(x0 + u * w)
    Y = lambda v: int(y0 + v * h)
    ramp = np.tile(np.linspace(1.15, 0.7, size * 2, dtype=np.float32), (size * 2, 1))
    kind = p["kind"]
    if kind == "mug":
        c.paint(
            lambda s: cv2.ellipse(
                s,
                (X(0.8), Y(0.5)),
                (int(0.2 * w), int(0.22 * h)),
                0,
                0,
                360,
                255,
                max(4, int(0.07 * w)),
                cv2.LINE_AA,
            ),
            p["main"],
        )
        c.paint(lambda s: cv2.rectangle(s, (X(0), Y(0.05)), (X(0.8), Y(0.95)), 255, -1), p["main"], ramp)
        c.paint(
            lambda s: cv2.ellipse(
                s, (X(0.4), Y(0.95)), (int(0.4 * w), int(0.05 * h)), 0, 0, 180, 255, -1, cv2.LINE_AA
            ),
            p["main"],
            ramp,
        )
        c.paint(
            lambda s: cv2.ellipse(
                s, (X(0.4), Y(0.05)), (int(0.4 * w), int(0.05 * h)), 0, 0, 360, 255, -1, cv2.LINE_AA
            ),
            p["main"] * 0.55,
        )
        c.paint(lambda s: cv2.circle(s, (X(0.4), Y(0.42)), int(0.14 * w), 255, -1, cv2.LINE_AA), p["badge"])
        c.text(p["word"], (X(0.08), Y(0.78)), w / 260, p["ink"], max(2, int(w / 90)))
    elif kind == "phone":
        r = int(0.12 * w)
        rounded = lambda s, a, b, cc, d, v=255: (
            cv2.rectangle(s, (a + r, b), (cc - r, d), v, -1),
            cv2.rectangle(s, (a, b + r), (cc, d - r), v, -1),
            [
                cv2.circle(s, pt, r, v, -1, cv2.LINE_AA)
                for pt in ((a + r, b + r), (cc - r, b + r), (a + r, d - r), (cc - r, d - r))
            ],
        )
        c.paint(lambda s: rounded(s, X(0), Y(0), X(1), Y(1)), p["second"] * 0.4)
        c.picture(photo(p["scene"]), (X(0.07), Y(0.07), X(0.93), Y(0.93)))
        c.paint(
            lambda s: cv2.circle(s, (X(0.5), Y(0.035)), max(3, int(0.025 * w)), 255, -1, cv2.LINE_AA),
            (0.05, 0.05, 0.05),
        )
        c.text(p["word"], (X(0.12), Y(0.88)), w / 240, p["ink"], max(2, int(w / 80)))
    elif kind == "bag":
        c.paint(
            lambda s: cv2.ellipse(
                s,
                (X(0.5), Y(0.32)),
                (int(0.3 * w), int(0.3 * h)),
                0,
                180,
                360,
                255,
                max(5, int(0.06 * w)),
                cv2.LINE_AA,
            ),
            p["second"],
        )
        body = np.array([[X(0.1), Y(0.32)], [X(0.9), Y(0.32)], [X(1.0), Y(1.0)], [X(0.0), Y(1.0)]], np.int32)
        c.paint(lambda s: cv2.fillPoly(s, [body], 255, cv2.LINE_AA), p["main"], ramp)
        flap = np.array([[X(0.1), Y(0.32)], [X(0.9), Y(0.32)], [X(0.5), Y(0.6)]], np.int32)
        c.paint(lambda s: cv2.fillPoly(s, [flap], 255, cv2.LINE_AA), p["main"] * 0.7)
        c.paint(lambda s: cv2.rectangle(s, (X(0.44), Y(0.55)), (X(0.56), Y(0.64)), 255, -1), p["badge"])
        c.paint(lambda s: cv2.rectangle(s, (X(0.04), Y(0.68)), (X(0.96), Y(0.76)), 255, -1), p["badge"])
        c.text(p["word"], (X(0.2), Y(0.86)), w / 280, p["ink"], max(2, int(w / 100)))
    elif kind == "lamp":
        c.paint(
            lambda s: cv2.ellipse(
                s, (X(0.5), Y(0.93)), (int(0.3 * w), int(0.07 * h)), 0, 0, 360, 255, -1, cv2.LINE_AA
            ),
            p["second"],
        )
        c.paint(lambda s: cv2.rectangle(s, (X(0.47), Y(0.4)), (X(0.53), Y(0.93)), 255, -1), p["second"] * 0.8)
        shade = np.array(
            [[X(0.25), Y(0.0)], [X(0.75), Y(0.0)], [X(1.0), Y(0.45)], [X(0.0), Y(0.45)]], np.int32
        )
        c.paint(lambda s: cv2.fillPoly(s, [shade], 255, cv2.LINE_AA), p["main"], ramp)
        c.paint(
            lambda s: cv2.line(
                s, (X(0.05), Y(0.36)), (X(0.95), Y(0.36)), 255, max(3, int(0.04 * h)), cv2.LINE_AA
            ),
            p["badge"],
        )
        c.text(p["word"][:4], (X(0.3), Y(0.28)), w / 300, p["ink"], max(2, int(w / 110)))
    elif kind == "tube":
        body = np.array(
            [[X(0.0), Y(0.06)], [X(1.0), Y(0.06)], [X(0.7), Y(0.86)], [X(0.3), Y(0.86)]], np.int32
        )
        c.paint(lambda s: cv2.fillPoly(s, [body], 255, cv2.LINE_AA), p["main"], ramp[:, ::-1])
        c.paint(lambda s: cv2.rectangle(s, (X(0.0), Y(0.0)), (X(1.0), Y(0.07)), 255, -1), p["main"] * 0.8)
        c.paint(lambda s: cv2.rectangle(s, (X(0.3), Y(0.86)), (X(0.7), Y(1.0)), 255, -1), p["second"])
        c.paint(lambda s: cv2.rectangle(s, (X(0.15), Y(0.3)), (X(0.85), Y(0.38)), 255, -1), p["badge"])
        c.text(p["word"][:3], (X(0.2), Y(0.58)), w / 110, p["ink"], max(2, int(w / 45)))
    elif kind == "watch":
        c.paint(lambda s: cv2.rectangle(s, (X(0.3), Y(0.0)), (X(0.7), Y(1.0)), 255, -1), p["second"], ramp)
        c.paint(
            lambda s: cv2.circle(s, (X(0.5), Y(0.5)), int(0.48 * w), 255, -1, cv2.LINE_AA), p["main"] * 0.6
        )
        c.paint(lambda s: cv2.circle(s, (X(0.5), Y(0.5)), int(0.4 * w), 255, -1, cv2.LINE_AA), p["badge"])
        angle = p["spot"][0] * 2 * np.pi
        tip = (int(X(0.5) + 0.33 * w * np.sin(angle)), int(Y(0.5) - 0.33 * w * np.cos(angle)))
        c.paint(
            lambda s: cv2.line(s, (X(0.5), Y(0.5)), tip, 255, max(3, int(0.04 * w)), cv2.LINE_AA), p["ink"]
        )
        c.text(p["word"][:4], (X(0.3), Y(0.66)), w / 380, p["ink"], max(1, int(w / 150)))
    else:  # figurine: the horse silhouette, painted with a glaze and a saddle blanket
        x0i, y0i, x1i, y1i = int(x0), int(y0), int(x1), int(y1)
        cut = cv2.resize(horse_alpha(), (x1i - x0i, y1i - y0i), interpolation=cv2.INTER_AREA)
        c.alpha[y0i:y1i, x0i:x1i] = cut
        c.colour[y0i:y1i, x0i:x1i] = p["main"][None, None, :] * ramp[y0i:y1i, x0i:x1i, None] * cut[..., None]
        blanket = (X(0.35), Y(0.3), X(0.62), Y(0.5))
        inside = c.alpha[blanket[1] : blanket[3], blanket[0] : blanket[2], None]
        c.colour[blanket[1] : blanket[3], blanket[0] : blanket[2]] = p["badge"] * inside
        c.text(p["word"][:3], (X(0.38), Y(0.45)), w / 400, p["ink"], max(1, int(w / 150)))
    colour, alpha = c.reduced()
    return np.clip(colour, 0, 1), np.clip(alpha, 0, 1)


# --- defects (measured on the product's own pixels) ---------------------------------------------


def product_area(alpha: np.ndarray) -> float:
    return float((alpha > 0.5).sum())


def over(top, bottom):
    (tc, ta), (bc, ba) = top, bottom
    return tc + bc * (1 - ta[..., None]), ta + ba * (1 - ta)


def affine(colour, alpha, matrix):
    size = alpha.shape[::-1]
    return cv2.warpAffine(colour, matrix, size), cv2.warpAffine(alpha, matrix, size)


def changed_share(before, after, alpha) -> float:
    inside = alpha > 0.5
    return float((np.abs(after - before).max(axis=-1)[inside] > 0.15).mean())


def defect(kind: str, spec: dict, colour, alpha, rng, size: int):
    """Apply a defect; returns (colour, alpha, measured magnitude)."""
    area = product_area(alpha)
    ys, xs = np.nonzero(alpha > 0.5)
    if kind in RANGES:
        low, high = RANGES[kind]
        target = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    if kind == "expanded":
        stencil = np.zeros(alpha.shape, np.uint8)
        piece = rng.choice(["dome", "sleeve", "puffs", "pedestal"])
        top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
        peak_x = int(xs[np.argmin(ys)])  # the dome sits on the product's highest point
        mid = int((top + bottom) / 2)
        mid_cols = np.nonzero(alpha[mid] > 0.5)[0]
        if not len(mid_cols):
            mid_cols = xs
        on_right = rng.random() < 0.5
        grow = 1.0
        for _ in range(6):
            stencil[:] = 0
            extra = target * area * grow
            if piece == "dome":
                rx = int((right - left) * 0.4) + 2
                cv2.ellipse(
                    stencil,
                    (peak_x, int(top) + 2),
                    (rx, int(2 * extra / (np.pi * rx)) + 2),
                    0,
                    180,
                    360,
                    255,
                    -1,
                )
            elif piece == "sleeve":
                hh = int((bottom - top) * 0.5)
                ww = int(extra / hh) + 2
                x = int(mid_cols.max()) - 2 if on_right else int(mid_cols.min()) - ww + 2
                cv2.rectangle(stencil, (x, mid - hh // 2), (x + ww, mid + hh // 2), 255, -1)
            elif piece == "puffs":
                for k in range(3):  # centred on the silhouette's own edge, so they grow out of the product
                    row = int(top + (0.2 + 0.3 * k) * (bottom - top))
                    cols = np.nonzero(alpha[row] > 0.5)[0]
                    col = int(left if not len(cols) else cols.max() if k % 2 else cols.min())
                    cv2.circle(
                        stencil, (col, row), int(np.sqrt(extra / (1.5 * np.pi))) + 2, 255, -1, cv2.LINE_AA
                    )
            else:
                ww = int((right - left) * 1.2)
                hh = int(extra / ww) + 2
                cx = int((left + right) / 2)
                cv2.rectangle(
                    stencil, (cx - ww // 2, int(bottom) - 2), (cx + ww // 2, int(bottom) + hh), 255, -1
                )
            measured = ((stencil > 127) & (alpha <= 0.5)).sum() / area
            if abs(measured - target) < 0.2 * target and measured >= low:
                break
            grow *= target / max(measured, 1e-3)
        m = stencil.astype(np.float32) / 255.0
        paint = (spec["second"] if rng.random() < 0.5 else spec["main"]) * np.float32(rng.uniform(0.7, 1.1))
        colour, alpha = over((np.clip(paint, 0, 1)[None, None, :] * m[..., None], m), (colour, alpha))
        magnitude = (product_area(alpha) - area) / area
    elif kind == "truncated":
        yy, xx = np.mgrid[0 : alpha.shape[0], 0 : alpha.shape[1]]
        if rng.random() < 0.5:  # a round bite from a random boundary side
            centre = (
                xs.mean() + rng.choice([-1, 1]) * (xs.max() - xs.min()) * 0.5,
                ys.mean() + rng.uniform(-0.4, 0.4) * (ys.max() - ys.min()),
            )
            dist = np.hypot(xx - centre[0], yy - centre[1])
            radius = np.quantile(np.hypot(xs - centre[0], ys - centre[1]), target)
            keep = np.clip(dist - radius + 0.5, 0, 1).astype(np.float32)
        else:  # the top or bottom chopped off
            sign = rng.choice([-1, 1])
            cut = np.quantile(ys * sign, 1 - target)
            keep = np.clip(cut - yy * sign + 0.5, 0, 1).astype(np.float32)
        colour, alpha = colour * keep[..., None], alpha * keep
        magnitude = 1 - product_area(alpha) / area
    elif kind == "recoloured":
        lab = cv2.cvtColor(np.clip(colour / np.maximum(alpha, 1e-4)[..., None], 0, 1), cv2.COLOR_RGB2Lab)
        theta = np.deg2rad(target) * rng.choice([-1, 1])
        a, b = lab[..., 1] * 1.3 + 8, lab[..., 2] * 1.3 + 8  # push greys off the axis so they change too
        lab[..., 1], lab[..., 2] = (
            a * np.cos(theta) - b * np.sin(theta),
            a * np.sin(theta) + b * np.cos(theta),
        )
        colour = np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), 0, 1) * alpha[..., None]
        magnitude = target
    elif kind in ("label_changed", "texture_changed"):
        for _ in range(8):
            if kind == "label_changed":
                new_colour, _unused = render({**spec, **new_print(rng)}, size)
            else:
                yy, xx = np.mgrid[0 : alpha.shape[0], 0 : alpha.shape[1]].astype(np.float32)
                period = rng.uniform(10, 26)
                waves = 0.5 + 0.5 * np.sin(xx / period * 2 * np.pi) * np.sin(yy / period * 2 * np.pi)
                grain = cv2.resize(
                    photo(str(rng.choice(["moon.png", "coins.png"])))[..., 0], alpha.shape[::-1]
                )
                pattern = waves if rng.random() < 0.5 else grain
                ink = hsv_colour(rng, (0.3, 1.0), (0.2, 1.0))
                straight = colour / np.maximum(alpha, 1e-4)[..., None]
                mix = (pattern * rng.uniform(0.6, 0.95))[..., None]
                new_colour = (straight * (1 - mix) + ink * mix) * alpha[..., None]
            magnitude = changed_share(
                colour / np.maximum(alpha, 1e-4)[..., None],
                new_colour / np.maximum(alpha, 1e-4)[..., None],
                alpha,
            )
            if magnitude >= MIN_CHANGED_FRACTION:
                break
        colour = new_colour
    elif kind == "rescaled":
        factor = 1 + target if rng.random() < 0.5 else 1 - min(target, 0.35)
        ax, ay = (xs.min() + xs.max()) / 2, ys.max()
        colour, alpha = affine(
            colour, alpha, np.float32([[factor, 0, ax * (1 - factor)], [0, factor, ay * (1 - factor)]])
        )
        magnitude = abs(factor - 1)
    elif kind == "shifted":
        step = target * np.sqrt(area)
        room_x = (-xs.min() + 2, alpha.shape[1] - 3 - xs.max())
        room_y = (-ys.min() + 2, alpha.shape[0] - 3 - ys.max())
        angle = rng.uniform(0, 2 * np.pi)
        dx = float(np.clip(step * np.cos(angle), *room_x))
        dy = float(np.clip(step * np.sin(angle), *room_y))
        if np.hypot(dx, dy) < 0.6 * step:  # pinned by the frame: go sideways instead
            dx = float(np.clip(step * np.sign(room_x[1] - abs(room_x[0]) + 1e-3), *room_x))
            dy = 0.0
        colour, alpha = affine(colour, alpha, np.float32([[1, 0, dx], [0, 1, dy]]))
        magnitude = np.hypot(dx, dy) / np.sqrt(area)
    else:  # melted: the rim slumps and dissolves, displaced by a smooth random field
        depth = cv2.distanceTransform((alpha > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
        band = max(2.0, float(np.quantile(depth[alpha > 0.5], target)))
        field = cv2.GaussianBlur(
            rng.normal(0, 1, (alpha.shape[0], alpha.shape[1], 2)).astype(np.float32), (0, 0), 6
        )
        field *= band * 1.2 / (np.abs(field).max() + 1e-6)
        yy, xx = np.mgrid[0 : alpha.shape[0], 0 : alpha.shape[1]].astype(np.float32)
        rim = np.clip(1 - depth / band, 0, 1)
        map_x = xx + field[..., 0] * (rim + (depth == 0))
        map_y = yy - np.abs(field[..., 1]) * (rim + (depth == 0)) - band * 0.5 * (rim + (depth == 0))
        colour, warped = (
            cv2.remap(colour, map_x, map_y, cv2.INTER_LINEAR),
            cv2.remap(alpha, map_x, map_y, cv2.INTER_LINEAR),
        )
        dissolve = np.clip(
            cv2.GaussianBlur(rng.uniform(0, 1, alpha.shape).astype(np.float32), (0, 0), 2) * 4 - 1.2, 0.25, 1
        )
        fade = np.where(cv2.remap(rim, map_x, map_y, cv2.INTER_LINEAR) > 0.05, dissolve, 1.0).astype(
            np.float32
        )
        colour, alpha = colour * fade[..., None], warped * fade
        magnitude = float(((depth > 0) & (depth <= band)).sum()) / area
    return colour.astype(np.float32), alpha.astype(np.float32), float(magnitude)


# --- scenes and harmless changes ------------------------------------------------------------------


def crop(rng, image: np.ndarray, width: int, height: int) -> np.ndarray:
    ih, iw = image.shape[:2]
    ch = int(min(ih, iw * height / width) * rng.uniform(0.35, 0.9))
    cw = int(ch * width / height)
    y, x = int(rng.integers(0, ih - ch + 1)), int(rng.integers(0, iw - cw + 1))
    return cv2.resize(np.ascontiguousarray(image[y : y + ch, x : x + cw]), (width, height))


def wood(rng, width: int, height: int) -> np.ndarray:
    """Procedural wood grain: noise stretched along the planks, with ring bands."""
    noise = cv2.resize(
        rng.normal(0, 1, (max(2, height // 24), 6)).astype(np.float32),
        (width, height),
        interpolation=cv2.INTER_CUBIC,
    )
    xx = np.arange(width, dtype=np.float32)[None, :] / width
    grain = 0.55 + 0.12 * np.sin((xx * rng.uniform(3, 7) + noise * 0.6) * 2 * np.pi) + 0.06 * noise
    return np.repeat(np.clip(grain, 0, 1)[..., None], 3, axis=2)


def surface(rng, width: int, height: int) -> tuple[np.ndarray, str]:
    name = str(rng.choice(list(SURFACES)))
    grey = wood(rng, width, height) if name == "wood" else crop(rng, photo(name), width, height)
    return np.clip(grey * hsv_colour(rng, (0.0, 0.45), (0.7, 1.0)) * 1.2, 0, 1), SURFACES[name]


def scene(rng, size: int, box) -> tuple[np.ndarray, str, int | None]:
    pick = rng.choice(["photo", "surface", "room", "backdrop"])
    if pick == "photo":
        name = str(rng.choice(list(SCENES)))
        image = crop(rng, photo(name), size, size)
        return cv2.GaussianBlur(image, (0, 0), rng.uniform(0.1, 3.5)), SCENES[name], None
    if pick == "surface":
        image, text = surface(rng, size, size)
        return image, f"on {text}", None
    if pick == "backdrop":
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        t = np.clip((xx + yy) / 2 + rng.uniform(-0.2, 0.2), 0, 1)[..., None]
        image = (
            hsv_colour(rng, (0.2, 0.7), (0.5, 1.0)) * (1 - t) + hsv_colour(rng, (0.2, 0.7), (0.3, 0.9)) * t
        )
        vignette = 1 - 0.35 * np.hypot(xx - 0.5, yy - 0.5)[..., None]
        return (image * vignette).astype(np.float32), "in front of a coloured paper backdrop", None
    horizon = int(np.clip(box[3] - (box[3] - box[1]) * rng.uniform(0.15, 0.5), size * 0.25, size - 5))
    wall = np.ones((horizon, size, 3), np.float32) * hsv_colour(rng, (0.0, 0.35), (0.7, 1.0))
    wall *= np.linspace(0.85, 1.0, horizon, dtype=np.float32)[:, None, None]
    if rng.random() < 0.5:  # a window of light
        wx = int(rng.uniform(0.05, 0.6) * size)
        wall[int(horizon * 0.1) : int(horizon * 0.7), wx : wx + size // 3] = np.clip(wall[0, 0] * 1.25, 0, 1)
    floor, text = surface(rng, size, size - horizon)
    return np.concatenate([wall, floor]), f"in a room on a {text} floor", horizon


def compose(colour, alpha, background, rng, horizon) -> tuple[np.ndarray, list[str]]:
    size = alpha.shape[0]
    notes = []
    if rng.random() < 0.4:
        k = rng.uniform(0.5, 1.8)
        colour, alpha = cv2.GaussianBlur(colour, (0, 0), k), cv2.GaussianBlur(alpha, (0, 0), k)
        notes.append("feathered_edges")
    image = background.copy()
    if rng.random() < 0.7:  # a long directional shadow, as from a low lamp
        shear = rng.uniform(-0.6, 0.6)
        ys = np.nonzero(alpha.max(axis=1) > 0.5)[0]
        base = float(ys.max()) if len(ys) else size / 2
        matrix = np.float32([[1, shear, -shear * base], [0, rng.uniform(0.3, 0.8), base * 0]])
        matrix[1, 2] = base * (1 - matrix[1, 1])
        shadow = cv2.GaussianBlur(cv2.warpAffine(alpha, matrix, (size, size)), (0, 0), rng.uniform(3, 9))
        image = image * (1 - rng.uniform(0.25, 0.55) * shadow)[..., None]
        notes.append("soft_shadow")
    if horizon is not None and rng.random() < 0.7:
        ys = np.nonzero(alpha.max(axis=1) > 0.5)[0]
        foot = int(ys.max())
        depth = min(size - foot - 1, foot - int(ys.min()))
        if depth > 4:
            strength = (np.linspace(rng.uniform(0.1, 0.35), 0, depth, dtype=np.float32))[:, None]
            flipped_c, flipped_a = colour[foot - depth : foot][::-1], alpha[foot - depth : foot][::-1]
            band = image[foot : foot + depth]
            image[foot : foot + depth] = (
                band * (1 - (flipped_a * strength)[..., None]) + flipped_c * strength[..., None]
            )
            notes.append("reflection")
    image = image * (1 - alpha[..., None]) + colour
    if rng.random() < 0.5:
        image = image * rng.uniform(0.92, 1.08)
        grey = image.mean(axis=2, keepdims=True)
        image = grey + (image - grey) * rng.uniform(0.9, 1.1)
        notes.append("colour_grading")
    if rng.random() < 0.25:
        image = cv2.GaussianBlur(np.clip(image, 0, 1).astype(np.float32), (0, 0), rng.uniform(0.3, 1.0))
        notes.append("blur")
    if rng.random() < 0.35:
        image = image + rng.normal(0, rng.uniform(0.5, 5.0) / 255, image.shape)
        notes.append("noise")
    return np.clip(image, 0, 1), notes


# --- files -----------------------------------------------------------------------------------------


def studio(rng, size: int) -> np.ndarray:
    tone = rng.choice(["white", "warm", "cool", "fade"])
    if tone == "white":
        return np.ones((size, size, 3), np.float32)
    if tone == "fade":
        ramp = np.linspace(1.0, rng.uniform(0.86, 0.95), size, dtype=np.float32)
        return np.repeat(np.repeat(ramp[:, None, None], size, axis=1), 3, axis=2)
    tint = np.float32([1.0, 0.98, 0.94]) if tone == "warm" else np.float32([0.93, 0.95, 0.97])
    return np.ones((size, size, 3), np.float32) * tint


def to_bytes(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_set(out: Path, n_pairs: int, seed: int, size: int, defect_fraction: float) -> Path:
    for folder in ("originals", "masks", "generations", "generation_masks"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    plan_rng = np.random.default_rng([seed, 31337])
    n_bad = round(n_pairs * defect_fraction)
    plan = list(
        plan_rng.permutation([KINDS[i % len(KINDS)] for i in range(n_bad)] + ["none"] * (n_pairs - n_bad))
    )
    rows = []
    for first in range(0, n_pairs, GENERATIONS_PER_ORIGINAL):
        index = first // GENERATIONS_PER_ORIGINAL
        rng = np.random.default_rng([seed, 17, index])
        spec = new_product(rng, size, PRODUCTS[index % len(PRODUCTS)])
        colour, alpha = render(spec, size)
        pid = f"h{index:04d}"
        origin, mask = f"originals/{pid}.png", f"masks/{pid}.png"
        if rng.random() < 0.15:  # a ready RGBA cut-out
            straight = colour / np.maximum(alpha, 1e-4)[..., None]
            Image.fromarray(np.dstack([to_bytes(straight), to_bytes(alpha)])).save(out / origin)
        else:
            Image.fromarray(to_bytes(studio(rng, size) * (1 - alpha[..., None]) + colour)).save(out / origin)
        Image.fromarray(((alpha > 0.5) * 255).astype(np.uint8)).save(out / mask)
        for k in range(first, min(first + GENERATIONS_PER_ORIGINAL, n_pairs)):
            grng = np.random.default_rng([seed, 17, index, k])
            kind = str(plan[k])
            gen_colour, gen_alpha, magnitude = (
                (colour, alpha, 0.0) if kind == "none" else defect(kind, spec, colour, alpha, grng, size)
            )
            background, where, horizon = scene(grng, size, spec["box"])
            image, harmless = compose(gen_colour, gen_alpha, background, grng, horizon)
            name = f"{pid}_{k}"
            if grng.random() < 0.7:
                quality = int(grng.integers(60, 93))
                generation = f"generations/{name}.jpg"
                Image.fromarray(to_bytes(image)).save(out / generation, quality=quality)
                harmless.append(f"jpeg_q{quality}")
            else:
                generation = f"generations/{name}.png"
                Image.fromarray(to_bytes(image)).save(out / generation)
            Image.fromarray(((gen_alpha > 0.5) * 255).astype(np.uint8)).save(
                out / f"generation_masks/{name}.png"
            )
            rows.append(
                {
                    "origin": origin,
                    "generation": generation,
                    "mask": mask,
                    "prompt": f"a {spec['kind']} {where}",
                    "category": spec["kind"],
                    "product_id": pid,
                    "label": int(kind == "none"),
                    "consistent": kind == "none",
                    "defect": kind,
                    "defect_magnitude": round(float(magnitude), 4),
                    "harmless": harmless,
                    "generation_mask": f"generation_masks/{name}.png",
                }
            )
    manifest = out / "manifest.jsonl"
    write_jsonl(manifest, rows)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--defect-fraction", type=float, default=0.5)
    args = parser.parse_args(argv)
    manifest = write_set(args.out, args.pairs, args.seed, args.size, args.defect_fraction)
    rows = read_jsonl(manifest)
    bad = sum(not row["consistent"] for row in rows)
    print(f"wrote {len(rows)} held-out pairs ({bad} defective, {len(rows) - bad} consistent) to {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
