"""Overlay pictures of a consistency check: what the checker saw, for a person to look at.

Three panels side by side at the analysis size: the original with its product outline (green); the
generated image with the original outline (green) and the generated product outline (red); a heat map of
the colour drift inside the product (CIE76 Lab difference, 0 = blue .. `2 x max_delta_e` or more = red)
over the generated image in grey. A caption strip gives the verdict, the score and the reasons.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from hfpc_reward.consistency.checker import ConsistencyReport, PairDetails

ORIGINAL_COLOUR = (40, 200, 60)  # RGB outline of the original product
GENERATED_COLOUR = (230, 40, 40)  # RGB outline of the product found in the generated image
CAPTION_HEIGHT = 44


def overlay_image(details: PairDetails, report: ConsistencyReport, max_delta_e: float) -> np.ndarray:
    """The overlay as an (H, 3W, 3) uint8 RGB array (plus a caption strip)."""
    original = _outline(details.original.copy(), details.original_mask, ORIGINAL_COLOUR)
    generated = _outline(details.generated.copy(), details.original_mask, ORIGINAL_COLOUR)
    generated = _outline(generated, details.generated_mask, GENERATED_COLOUR)
    heat = np.clip(details.drift / (2.0 * max_delta_e) * 255.0, 0, 255).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    grey = cv2.cvtColor(cv2.cvtColor(details.generated, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    inside = details.original_mask[..., None]
    drift_panel = np.where(inside, (0.65 * heat + 0.35 * grey), grey).astype(np.uint8)
    panels = np.concatenate([original, generated, drift_panel], axis=1)
    caption = np.full((CAPTION_HEIGHT, panels.shape[1], 3), 255, np.uint8)
    verdict = "CONSISTENT" if report.consistent else "INCONSISTENT"
    lines = [f"{verdict}  score {report.score:.2f}", "; ".join(report.reasons) or "no problem found"]
    for row, text in enumerate(lines):
        ascii_text = text.replace("Δ", "d").encode("ascii", "replace").decode()
        cv2.putText(
            caption,
            ascii_text[:150],
            (6, 17 + 20 * row),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return np.concatenate([panels, caption], axis=0)


def write_overlay(
    path: str | Path, details: PairDetails, report: ConsistencyReport, max_delta_e: float
) -> Path:
    """Write the overlay PNG to `path` (the caller chooses a safe name inside its overlay folder)."""
    path = Path(path)
    Image.fromarray(overlay_image(details, report, max_delta_e)).save(path, format="PNG")
    return path


def _outline(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return cv2.drawContours(np.ascontiguousarray(image), contours, -1, colour, 1)
