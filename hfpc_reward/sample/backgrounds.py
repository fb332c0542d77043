"""Backgrounds of the sample world: studio backdrops for originals, photo / texture scenes for generations."""

from __future__ import annotations

import cv2
import numpy as np

from hfpc_reward.sample.photos import PHOTOS, TEXTURES, bundled_photo, bundled_texture
from hfpc_reward.sample.products import ProductSpec, random_colour


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
    photo = bundled_photo(name) if name in PHOTOS else np.repeat(bundled_texture(name)[..., None], 3, axis=2)
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
    tint = np.float32(random_colour(rng, (0.1, 0.6), (0.6, 1.0))) / 255.0
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
            np.ones((horizon, size, 3), np.float32)
            * np.float32(random_colour(rng, (0.05, 0.4), (0.6, 0.95)))
            / 255
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
