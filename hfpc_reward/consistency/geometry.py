"""Box geometry shared by the detecting backends and the segmenter fine-tune: mask <-> box, IoU, box choice."""

from __future__ import annotations

import math

import numpy as np


def choose_box(boxes: np.ndarray, scores: np.ndarray, reference: np.ndarray | None, policy: str) -> int:
    """Index of the box to segment: "highest-score", or "best-overlap" = highest IoU with `reference`
    (ties and no overlap at all fall back to the highest score; so does a missing reference)."""
    if len(boxes) == 0:
        raise ValueError("choose_box needs at least one box")
    by_score = int(np.argmax(scores))
    if policy == "highest-score" or reference is None:
        return by_score
    if policy != "best-overlap":
        raise ValueError(f"box choice must be 'best-overlap' or 'highest-score', got {policy!r}")
    overlaps = box_iou(np.asarray(boxes, dtype=np.float64), np.asarray(reference, dtype=np.float64))
    if overlaps.max() <= 0.0:
        return by_score
    best = np.flatnonzero(overlaps == overlaps.max())
    return int(best[np.argmax(np.asarray(scores)[best])])


def box_iou(boxes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """IoU of each box (N, 4) xyxy with one reference box (4,)."""
    x0 = np.maximum(boxes[:, 0], reference[0])
    y0 = np.maximum(boxes[:, 1], reference[1])
    x1 = np.minimum(boxes[:, 2], reference[2])
    y1 = np.minimum(boxes[:, 3], reference[3])
    intersection = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = areas + (reference[2] - reference[0]) * (reference[3] - reference[1]) - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """The tight xyxy pixel box (float32, exclusive right/bottom edge) around a bool mask; None if empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def box_mask(box: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool (H, W) mask of the pixels a xyxy box touches (rounded outwards, clipped to the image)."""
    height, width = size
    x0, y0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    x1, y1 = min(width, math.ceil(box[2])), min(height, math.ceil(box[3]))
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def sam_input_boxes(
    boxes: np.ndarray, original_size: tuple[int, int], reshaped_size: tuple[int, int]
) -> np.ndarray:
    """Boxes (N, 4) in pixels of the image -> SAM's input frame (the image resized inside its padded square)."""
    scale = np.array(
        [reshaped_size[1] / original_size[1], reshaped_size[0] / original_size[0]] * 2, dtype=np.float32
    )
    return (np.asarray(boxes, dtype=np.float32) * scale).astype(np.float32)
