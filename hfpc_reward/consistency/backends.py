"""The two small protocols every consistency backend implements, and the plain dict that builds them.

Detector: images + text prompts -> boxes and scores. Segmenter: images + boxes -> masks.
Backends load their models lazily through `from_pretrained` (hub id or local folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

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
