"""The two small protocols every consistency backend implements, and the plain dict that builds them.

Detector: images + text prompts -> boxes and scores. Segmenter: images + boxes -> masks.
Backends load their models lazily through `from_pretrained` (hub id or local folder).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image


@dataclass
class Detections:
    """Boxes found in one image, best first."""

    boxes: np.ndarray  # (N, 4) float32, x0 y0 x1 y1 in pixels of the input image
    scores: np.ndarray  # (N,) float32 in [0, 1]
    labels: list[str]  # (N,) the text phrase each box matched


class Detector(Protocol):
    def detect(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[Detections]:
        """One `Detections` per image; `prompts[i]` names the product to look for in `images[i]`."""


class Segmenter(Protocol):
    def segment(self, images: Sequence[Image.Image], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """For image i and its boxes (N_i, 4) xyxy pixels, masks (N_i, H, W) bool at the image's size."""


@dataclass
class OriginalProduct:
    """The original-side work of a consistency backend, computed once per distinct original."""

    image: Image.Image  # the original, 8-bit RGB
    mask: np.ndarray  # (H, W) bool product mask of the original, at the original's size
    source: str  # where the mask came from: "given" | "alpha" | "studio" | "detected" | "fallback"
    prompt: str  # the product phrase used for detection ("" when the backend does not detect)
    notes: list[str]  # reasons worth reporting about the original side (e.g. "no product detected")
    cache: dict  # backend-specific state reused for every generation of this original (embeddings, stats)


class MaskFinder(Protocol):
    """A consistency backend: finds the product mask in the original and in each generated image."""

    def original_products(
        self,
        originals: Sequence[Image.Image],
        masks: Sequence[np.ndarray | None],
        prompts: Sequence[str | None],
    ) -> list[OriginalProduct]:
        """One OriginalProduct per original; `masks[i]` is the user's product mask when given."""

    def generated_masks(
        self, generated: Sequence[Image.Image], products: Sequence[OriginalProduct]
    ) -> list[tuple[np.ndarray, list[str]]]:
        """For generated[i] (already aligned to products[i].image's size): its product mask and notes."""
