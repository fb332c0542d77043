"""The photographs that ship inside scikit-image / scikit-learn (no download): backgrounds, textures, prints."""

from __future__ import annotations

import importlib.util
from functools import cache, lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFont

from hfpc_reward.images import load_rgb

# bundled photos (skimage.data / sklearn.datasets images) -> what a background prompt calls them
PHOTOS = {
    "china.jpg": "in front of a traditional temple garden",
    "flower.jpg": "among flowers in bloom",
    "coffee.png": "on a cafe table next to a cup of coffee",
    "chelsea.png": "in a cosy living room",
    "hubble_deep_field.jpg": "against a starry night sky",
}


TEXTURES = {"brick.png": "a brick wall", "grass.png": "a lawn", "gravel.png": "a gravel path"}


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
def bundled_photo(name: str) -> np.ndarray:
    """A bundled photo as float32 RGB (H,W,3) in [0,1]."""
    return np.asarray(load_rgb(_photo_path(name)), dtype=np.float32) / 255.0


@cache
def bundled_texture(name: str) -> np.ndarray:
    """A bundled greyscale texture as float32 (H,W) in [0,1]."""
    return bundled_photo(name)[..., 0].copy()


@cache
def sticker_cutout() -> Image.Image:
    """scikit-image's logo die-cut from its white page (with a white margin) as an RGBA sticker."""
    rgb = np.asarray(load_rgb(_photo_path("logo.png")))
    ink = (rgb.min(axis=2) < 235).astype(np.uint8)
    ink = cv2.morphologyEx(ink, cv2.MORPH_CLOSE, np.ones((15, 15), np.uint8))
    contours, _ = cv2.findContours(ink, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    silhouette = cv2.drawContours(np.zeros_like(ink), contours, -1, 255, -1)
    alpha = cv2.dilate(silhouette, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (17, 17)))
    return Image.fromarray(np.dstack([rgb, alpha]))


@lru_cache(maxsize=8)
def label_font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)
