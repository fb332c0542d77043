"""The mini product-photo world: drawn products on backgrounds of six scene kinds, each named by a prompt.

A *render* is a drawn product (`sample.products`) composited onto a scene built from the photographs and
textures bundled with scikit-image / scikit-learn (`sample.photos`), at a small size (64 px by default).
Scene kinds differ in palette and layout (a wall, a surface with a horizon, a sky over sand), so a
classifier of scene statistics tells them apart (`sample.oracle`). Train and held-out products come from
disjoint seed streams and carry disjoint ids (`t0000...` / `h0000...`).

`flaw` renders imitate what a web-scraped training set for an inpainting generator contains: a caption
naming another scene (`wrong_scene`), the product bled into the background around its mask (`bleed`), or
a blotch painted over the background (`blotch`). The generator trained on such data reproduces those
failures sometimes; the oracle catches them; fine-tuning with a reward should remove them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from hfpc_reward.sample.backgrounds import _photo_crop
from hfpc_reward.sample.defects import ProductLayer
from hfpc_reward.sample.products import CATEGORIES, ProductSpec, draw_product, random_spec

WORLD_SIZE = 64
# scene kind -> the prompt phrase that names it (a prompt is "a {category} {phrase}")
SCENES = {
    "brick": "on a brick wall",
    "lawn": "on a lawn",
    "table": "on a wooden table",
    "night": "against a night sky",
    "flowers": "among flowers",
    "beach": "on a sandy beach",
}
SCENE_KINDS = tuple(SCENES)
FLAWS = ("none", "wrong_scene", "bleed", "blotch")
SPLIT_SEEDS = {"train": 1009, "heldout": 2003}  # disjoint seed streams: no product is in both splits


@dataclass(frozen=True)
class WorldProduct:
    """One product of the world: its id, split and drawing spec."""

    product_id: str
    split: str
    spec: ProductSpec


@dataclass
class Render:
    """One rendered photo: RGB float32 (H,W,3) in [0,1], the product mask, the scene kind shown and its prompt."""

    image: np.ndarray
    product_mask: np.ndarray  # (H,W) bool, True = product
    scene: str  # the scene kind actually shown
    prompt: str  # the caption (names another kind when flaw == "wrong_scene")
    flaw: str


def world_products(split: str, count: int, size: int = WORLD_SIZE) -> list[WorldProduct]:
    """The first `count` products of a split (the same ones for the same arguments)."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}")
    products = []
    for index in range(count):
        rng = np.random.default_rng([SPLIT_SEEDS[split], index])
        spec = random_spec(rng, size, CATEGORIES[index % len(CATEGORIES)])
        products.append(WorldProduct(f"{split[0]}{index:04d}", split, spec))
    return products


def prompt_for(category: str, scene: str) -> str:
    return f"a {category} {SCENES[scene]}"


def scene_of_prompt(prompt: str) -> str | None:
    """The scene kind a prompt names (None when it names none of the world's kinds)."""
    for kind, phrase in SCENES.items():
        if phrase in prompt:
            return kind
    return None


def _tint(grey: np.ndarray, rgb: tuple[float, float, float], rng: np.random.Generator, spread: float = 0.08):
    colour = np.clip(np.float32(rgb) + rng.uniform(-spread, spread, 3).astype(np.float32), 0, 1)
    return np.clip(grey[..., None] * colour * 1.6, 0, 1)


def _texture(rng: np.random.Generator, name: str, width: int, height: int) -> np.ndarray:
    return _photo_crop(rng, name, width, height)[..., 0]


def scene_image(kind: str, rng: np.random.Generator, size: int = WORLD_SIZE) -> np.ndarray:
    """A background of one scene kind, float32 (size,size,3) in [0,1]."""
    if kind == "brick":
        return _tint(_texture(rng, "brick.png", size, size), (0.62, 0.3, 0.2), rng)
    if kind == "lawn":
        return _tint(_texture(rng, "grass.png", size, size), (0.25, 0.55, 0.18), rng)
    if kind == "flowers":
        return _photo_crop(rng, "flower.jpg", size, size)
    if kind == "night":
        sky = _photo_crop(rng, "hubble_deep_field.jpg", size, size) * 0.8
        gradient = np.linspace(0.0, 0.12, size, dtype=np.float32)[:, None, None] * np.float32([0.2, 0.3, 1.0])
        return np.clip(sky + gradient, 0, 1)
    horizon = int(size * rng.uniform(0.45, 0.65))
    if kind == "table":
        wall = np.ones((horizon, size, 3), np.float32) * np.float32([0.88, 0.84, 0.76])
        wall = wall + rng.uniform(-0.05, 0.05)
        grain = _texture(rng, "grass.png", size * 4, size - horizon)
        grain = cv2.resize(grain, (size, size - horizon), interpolation=cv2.INTER_AREA)  # streaks
        surface = _tint(grain, (0.5, 0.3, 0.15), rng)
        return np.clip(np.concatenate([wall, surface]), 0, 1)
    if kind == "beach":
        t = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None]
        sky = np.float32([0.35, 0.6, 0.92]) * (1 - 0.4 * t) + np.float32([0.8, 0.9, 1.0]) * 0.4 * t
        sky = np.broadcast_to(sky, (horizon, size, 3)) + rng.uniform(-0.05, 0.05)
        sand = _tint(_texture(rng, "gravel.png", size, size - horizon) * 0.5 + 0.45, (0.62, 0.52, 0.34), rng)
        return np.clip(np.concatenate([sky, sand]), 0, 1).astype(np.float32)
    raise ValueError(f"unknown scene kind {kind!r}; choose one of {SCENE_KINDS}")


def _composite(layer: ProductLayer, background: np.ndarray) -> np.ndarray:
    return np.clip(background * (1 - layer.alpha[..., None]) + layer.colour, 0, 1).astype(np.float32)


def _bleed(layer: ProductLayer, rng: np.random.Generator) -> ProductLayer:
    """The product's colours smeared outward past its outline (the mask stays the original one)."""
    size = layer.alpha.shape[0]
    radius = int(rng.integers(3, 7)) * size // 64
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    grown_alpha = cv2.GaussianBlur(cv2.dilate(layer.alpha, kernel), (0, 0), radius / 3)
    colour = cv2.dilate(layer.straight_colour() * layer.mask[..., None], kernel)
    colour = np.where(layer.mask[..., None], layer.straight_colour(), colour)
    alpha = np.maximum(layer.alpha, grown_alpha * rng.uniform(0.7, 1.0))
    return ProductLayer(np.clip(colour, 0, 1) * alpha[..., None], alpha)


def _blotch(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A soft blob of a foreign colour somewhere on the background."""
    size = image.shape[0]
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    ys, xs = np.nonzero(~mask)
    pick = rng.integers(len(ys))
    radius = size * rng.uniform(0.1, 0.2)
    blob = np.exp(-(((xx - xs[pick]) ** 2 + (yy - ys[pick]) ** 2) / (2 * radius**2))) * (~mask)
    colour = np.float32(
        rng.choice([[0.95, 0.1, 0.8], [0.1, 0.95, 0.95], [1.0, 1.0, 0.1], [0.05, 0.05, 0.05]])
    )
    return np.clip(image * (1 - blob[..., None]) + colour * blob[..., None], 0, 1).astype(np.float32)


def render(
    product: WorldProduct, scene: str, rng: np.random.Generator, flaw: str = "none", size: int = WORLD_SIZE
) -> Render:
    """The product on a scene of kind `scene`, optionally with one flaw (see the module docstring)."""
    if flaw not in FLAWS:
        raise ValueError(f"flaw must be one of {FLAWS}, got {flaw!r}")
    layer = draw_product(product.spec, size)
    mask = layer.mask
    background = scene_image(scene, rng, size)
    prompt = prompt_for(product.spec.category, scene)
    if flaw == "wrong_scene":
        other = str(rng.choice([kind for kind in SCENE_KINDS if kind != scene]))
        prompt = prompt_for(product.spec.category, other)
    if flaw == "bleed":
        image = _composite(_bleed(layer, rng), background)
    else:
        image = _composite(layer, background)
    if flaw == "blotch":
        image = _blotch(image, mask, rng)
    return Render(image, mask, scene, prompt, flaw)


def studio_original(product: WorldProduct, size: int = WORLD_SIZE) -> np.ndarray:
    """The product on a plain white studio backdrop: the original a generator repaints."""
    return _composite(draw_product(product.spec, size), np.ones((size, size, 3), np.float32))
