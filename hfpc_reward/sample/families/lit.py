"""Validation family "lit": shaded 3-D-looking products with printed labels, re-shot on new backgrounds.

Bottles, jugs (see-through handle), cans, balls, cartons, tubes and bags (handle) are drawn from signed
distances and polygons, lit Lambert + Blinn-Phong (cylinders shade across their width with a highlight
stripe, balls and bags by their normals, carton faces by orientation) and carry a label (brand text, logo,
bands, bars). The original shows the product on a studio backdrop, half of them with a soft shadow; each of
its 3 generations puts the exact same product layer on a new background (photo crop, marble or plasma,
shelf scene, bokeh), sometimes with a new cast shadow and same-coloured distractors clear of the product,
then applies harmless global changes; a defective generation first alters the product (one of DEFECTS).

Written without reading the product-consistency judge or the other families, so that it is held-out truth.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hfpc_reward.sample.families.base import FamilyPair, photo, plan_defects

SIDES = (96, 128, 200, 256, 320, 384, 512, 640, 768, 1024)  # square image sides, one drawn per original
GENERATIONS = 3  # generations per original
SEED_PLAN, SEED_ORIGINAL, SEED_GENERATION = 1903, 1904, 1905  # seed offsets of the three random streams
# product kind: (least and most height/width aspect of its box, share of the box its silhouette fills)
KINDS = {"bottle": (1.8, 2.8, 0.8), "jug": (1.2, 1.6, 0.65), "can": (1.2, 1.7, 0.9), "bag": (0.9, 1.3, 0.7)}
KINDS |= {"ball": (0.75, 1.25, 0.78), "box": (0.7, 1.5, 0.85), "tube": (2.0, 3.0, 0.7)}  # (continued)
AREA = (0.10, 0.40)  # silhouette share of the image area, before the box is clamped into the frame
MARGIN = 0.05  # least gap between the product box and the image border, share of the side
COLOURS = ("saturated", "dark", "white", "grey", "muted", "backdrop")  # product colour categories ...
COLOUR_ODDS = (0.3, 0.14, 0.15, 0.12, 0.15, 0.14)  # ... and how often each is drawn
# bundled photos for new backgrounds (missing ones are skipped)
PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg", "china.jpg")
PHOTOS += ("motorcycle_left.png", "immunohistochemistry.png", "flower.jpg")  # (the rest of them)
SYLLABLES = ("ka", "lo", "mi", "ro", "ve", "sa", "tu", "ne", "fi", "zo", "pa", "lux", "dor")  # brand parts
LOGOS = ("circle", "ring", "triangle", "diamond", "star")  # logo shapes printed on labels
AMBIENT, DIFFUSE, SHININESS = 0.45, 0.65, 40  # lighting: ambient floor, Lambert gain, Phong exponent
COLOUR_BUDGET = 8.0  # most a harmless white-balance shift moves a channel, in levels (gain at 255 + offset)


@dataclass
class _Product:
    kind: str  # one of KINDS
    side: int  # image side in pixels
    box: tuple[float, float, float, float]  # x0, y0, width, height of the product box in pixels
    body: np.ndarray  # (3,) main colour in [0,1]
    part: np.ndarray  # (3,) colour of the cap / lid / handle
    gloss: float  # strength of the specular highlight
    light: np.ndarray  # (3,) unit light direction (x right, y down, z towards the camera)
    geo_seed: int  # seed of the kind's own proportions


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """An RGB colour in [0,1] from a hue in degrees, a saturation and a value."""
    return cv2.cvtColor(np.float32([[[h, s, v]]]), cv2.COLOR_HSV2RGB)[0, 0]


def _colour(rng: np.random.Generator, backdrop: np.ndarray) -> np.ndarray:
    """A product colour of a random category ("backdrop": close to the backdrop, yet distinct)."""
    kind, u, hue = rng.choice(COLOURS, p=COLOUR_ODDS), rng.uniform, rng.uniform(0, 360)
    if kind == "backdrop":
        return np.clip(backdrop + rng.choice([-1, 1]) * u(0.07, 0.12), 0, 1).astype(np.float32)
    sv = {"dark": (0, 0.6, 0.08, 0.28), "white": (0, 0.06, 0.88, 0.98), "grey": (0, 0.05, 0.35, 0.75)}
    s0, s1, v0, v1 = (sv | {"muted": (0.2, 0.45, 0.4, 0.85), "saturated": (0.6, 1, 0.5, 0.95)})[kind]
    return _hsv(hue, u(s0, s1), u(v0, v1))


def _aa(d: np.ndarray, soft: float = 1.0) -> np.ndarray:
    """Anti-aliased coverage of a signed distance in pixels (negative inside)."""
    return np.clip(0.5 - d / soft, 0, 1).astype(np.float32)


def _rbox(X, Y, cx, cy, hw, hh, r):
    """Signed distance to a rounded rectangle (centre, half sizes, corner radius)."""
    qx, qy = np.abs(X - cx) - (hw - r), np.abs(Y - cy) - (hh - r)
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - r


def _ellipse(X, Y, cx, cy, rx, ry):
    """Signed distance to an ellipse, first-order accurate near its outline."""
    dx, dy = X - cx, Y - cy
    k = np.hypot(dx / rx, dy / ry)
    return (k - 1) / np.maximum(np.hypot(dx / rx**2, dy / ry**2) / np.maximum(k, 1e-6), 1 / max(rx, ry))


def _poly(X, Y, pts) -> np.ndarray:
    """Anti-aliased coverage of a polygon (image coordinates) on the window of the grid X, Y."""
    img = np.zeros(X.shape, np.uint8)
    pts = np.round((np.float32(pts) - (X[0, 0], Y[0, 0])) * 16).astype(np.int32)
    return cv2.fillPoly(img, [pts], 255, cv2.LINE_AA, shift=4).astype(np.float32) / 255


def _unit(n) -> np.ndarray:
    n = np.asarray(n, np.float32)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def _n_cyl(X, cx, hw):
    """Normals of an upright cylinder of half width hw (a number or one per row)."""
    u = np.clip((X - cx) / hw, -0.98, 0.98)
    return np.stack([u, np.zeros_like(u), np.sqrt(1 - u * u)], -1)


def _n_ell(X, Y, cx, cy, rx, ry):
    """Normals of an ellipsoid seen along its axis."""
    u, v = (X - cx) / rx, (Y - cy) / ry
    s = 0.98 / np.maximum(np.hypot(u, v), 0.98)
    return np.stack([u * s, v * s, np.sqrt(1 - (u * s) ** 2 - (v * s) ** 2)], -1)


def _n_pillow(alpha, sigma):
    """Normals of a pillow whose height is the blurred coverage (soft bags, handles)."""
    gy, gx = np.gradient(cv2.GaussianBlur(alpha, (0, 0), sigma))
    return _unit(np.stack([-gx * 2 * sigma, -gy * 2 * sigma, np.ones_like(gx)], -1))


def _pieces(p: _Product, X, Y):
    """The parts back to front as (coverage, colour, normals), and the label (shape, cx, cy, hw, hh, part)."""
    x0, y0, w, h = p.box
    cx, g, B, P = x0 + w / 2, np.random.default_rng(p.geo_seed), p.body, p.part
    box = lambda *q: _aa(_rbox(X, Y, *q))
    if p.kind in ("bottle", "jug"):
        bw = w * (0.72 if p.kind == "jug" else 1.0)  # body width (a jug's handle takes the rest)
        bx, sy, ch = x0 + bw / 2, y0 + h * g.uniform(0.22, 0.34), h * g.uniform(0.06, 0.1)  # shoulder, cap
        nw = bw * g.uniform(0.13, 0.2)  # neck half width
        cw, lh = nw * g.uniform(1.1, 1.35), 0.45 * (y0 + h - sy)
        body = _rbox(X, Y, bx, (sy + y0 + h) / 2, bw / 2, (y0 + h - sy) / 2, 0.12 * bw)
        body = _aa(np.minimum(body, _ellipse(X, Y, bx, sy, bw / 2, 0.1 * h)))
        neck = box(bx, (y0 + ch / 2 + sy) / 2, nw, (sy - y0 - ch / 2) / 2, 1)
        parts = [(body, B, _n_cyl(X, bx, bw / 2)), (neck, B, _n_cyl(X, bx, nw))]
        parts.append((box(bx, y0 + ch / 2, cw, ch / 2, 0.25 * cw), P, _n_cyl(X, bx, cw)))
        if p.kind == "jug":  # a ring handle beside the body: a see-through hole
            t, hy = 0.05 * w + 0.5, sy + 0.35 * (y0 + h - sy)
            ring = _aa(np.abs(np.hypot(X - bx - bw / 2, Y - hy) - 0.22 * w) - t)
            return [(ring, B, _n_pillow(ring, t))] + parts, ("box", bx, sy + 1.05 * lh, 0.45 * bw, lh / 2, 1)
        return parts, ("box", bx, sy + 1.05 * lh, 0.45 * bw, lh / 2, 0)
    if p.kind == "can":  # body with a round bottom, elliptic lid seen from above
        lid = h * g.uniform(0.06, 0.1)
        body = _rbox(X, Y, cx, y0 + h / 2, w / 2, h / 2 - lid, 0.5)
        body = np.minimum(body, _ellipse(X, Y, cx, y0 + h - lid, w / 2, lid))
        top = _aa(_ellipse(X, Y, cx, y0 + lid, w / 2, lid))
        parts = [(_aa(body), B, _n_cyl(X, cx, w / 2)), (top, P, _unit((0, -0.8, 0.6)))]
        return parts, ("box", cx, y0 + 0.52 * h, w / 2, 0.28 * h, 0)
    if p.kind == "ball":
        ball = (cx, y0 + h / 2, w / 2, h / 2)
        lx, ly = cx + g.uniform(-0.1, 0.1) * w, y0 + h * g.uniform(0.45, 0.55)
        label = ("ellipse", lx, ly, 0.28 * w, 0.28 * h, 0)
        return [(_aa(_ellipse(X, Y, *ball)), B, _n_ell(X, Y, *ball))], label
    if p.kind == "box":  # a carton: silhouette (side face), then top face, then front face
        d, flip = g.uniform(0.15, 0.28) * min(w, h), g.random() < 0.5  # depth; side face on the left
        fx, fy, m = x0 + w - d, y0 + d, (lambda xs: [(2 * cx - x, y) for x, y in xs] if flip else xs)
        hexa = m([(x0, fy), (x0 + d, y0), (x0 + w, y0), (x0 + w, y0 + h - d), (fx, y0 + h), (x0, y0 + h)])
        top = m([(x0, fy), (x0 + d, y0), (x0 + w, y0), (fx, fy)])
        front = m([(x0, fy), (fx, fy), (fx, y0 + h), (x0, y0 + h)])
        parts = [(_poly(X, Y, hexa), B, _unit((-0.75 if flip else 0.75, 0, 0.66)))]
        parts += [(_poly(X, Y, top), B, _unit((0, -0.75, 0.66))), (_poly(X, Y, front), B, _unit((0, 0, 1)))]
        fcx = 2 * cx - (x0 + fx) / 2 if flip else (x0 + fx) / 2
        return parts, ("box", fcx, (fy + y0 + h) / 2, 0.38 * (w - d), 0.35 * (h - d), 2)
    if p.kind == "tube":  # crimped end on top, tapering body, cap below
        crimp, cap_h, cw = 0.07 * h, g.uniform(0.12, 0.16) * h, g.uniform(0.18, 0.24) * w
        hb, yb = cw * 1.15, y0 + h - cap_h  # body half width at its bottom, body bottom line
        corners = [(x0, y0 + crimp / 2), (x0 + w, y0 + crimp / 2), (cx + hb, yb + 1), (cx - hb, yb + 1)]
        body = _poly(X, Y, corners)
        hw = w / 2 + (hb - w / 2) * np.clip((Y - y0) / (yb - y0), 0, 1)  # body half width per row
        parts = [(body, B, _n_cyl(X, cx, hw))]
        parts.append((box(cx, y0 + crimp / 2, w / 2, crimp / 2, 0.5), B, _unit((0, -0.35, 0.94))))
        parts.append((box(cx, yb + cap_h / 2, cw, cap_h / 2, 0.2 * cw), P, _n_cyl(X, cx, cw)))
        return parts, ("box", cx, y0 + 0.415 * h, 0.8 * (w / 2 + (hb - w / 2) * 0.62), 0.165 * h, 0)
    top, amp, t = y0 + 0.3 * h, 0.015 * min(w, h), 0.025 * min(w, h) + 0.7  # bag: top line, wobble, handle
    wobble = cv2.resize(np.float32(g.normal(size=(5, 5))), X.shape[::-1], interpolation=cv2.INTER_CUBIC)
    body = _rbox(X, Y, cx, (top + y0 + h) / 2, w / 2 - amp, (y0 + h - top) / 2 - amp, 0.12 * w)
    body = _aa(body + amp * wobble, 1.6)
    ring = _aa(np.abs(_ellipse(X, Y, cx, top, 0.24 * w, top - y0 - t - 0.5)) - t)
    parts = [(ring, P, _n_pillow(ring, t)), (body, B, _n_pillow(body, 0.15 * min(w, h)))]
    return parts, ("box", cx, top + 0.55 * (y0 + h - top), 0.3 * w, 0.22 * (y0 + h - top), 1)


@cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _design(rng: np.random.Generator, avoid: dict | None = None) -> dict:
    """A label's look: colours, brand words, logo, bands, bars (clearly unlike `avoid` when given)."""
    while True:
        sat = rng.uniform(0, 0.08) if rng.random() < 0.4 else rng.uniform(0.4, 0.9)
        bg = _hsv(rng.uniform(0, 360), sat, rng.uniform(0.5, 0.98))
        if avoid is None or np.abs(bg - avoid["bg"]).sum() > 0.6:
            break
    dark_text = bg @ np.float32([0.3, 0.59, 0.11]) > 0.55
    words = ["".join(rng.choice(SYLLABLES, int(rng.integers(2, 4)))) for _ in range(2)]
    logo = str(rng.choice([x for x in LOGOS if x != (avoid or {}).get("logo")]))
    return {
        "bg": bg, "fg": _hsv(rng.uniform(0, 360), rng.uniform(0, 0.8), 0.12 if dark_text else 0.97),
        "accent": _hsv(rng.uniform(0, 360), rng.uniform(0.6, 1), rng.uniform(0.45, 0.95)),
        "words": (words[0].upper(), words[1]), "logo": logo, "band": bool(rng.random() < 0.5),
        "bars": bool(rng.random() < 0.5), "bar_seed": int(rng.integers(2**31)),
    }  # fmt: skip


def _label_image(design: dict, lw: int, lh: int) -> np.ndarray:
    """The printed label as float RGB (lh, lw, 3): background, bands, logo, brand text, bars."""
    bg, acc, fg = (tuple(int(v * 255) for v in design[k]) for k in ("bg", "accent", "fg"))
    im = Image.new("RGB", (lw, lh), bg)
    d, wide = ImageDraw.Draw(im), lw >= lh
    if design["band"]:
        b = max(1, lh // 7)
        d.rectangle([0, 0, lw, b - 1], fill=acc)
        d.rectangle([0, lh - b, lw, lh], fill=acc)
    s, (lx, ly) = 0.3 * min(lw, lh), ((lw * 0.2, lh / 2) if wide else (lw / 2, lh * 0.28))
    if design["logo"] in ("circle", "ring"):
        ring = max(1, int(s / 2.5)) if design["logo"] == "ring" else 0
        disc = [lx - s, ly - s, lx + s, ly + s]
        d.ellipse(disc, fill=None if ring else acc, outline=acc, width=max(ring, 1))
    else:
        n = {"triangle": 3, "diamond": 4, "star": 10}[design["logo"]]
        r, t = [0.45 * s if n == 10 and i % 2 else s for i in range(n)], np.arange(n) * 2 * math.pi / n
        d.polygon(list(zip(lx + r * np.sin(t), ly - r * np.cos(t), strict=True)), fill=acc)
    tx, ty, tw = (lw * 0.62, lh * 0.42, lw * 0.6) if wide else (lw / 2, lh * 0.62, lw * 0.9)
    main, sub = design["words"]
    size = max(6, int(min(lh * (0.26 if wide else 0.12), 1.7 * tw / len(main))))
    d.text((tx, ty), main, fill=fg, font=_font(size), anchor="mm")
    d.text((tx, ty + size), sub, fill=fg, font=_font(max(5, size * 2 // 3)), anchor="mm")
    if design["bars"]:  # a barcode strip under the text
        r, unit, x = np.random.default_rng(design["bar_seed"]), max(1, lw // 90), int(tx - tw / 3)
        yb0, yb1 = min(ty + size * 1.5, lh - 3), min(ty + size * 1.5 + lh * 0.15, lh - 2)
        while x < tx + tw / 3:
            bw = int(r.integers(1, 4)) * unit
            d.rectangle([x, yb0, x + bw - 1, yb1], fill=fg)
            x += bw + int(r.integers(1, 3)) * unit
    return np.asarray(im, np.float32) / 255


def _render(p: _Product, design: dict) -> tuple[np.ndarray, np.ndarray]:
    """The product layer: straight colour (S,S,3) and coverage (S,S), float32, zero outside the product."""
    S, (x0, y0, w, h) = p.side, p.box
    wx0, wy0 = max(0, int(x0) - 3), max(0, int(y0) - 3)  # the product's window, with a margin
    wx1, wy1 = min(S, int(x0 + w) + 4), min(S, int(y0 + h) + 4)
    X, Y = np.meshgrid(np.arange(wx0, wx1, dtype=np.float32), np.arange(wy0, wy1, dtype=np.float32))
    pieces, (shape, lcx, lcy, lhw, lhh, main) = _pieces(p, X, Y)
    prem, A = np.zeros(X.shape + (3,), np.float32), np.zeros(X.shape, np.float32)
    half = _unit(p.light + (0, 0, 1))  # Blinn-Phong half vector (camera along z)
    for i, (a, col, n) in enumerate(pieces):
        shade = (AMBIENT + DIFFUSE * np.clip(n @ p.light, 0, 1))[..., None]
        spec = (p.gloss * np.clip(n @ half, 0, 1) ** SHININESS)[..., None]
        prem = prem * (1 - a[..., None]) + np.clip(col * shade + spec, 0, 1) * a[..., None]
        A = A * (1 - a) + a
        if i == main:
            main_shade, main_spec, main_a = shade, spec, a
    lx0, ly0 = max(wx0, round(lcx - lhw)), max(wy0, round(lcy - lhh))
    lx1, ly1 = min(wx1, round(lcx + lhw)), min(wy1, round(lcy + lhh))
    if lx1 - lx0 >= 4 and ly1 - ly0 >= 3:  # the label, printed on the main part and lit like it
        c = ((lx0 + lx1 - 1) / 2, (ly0 + ly1 - 1) / 2)
        half_size = ((lx1 - lx0) / 2 - 0.5, (ly1 - ly0) / 2 - 0.5)
        sd = _rbox(X, Y, *c, *half_size, 1) if shape == "box" else _ellipse(X, Y, *c, *half_size)
        la, lab = (_aa(sd) * main_a)[..., None], np.zeros_like(prem)
        lab[ly0 - wy0 : ly1 - wy0, lx0 - wx0 : lx1 - wx0] = _label_image(design, lx1 - lx0, ly1 - ly0)
        prem = prem * (1 - la) + np.clip(lab * main_shade + main_spec, 0, 1) * la
    rgb, alpha = np.zeros((S, S, 3), np.float32), np.zeros((S, S), np.float32)
    rgb[wy0:wy1, wx0:wx1], alpha[wy0:wy1, wx0:wx1] = prem / np.maximum(A, 1e-6)[..., None], A
    return rgb, alpha


def _product(side: int, rng: np.random.Generator, backdrop: np.ndarray) -> _Product:
    """A random product of a random kind, size (AREA) and place (MARGIN), colours and light."""
    kind, u = str(rng.choice(list(KINDS))), rng.uniform
    lo, hi, fill = KINDS[kind]
    aspect, area = u(lo, hi), u(*AREA) * side * side / fill
    w = math.sqrt(area / aspect)
    w, h = np.array([w, w * aspect]) * min(1.0, 0.999 * (1 - 2 * MARGIN) * side / max(w, w * aspect))
    x0, y0 = u(MARGIN * side, (1 - MARGIN) * side - w), u(MARGIN * side, (1 - MARGIN) * side - h)
    lx, ly = rng.choice([-1, 1]) * u(0.2, 0.6), -u(0.1, 0.5)
    light = np.float32([lx, ly, math.sqrt(1 - lx * lx - ly * ly)])
    body = _colour(rng, backdrop)
    part = _colour(rng, backdrop) if rng.random() < 0.5 else np.clip(body * u(0.5, 1.3), 0, 1)
    return _Product(kind, side, (x0, y0, w, h), body, part, u(0.1, 0.7), light, int(rng.integers(2**31)))


def _studio(side: int, rng: np.random.Generator) -> np.ndarray:
    """A studio backdrop: white, light grey or a soft tinted vertical gradient, lightness 180-250."""
    t, u, kind = np.linspace(0, 1, side, dtype=np.float32)[:, None, None], rng.uniform, rng.integers(3)
    top = np.full(3, u(235, 250) if kind == 0 else u(180, 250), np.float32) / 255
    bottom = top * (1 if kind == 0 else u(0.9, 1.0))  # white is flat, grey darkens towards the floor
    if kind == 2:  # a soft coloured gradient
        hue = u(0, 360)
        top, bottom = _hsv(hue, u(0.05, 0.25), top[0]), _hsv(hue, u(0.05, 0.25), u(180, 250) / 255)
    return np.broadcast_to(top * (1 - t) + bottom * t, (side, side, 3)).copy()


def _new_background(side: int, rng: np.random.Generator) -> np.ndarray:
    """A new scene behind the product: photo crop, marble/plasma texture, shelf scene or bokeh."""
    kind, u = ["photo", "texture", "shelf", "bokeh"][rng.integers(4)], rng.uniform
    if kind == "photo":
        try:
            img = photo(str(rng.choice(PHOTOS)))
            c = int(min(img.shape[:2]) * u(0.45, 1))
            y, x = rng.integers(img.shape[0] - c + 1), rng.integers(img.shape[1] - c + 1)
            how = cv2.INTER_AREA if c > side else cv2.INTER_LINEAR
            crop = cv2.resize(img[y : y + c, x : x + c], (side, side), interpolation=how)
            return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)
        except FileNotFoundError:
            kind = "texture"
    c1, c2 = (_hsv(u(0, 360), u(0.1, 0.8), u(0.2, 0.95)) for _ in range(2))
    Y, X = (np.mgrid[0:side, 0:side].astype(np.float32) / side)[..., None]
    if kind == "texture":  # plasma: summed octaves of upsampled random grids, or marble veins bent by it
        grids = [np.float32(rng.random((2**o + 2,) * 2)) / 1.6**o for o in range(1, 6)]
        n = sum(cv2.resize(x, (side, side), interpolation=cv2.INTER_CUBIC) for x in grids)
        n = ((n - n.min()) / (n.max() - n.min()))[..., None]
        if rng.random() < 0.5:
            a = u(0, math.pi)
            phase = u(2, 6) * (X * math.cos(a) + Y * math.sin(a)) + u(1, 3) * n
            n = (0.5 + 0.5 * np.sin(2 * math.pi * phase)) ** 3
        return np.clip(c1 * (1 - n) + c2 * n, 0, 1).astype(np.float32)
    if kind == "shelf":  # a wall over a table seen in perspective
        hy, vx, vy = int(u(0.45, 0.75) * side), u(0.2, 0.8) * side, -u(0, 0.5) * side
        img, table = (c1 * (0.8 + 0.2 * Y)).astype(np.float32), np.float32(c2 * (0.75 + 0.35 * Y))
        seam, width = tuple(float(v) for v in c2 * 0.7), max(1, side // 200)
        for bx in np.linspace(-side, 2 * side, int(rng.integers(8, 20))):  # planks converging to (vx, vy)
            cv2.line(table, (int(vx), int(vy)), (int(bx), side), seam, width, cv2.LINE_AA)
        img[hy:] = table[hy:]
        img[hy : hy + max(1, side // 100)] = np.clip(c2 * 1.3, 0, 1)  # the table's lit front edge
        return img
    img, layer = (c1 * 0.5 * (1 - Y) + c2 * 0.5 * Y).astype(np.float32), np.zeros((side, side, 3), np.float32)
    for _ in range(int(rng.integers(15, 50))):  # bokeh: blurred bright discs on a dim gradient
        col = tuple(float(v) for v in _hsv(u(0, 360), u(0.2, 0.9), u(0.5, 1)) * u(0.3, 0.8))
        centre, radius = (int(u(0, side)), int(u(0, side))), int(u(0.02, 0.1) * side) + 1
        cv2.circle(layer, centre, radius, col, -1, cv2.LINE_AA)
    return np.clip(img + cv2.GaussianBlur(layer, (0, 0), 0.006 * side + 0.5), 0, 1)


def _geometry(a: np.ndarray):
    """Product pixels, centroid (y, x) and size (geometric mean of the bounding box sides)."""
    m = a > 0.5
    ys, xs = np.nonzero(m)
    return m, ys.mean(), xs.mean(), math.sqrt((np.ptp(ys) + 1) * (np.ptp(xs) + 1))


def _shadow(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A darkening map: the silhouette offset beside the product or squashed under it, blurred, 15-45%."""
    m, _, _, size = _geometry(a)
    S, bottom, u = a.shape[0], float(np.nonzero(m.any(1))[0].max()), rng.uniform
    if rng.random() < 0.5:  # cast beside
        M = np.float32([[1, 0, rng.choice([-1, 1]) * u(0.04, 0.12) * size], [0, 1, u(0.02, 0.08) * size]])
    else:  # contact: flattened onto the floor line and sheared
        sy, shear = u(0.12, 0.3), u(-0.8, 0.8)
        M = np.float32([[1, -shear * sy, shear * sy * bottom], [0, sy, bottom * (1 - sy)]])
    return cv2.GaussianBlur(cv2.warpAffine(a, M, (S, S)), (0, 0), u(0.03, 0.08) * size + 1) * u(0.15, 0.45)


def _distractors(bg: np.ndarray, keep: np.ndarray, colour: np.ndarray, rng: np.random.Generator) -> bool:
    """Paint 1-3 shaded blobs of the product's colour clear of `keep` into bg; whether any was painted."""
    S, painted = bg.shape[0], False
    dist = cv2.distanceTransform((keep < 0.05).astype(np.uint8), cv2.DIST_L2, 5)
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(0.04, 0.1) * S
        spots = np.argwhere(dist > r + max(4.0, 0.03 * S))  # a gap of 3% of the side, at least 4 px
        if len(spots):
            cy, cx = spots[rng.integers(len(spots))]
            blob = (cx, cy, r, r * rng.uniform(0.5, 1.0))
            y0, x0, y1, x1 = np.clip(np.int32([cy - r - 2, cx - r - 2, cy + r + 3, cx + r + 3]), 0, S)
            win = np.s_[y0:y1, x0:x1]
            Y, X = np.mgrid[win].astype(np.float32)
            a = _aa(_ellipse(X, Y, *blob))[..., None]
            shade = AMBIENT + DIFFUSE * np.clip(_n_ell(X, Y, *blob) @ _unit((-0.4, -0.4, 0.8)), 0, 1)
            col = np.clip(np.clip(colour + rng.uniform(-0.05, 0.05, 3), 0, 1) * shade[..., None], 0, 1)
            bg[win] = bg[win] * (1 - a) + col * a
            painted = True
    return painted


def _warp(rgb: np.ndarray, a: np.ndarray, M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The product layer moved by the affine M (premultiplied, so no dark fringe)."""
    S = a.shape[0]
    a2, prem = cv2.warpAffine(a, M, (S, S)), cv2.warpAffine(rgb * a[..., None], M, (S, S))
    return prem / np.maximum(a2, 1e-6)[..., None], a2


def _edge_point(m: np.ndarray, cy: float, cx: float, ang: float) -> np.ndarray:
    """The outermost product pixel on the ray from the centroid at angle `ang`, as (x, y)."""
    t, S = np.arange(0, 2 * m.shape[0], 0.5), m.shape[0]
    xs, ys = np.round(cx + t * math.cos(ang)).astype(int), np.round(cy + t * math.sin(ang)).astype(int)
    ok = (xs >= 0) & (ys >= 0) & (xs < S) & (ys < S)
    last = np.nonzero(m[ys[ok], xs[ok]])[0][-1]
    return np.float32([xs[ok][last], ys[ok][last]])


def _defect(kind: str, rgb: np.ndarray, a: np.ndarray, rng: np.random.Generator):
    """The product layer (colour, coverage) altered by one defect kind (relabelled is re-rendered instead)."""
    S, u, (m, cy, cx, size) = a.shape[0], rng.uniform, _geometry(a)
    Y, X = np.mgrid[0:S, 0:S].astype(np.float32)
    ang = u(0, 2 * math.pi)
    ray = np.float32([math.cos(ang), math.sin(ang)])
    proj = X * ray[0] + Y * ray[1]  # position along a random direction, for straight cuts
    if kind == "moved":  # by 8-25% of its size, in a direction that keeps it in frame when one does
        ys, xs = np.nonzero(m)
        for _ in range(30):
            dx, dy = max(3.0, u(0.08, 0.25) * size) * _unit((rng.normal(), rng.normal()))
            if 0 <= xs.min() + dx and xs.max() + dx < S and 0 <= ys.min() + dy and ys.max() + dy < S:
                break
        return _warp(rgb, a, np.float32([[1, 0, dx], [0, 1, dy]]))
    if kind == "rescaled":  # about its centre, by 1.15-1.35 when that fits, else by 0.7-0.85
        f = u(1.15, 1.35) if rng.random() < 0.5 and size * 1.35 < 0.9 * S else u(0.7, 0.85)
        return _warp(rgb, a, np.float32([[f, 0, cx * (1 - f)], [0, f, cy * (1 - f)]]))
    if kind == "truncated":  # 15-35% of its area removed by a straight cut or a round bite
        frac = u(0.15, 0.35)
        if rng.random() < 0.5:
            return rgb, a * np.clip(np.quantile(proj[m], 1 - frac) - proj + 0.5, 0, 1)
        ex, ey = _edge_point(m, cy, cx, ang)
        dist, lo, hi = np.hypot(X - ex, Y - ey), 0.0, 2.0 * size
        for _ in range(14):  # bisect the bite's radius for the wanted share
            r = (lo + hi) / 2
            lo, hi = (r, hi) if (a * _aa(dist - r)).sum() < frac * a.sum() else (lo, r)
        return rgb, a * (1 - _aa(dist - r))
    if kind == "recoloured":  # hue turned 40-180 degrees (or colour replaced), all over or on a part >= 30%
        part = np.clip(np.quantile(proj[m], 1 - u(0.35, 0.7)) - proj + 0.5, 0, 1)
        part = part if rng.random() < 0.5 else np.ones_like(a)
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
        if hsv[..., 1][m].mean() > 0.45 and hsv[..., 2][m].mean() > 0.4:
            hsv[..., 0] = (hsv[..., 0] + rng.choice([-1, 1]) * u(40, 180)) % 360
            new = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        else:  # grey, white or dark: a new saturated colour under the same shading
            lum = rgb.mean(-1, keepdims=True)
            colour = _hsv(u(0, 360), u(0.6, 0.95), u(0.55, 0.85))
            new = np.clip(lum / max(float(lum[m].mean()), 0.05) * colour, 0, 1)
        return rgb * (1 - part[..., None]) + new * part[..., None], a
    # expanded / bled: colour of the nearest product pixel everywhere, and the distance to the product
    outside = (~m).astype(np.uint8)
    dist, lab = cv2.distanceTransformWithLabels(outside, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    table = np.zeros((lab.max() + 1, 3), np.float32)
    table[lab[m]] = rgb[m]
    near = table[lab]
    if kind == "expanded":  # a bulge or an attached ellipse reaching 10-30% of its size beyond the outline
        for _ in range(20):  # a direction whose growth stays inside the frame
            ang = u(0, 2 * math.pi)
            ray = np.float32([math.cos(ang), math.sin(ang)])
            ex, ey = _edge_point(m, cy, cx, ang)
            if 0 <= ex + 0.3 * size * ray[0] < S and 0 <= ey + 0.3 * size * ray[1] < S:
                break
        if rng.random() < 0.5:  # the outline pushed out by up to `reach` over a sector of angles
            delta = np.angle(np.exp(1j * (np.arctan2(Y - cy, X - cx) - ang)))
            reach = max(4.0, u(0.12, 0.25) * size) * np.clip(3 * (1 - np.abs(delta) / u(0.5, 1.0)), 0, 1)
            grow = np.clip(reach + 0.5 - dist, 0, 1) * (reach > 0)
        else:  # an ellipse along the ray, from inside the product to `reach` beyond its outline
            reach, across = max(5.0, u(0.12, 0.3) * size), max(3.0, u(0.1, 0.2) * size)
            du, dv = X - ex - 0.25 * reach * ray[0], Y - ey - 0.25 * reach * ray[1]
            along, side_ = du * ray[0] + dv * ray[1], dv * ray[0] - du * ray[1]
            grow = _aa(_ellipse(along, side_, 0, 0, 0.75 * reach, across))
        a2 = np.maximum(a, grow).astype(np.float32)
        return (rgb * a[..., None] + near * (a2 - a)[..., None]) / np.maximum(a2, 1e-6)[..., None], a2
    # bled: colours smeared 1.5-4% of the side outward, all around or on one side, fading out
    reach = max(3.0, u(0.015, 0.04) * S)
    fade = u(0.7, 0.9) * np.clip(1 - (dist / reach) ** 2, 0, 1) * (~m) * (1 - a)
    if rng.random() < 0.5:
        fade *= np.clip((np.cos(np.arctan2(Y - cy, X - cx) - ang) + 0.1) / 0.6, 0, 1)
    a2 = (a + fade).astype(np.float32)
    smear = cv2.GaussianBlur(near, (0, 0), reach / 4)
    return (rgb * a[..., None] + smear * fade[..., None]) / np.maximum(a2, 1e-6)[..., None], a2


def _harmless(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Global changes that leave the product in place: colour shift, resample or blur, noise, re-encode.

    Spatial ones are milder on small images (`fine` < 1), where a label's print is only a few pixels tall.
    """
    u, names, S = rng.uniform, [], img.shape[0]
    fine = min(1.0, S / 384)
    if rng.random() < 0.5:  # white balance: per-channel gain and offset, at most COLOUR_BUDGET levels
        gain, off = u(-0.05, 0.05, 3), u(-5, 5, 3)
        scale = np.minimum(1, COLOUR_BUDGET / (np.abs(gain) * 255 + np.abs(off)))
        img, names = img * (1 + gain * scale) + off * scale, names + ["colour"]
    if rng.random() < 0.2:  # down and up again by 0.6-0.9 (0.8-0.9 on the smallest images)
        small = int(S * u(0.9 - 0.3 * fine if fine > 0.34 else 0.8, 0.9))
        img = cv2.resize(cv2.resize(img, (small, small), interpolation=cv2.INTER_AREA), (S, S))
        names.append("resample")
    elif rng.random() < 0.35:  # sigma 0.3-0.8 px (0.3-0.5 on the smallest images)
        img, names = cv2.GaussianBlur(img, (0, 0), u(0.3, 0.3 + 0.5 * max(fine, 0.4))), names + ["blur"]
    if rng.random() < 0.5:
        img, names = img + rng.normal(0, u(1, 4), img.shape), names + ["noise"]
    fmt, buf = ["jpeg", "webp", "png"][rng.integers(3)], io.BytesIO()
    low = {"jpeg": 70, "webp": 80, "png": 95}[fmt] + (1 - fine) * 15  # quality floor, raised on small images
    out = Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8))
    out.save(buf, fmt.upper(), **({} if fmt == "png" else {"quality": int(u(min(low, 95), 95))}))
    return np.asarray(Image.open(buf).convert("RGB")).copy(), names + [fmt]


def lit_pairs(
    n_pairs: int = 120, seed: int = 0, defect_fraction: float = 0.5, sides: tuple[int, ...] | None = None
) -> list[FamilyPair]:
    """`n_pairs` (original, generation) pairs, 3 per original, a `defect_fraction` share of them defective."""
    plan, pairs = plan_defects(n_pairs, defect_fraction, seed + SEED_PLAN), []
    for oi in range(-(-n_pairs // GENERATIONS)):
        rng = np.random.default_rng([seed, SEED_ORIGINAL, oi])
        side = int(rng.choice(sides or SIDES))
        backdrop = _studio(side, rng)
        product, design = _product(side, rng, backdrop.mean((0, 1))), _design(rng)
        rgb, a = _render(product, design)
        studio_shadow = bool(rng.random() < 0.5)
        if studio_shadow:
            backdrop = backdrop * (1 - _shadow(a, rng)[..., None])
        original = np.clip(backdrop * (1 - a[..., None]) + rgb * a[..., None], 0, 1) * 255
        original = np.round(original).astype(np.uint8)
        mask = a > 0.5
        for i in range(oi * GENERATIONS, min(n_pairs, (oi + 1) * GENERATIONS)):
            g, defect = np.random.default_rng([seed, SEED_GENERATION, i]), plan[i]
            if defect in ("none", "relabelled"):
                rgb2, a2 = _render(product, _design(g, avoid=design)) if defect == "relabelled" else (rgb, a)
            else:
                rgb2, a2 = _defect(defect, rgb, a, g)
            bg, scene = _new_background(side, g), []
            if g.random() < 0.35:  # a new cast shadow of the (generated) product
                bg, scene = bg * (1 - _shadow(a2, g)[..., None]), ["cast_shadow"]
            keep = cv2.dilate(np.maximum(a, a2), np.ones((3, 3), np.uint8))
            if g.random() < 0.35 and _distractors(bg, keep, np.median(rgb[mask], axis=0), g):
                scene.append("distractors")
            generated, harmless = _harmless((bg * (1 - a2[..., None]) + rgb2 * a2[..., None]) * 255, g)
            info = (defect, studio_shadow, scene + harmless)
            pairs.append(FamilyPair("lit", f"l{oi:04d}", original, generated, mask.copy(), *info))
    return pairs
