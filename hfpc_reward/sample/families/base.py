"""What every validation family produces: in-memory pairs with ground truth, one defect kind vocabulary.

Defect kinds (DEFECTS) name what a reviewer sees, across families: expanded (the product grew into the
background), bled (its outline smeared outward into the background), truncated (part of it gone),
recoloured, relabelled (label / print / texture changed), moved, rescaled. "none" = consistent.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from hfpc_reward.images import load_rgb

DEFECTS = ("expanded", "bled", "truncated", "recoloured", "relabelled", "moved", "rescaled")


@dataclass
class FamilyPair:
    """One (original, generated) pair of a family with its ground truth."""

    family: str  # the generator that made it
    original_id: str  # pairs of one original share it (split by original, never by pair)
    original: np.ndarray  # (H,W,3) uint8 studio original
    generated: np.ndarray  # (H,W,3) uint8 generation
    mask: np.ndarray  # (H,W) bool exact product mask of the original
    defect: str  # one of DEFECTS, or "none" for a consistent pair
    studio_shadow: bool = False  # the original's backdrop carries a cast shadow of the product
    harmless: list[str] = field(default_factory=list)  # harmless changes applied to the generation

    @property
    def consistent(self) -> bool:
        return self.defect == "none"

    def inner_difference(self, erode_px: int = 3) -> float:
        """Mean absolute difference (0-255 levels) between original and generation over the product pixels at
        least `erode_px` inside the mask: how much a generation changed the product itself."""
        kernel = np.ones((2 * erode_px + 1, 2 * erode_px + 1), np.uint8)
        inner = cv2.erode(self.mask.astype(np.uint8), kernel) > 0
        return float(
            np.abs(self.original.astype(np.float32) - self.generated.astype(np.float32))[inner].mean()
        )


@cache
def photo(name: str) -> np.ndarray:
    """A photo shipped with scikit-image (or scikit-learn's china / flower) as float32 RGB in [0,1]."""
    for package, folder in (("skimage", "data"), ("sklearn", "datasets/images")):
        path = Path(importlib.util.find_spec(package).origin).parent / folder / name
        if path.is_file():
            return np.asarray(load_rgb(path), dtype=np.float32) / 255.0
    raise FileNotFoundError(f"no bundled photo named {name}")


def plan_defects(n_pairs: int, defect_fraction: float, seed: int) -> list[str]:
    """A shuffled list: every defect kind equally often over the defective share, "none" for the rest."""
    n_bad = round(n_pairs * defect_fraction)
    kinds = [DEFECTS[i % len(DEFECTS)] for i in range(n_bad)] + ["none"] * (n_pairs - n_bad)
    return [str(kind) for kind in np.random.default_rng([seed, 4242]).permutation(kinds)]
