"""Manifest rows as reward-model input: local-image guard, prompts, batches, scores and cached features."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from hfpc_reward.data.manifest import FETCH_HINT, ManifestError, ManifestRow, is_url
from hfpc_reward.images import ImageLoadError
from hfpc_reward.reward.model import HFPCRewardModel

logger = logging.getLogger(__name__)


def require_local_images(rows: Sequence[ManifestRow], manifest: str | os.PathLike) -> None:
    """Raise ManifestError when a manifest still points at URLs: the reward model reads local files only."""
    remote = sum(1 for row in rows if any(s and is_url(s) for s in (row.origin, row.generation)))
    if remote:
        raise ManifestError(f"{manifest}: {remote} of {len(rows)} rows reference http(s) URLs; {FETCH_HINT}")


def row_text(row: ManifestRow) -> str | None:
    """The query text of a manifest row: its background prompt, else its category, else None (default)."""
    return row.prompt or row.category


def iter_row_batches(
    model: HFPCRewardModel, rows: Sequence[ManifestRow], batch_size: int
) -> Iterator[tuple[list[int], torch.Tensor | None, torch.Tensor, list[str | None]]]:
    """(row indices, original pixels or None, generated pixels, texts) per batch of readable rows.

    A row whose original or generation cannot be read is logged and left out; the rest of its batch stays.
    """
    for start in range(0, len(rows), batch_size):
        indices, originals, generated = [], [], []
        for index in range(start, min(start + batch_size, len(rows))):
            row = rows[index]
            try:
                if row.generation is None:
                    raise ImageLoadError(f"row at line {row.line} has no generation")
                gen = model.load_pixels([row.generation])[0]
                orig = model.load_pixels([row.origin])[0] if model.config.referenced else None
            except ImageLoadError as exc:
                logger.warning("skipping manifest line %d: %s", row.line, exc)
                continue
            indices.append(index)
            generated.append(gen)
            originals.append(orig)
        if indices:
            stacked_originals = torch.stack(originals) if model.config.referenced else None
            yield indices, stacked_originals, torch.stack(generated), [row_text(rows[i]) for i in indices]


@torch.inference_mode()
def score_rows(
    model: HFPCRewardModel, rows: Sequence[ManifestRow], batch_size: int = 32, standardise: bool = True
) -> np.ndarray:
    """Scores of manifest rows as float64 (n,); NaN where a row's images could not be read."""
    was_training = model.training
    model.eval()
    scores = np.full(len(rows), np.nan)
    for indices, originals, generated, texts in tqdm(
        iter_row_batches(model, rows, batch_size),
        total=math.ceil(len(rows) / batch_size),
        desc="scoring",
        leave=False,
    ):
        scores[indices] = model(originals, generated, texts, standardise).float().cpu().numpy()
    model.train(was_training)
    return scores


@torch.inference_mode()
def row_features(
    model: HFPCRewardModel, rows: Sequence[ManifestRow], batch_size: int = 32
) -> tuple[torch.Tensor, np.ndarray]:
    """Fused [CLS] features (n, Dt) of manifest rows for head-only training, and a mask of readable rows."""
    was_training = model.training
    model.eval()
    features = torch.zeros(
        len(rows), model.text.config.hidden_size, device=model.device, dtype=model.segment.dtype
    )
    readable = np.zeros(len(rows), dtype=bool)
    for indices, originals, generated, texts in tqdm(
        iter_row_batches(model, rows, batch_size),
        total=math.ceil(len(rows) / batch_size),
        desc="caching features",
    ):
        original_tokens = model.encode_images(originals) if originals is not None else None
        features[indices] = model.fused_features(original_tokens, model.encode_images(generated), texts)
        readable[indices] = True
    model.train(was_training)
    return features, readable
