"""Overlay pictures of a consistency check: what the checker saw, for a person to look at.

Three titled panels side by side at the analysis size (a smaller image enlarged by a whole factor to at least
MIN_PANEL_WIDTH, nearest-neighbour: its pixels stay visible and the titles and legend fit), over a caption:
- "original": the original with its product outline (green);
- "generated": the generated image with the original outline (green), the product found in it (white
  outline) and, filled in their own colours, what changed: expanded (magenta: product grown beyond the ring
  just outside the outline), bled (orange: product covering that ring, the outline smeared outward, or ring
  pixels that took on the product's colour, the `halo` metric's glow) and lost (cyan: product missing);
- "difference": the colour drift inside the product (CIE76 Lab difference, blue = 0 .. red = `2 x
  max_delta_e` or more) over the generated image in grey.
The caption gives the verdict, the score, the primary reason and the other reasons, wrapped to the width,
then a legend of the colours. Text is sized from the overlay's width, so it fits at any size.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from hfpc_reward.consistency.metrics import box_diagonal
from hfpc_reward.consistency.verdict import ConsistencyReport, PairDetails

ORIGINAL_COLOUR = (40, 200, 60)  # RGB outline of the original product
FOUND_COLOUR = (255, 255, 255)  # RGB outline of the product found in the generated image
EXPANDED_COLOUR = (230, 30, 220)  # RGB fill of product grown beyond the ring around the outline
BLED_COLOUR = (255, 150, 20)  # RGB fill of product covering the ring just outside the outline
LOST_COLOUR = (20, 220, 255)  # RGB fill of product missing from the generated image
LEGEND = (
    ("original outline", ORIGINAL_COLOUR),
    ("product found", FOUND_COLOUR),
    ("expanded", EXPANDED_COLOUR),
    ("bled", BLED_COLOUR),
    ("lost", LOST_COLOUR),
)
MIN_PANEL_WIDTH = 160  # px: narrower panels are enlarged (a 64 px image 3x) so titles and legend fit in full
BLEED_RING = 0.04  # x the product's box diagonal: added product nearer than this to the outline is "bled"
FONT = cv2.FONT_HERSHEY_SIMPLEX


def overlay_image(details: PairDetails, report: ConsistencyReport, max_delta_e: float) -> np.ndarray:
    """The overlay as an (H', 3W, 3) uint8 RGB array: titled panels over a caption (module docstring)."""
    original = _outline(details.original.copy(), details.original_mask, ORIGINAL_COLOUR)
    generated = _changes(details)
    generated = _outline(generated, details.original_mask, ORIGINAL_COLOUR)
    generated = _outline(generated, details.generated_mask, FOUND_COLOUR)
    heat = np.clip(details.drift / (2.0 * max_delta_e) * 255.0, 0, 255).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    grey = cv2.cvtColor(cv2.cvtColor(details.generated, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    inside = details.original_mask[..., None]
    drift_panel = np.where(inside, (0.65 * heat + 0.35 * grey), grey).astype(np.uint8)
    factor = -(-MIN_PANEL_WIDTH // details.original.shape[1])
    if factor > 1:
        original, generated, drift_panel = (
            cv2.resize(panel, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
            for panel in (original, generated, drift_panel)
        )
    width = original.shape[1]
    scale = _font_scale(3 * width)
    titled = [
        np.concatenate([_text_strip([title], width, scale), panel], axis=0)
        for title, panel in (
            ("original", original),
            ("generated", generated),
            ("difference (colour drift)", drift_panel),
        )
    ]
    panels = np.concatenate(titled, axis=1)
    caption = _text_strip(_caption_lines(report), panels.shape[1], scale, wrap=True)
    return np.concatenate([panels, caption, _legend(panels.shape[1], scale)], axis=0)


def write_overlay(
    path: str | Path, details: PairDetails, report: ConsistencyReport, max_delta_e: float
) -> Path:
    """Write the overlay PNG to `path` (the caller chooses a safe name inside its overlay folder)."""
    path = Path(path)
    Image.fromarray(overlay_image(details, report, max_delta_e)).save(path, format="PNG")
    return path


def _changes(details: PairDetails) -> np.ndarray:
    """The generated image with expanded, bled and lost pixels tinted in their colours."""
    out = details.generated.astype(np.float32)
    added = details.generated_mask & ~details.original_mask
    lost = details.original_mask & ~details.generated_mask
    ring = max(1.0, BLEED_RING * box_diagonal(details.original_mask))
    distance = cv2.distanceTransform((~details.original_mask).astype(np.uint8), cv2.DIST_L2, 3)
    for region, colour in (
        (added & (distance > ring), EXPANDED_COLOUR),
        ((added & (distance <= ring)) | (details.glow & ~added), BLED_COLOUR),
        (lost, LOST_COLOUR),
    ):
        out[region] = 0.35 * out[region] + 0.65 * np.float32(colour)
    return out.astype(np.uint8)


def _caption_lines(report: ConsistencyReport) -> list[str]:
    if report.error is not None:
        return [f"ERROR  {report.error}"]
    verdict = "CONSISTENT" if report.consistent else f"INCONSISTENT: {report.primary_reason}"
    return [f"{verdict}  score {report.score:.2f}", "; ".join(report.reasons) or "no problem found"]


def _font_scale(width: int) -> float:
    return float(np.clip(width / 1500.0, 0.3, 1.2))


def _line_height(scale: float) -> int:
    return round(26 * scale) + 4


def _text_strip(lines: list[str], width: int, scale: float, wrap: bool = False) -> np.ndarray:
    """White strip with `lines` in black, each wrapped (when `wrap`) or cut to fit `width`."""
    margin = max(3, int(6 * scale))
    fitted = []
    for line in lines:
        text = _ascii(line)
        fitted += _wrap(text, width - 2 * margin, scale) if wrap else [_cut(text, width - 2 * margin, scale)]
    height = _line_height(scale)
    strip = np.full((height * len(fitted) + margin, width, 3), 255, np.uint8)
    for row, text in enumerate(fitted):
        baseline = height * (row + 1) - max(2, int(6 * scale))
        cv2.putText(strip, text, (margin, baseline), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def _legend(width: int, scale: float) -> np.ndarray:
    height = _line_height(scale)
    strip = np.full((height + 4, width, 3), 255, np.uint8)
    x, swatch = max(3, int(6 * scale)), max(6, int(16 * scale))
    for name, colour in LEGEND:
        text_width = cv2.getTextSize(name, FONT, scale, 1)[0][0]
        if x + swatch + 4 + text_width > width:
            break  # a narrow overlay shows the legend entries that fit
        cv2.rectangle(strip, (x, 4), (x + swatch, 4 + swatch), colour, -1)
        cv2.rectangle(strip, (x, 4), (x + swatch, 4 + swatch), (0, 0, 0), 1)
        cv2.putText(strip, name, (x + swatch + 4, 4 + swatch), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
        x += swatch + 4 + text_width + 2 * swatch
    return strip


def _wrap(text: str, width: int, scale: float) -> list[str]:
    lines, current = [], ""
    for word in text.split(" "):
        candidate = f"{current} {word}".strip()
        if current and cv2.getTextSize(candidate, FONT, scale, 1)[0][0] > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return [_cut(line, width, scale) for line in lines + [current]]


def _cut(text: str, width: int, scale: float) -> str:
    while text and cv2.getTextSize(text, FONT, scale, 1)[0][0] > width:
        text = text[:-2] + "~" if len(text) > 1 else ""
    return text


def _ascii(text: str) -> str:
    return text.replace("Δ", "d").encode("ascii", "replace").decode()


def _outline(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(max(image.shape[:2]) / 300))
    return cv2.drawContours(np.ascontiguousarray(image), contours, -1, colour, thickness)
