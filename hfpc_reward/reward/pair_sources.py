"""Pair sources of reward training: the (positive, negative) micro-batches each process trains on.

Pairs are formed within one original (every label-1 row against every label-0 row of it). Each epoch's
order is a seeded permutation of the pairs, or a cluster-balanced draw with replacement; it is cut into
global micro-batches of `batch_size x world` pairs and process r takes its slice (padded like
DistributedSampler), so each rank trains on its own shard and W processes see what 1 process sees.

Two sources share one interface and feed the one step function (`train.compute_loss`):
- `PixelPairs`: loads each pair's images (DataLoader workers) for a backbone that trains;
- `CachedFeaturePairs`: the fused features of every row computed once (backbone frozen), head only.
`source.micro_batches(indices, epoch)` yields a `PairBatch` (or None when every pair of a micro-batch had
an unreadable image); `batch.rewards(module)` gives the raw rewards (r_pos, r_neg); `source.validate(model)`
gives the pairwise accuracy and loss on the held-out pairs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hfpc_reward.data.manifest import ManifestRow
from hfpc_reward.reward.model import HFPCRewardModel
from hfpc_reward.reward.rows import iter_row_batches, row_features, score_rows

logger = logging.getLogger(__name__)

Pair = tuple[ManifestRow, ManifestRow]  # (label-1 row, label-0 row) of one original


def epoch_order(pairs: list[Pair], epoch: int, seed: int, assignment: dict | None) -> np.ndarray:
    """The pair indices of one epoch: a seeded permutation, or a cluster-balanced draw with replacement."""
    if assignment is None:
        return np.random.default_rng([seed, epoch]).permutation(len(pairs))
    from hfpc_reward.data.clusters import balanced_pair_sampler

    sampler = balanced_pair_sampler(pairs, assignment, seed=seed)
    sampler.set_epoch(epoch)
    return np.fromiter(sampler, dtype=np.int64)


def micro_batches(order: np.ndarray, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """This process's pair indices per micro-batch of an epoch's `order` (padded like DistributedSampler)."""
    global_size = batch_size * world
    batches = []
    for start in range(0, len(order), global_size):
        chunk = order[start : start + global_size]
        per_process = math.ceil(len(chunk) / world)
        chunk = np.concatenate([chunk, order[: per_process * world - len(chunk)]])
        batches.append(chunk[rank * per_process : (rank + 1) * per_process].tolist())
    return batches


@dataclass
class PixelPairBatch:
    """Pixels of B pairs: originals (B,3,H,W) or None (unreferenced model), positives and negatives (B,3,H,W),
    texts (2B: the positives' then the negatives')."""

    originals: torch.Tensor | None
    positives: torch.Tensor
    negatives: torch.Tensor
    texts: list[str | None]

    def rewards(self, module: torch.nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        originals = None if self.originals is None else self.originals.to(device)
        generated = torch.cat([self.positives, self.negatives]).to(device)
        return module(originals, generated, self.texts, standardise=False).float().chunk(2)


@dataclass
class FeaturePairBatch:
    """Cached fused features of B pairs: (2B, D), the positives' rows then the negatives'."""

    features: torch.Tensor

    def rewards(self, module: torch.nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return module(self.features.to(device)).squeeze(-1).float().chunk(2)


PairBatch = PixelPairBatch | FeaturePairBatch


class _PairImages(torch.utils.data.Dataset):
    """Pair index -> (original, positive, negative pixels, texts), or None when an image is unreadable."""

    def __init__(self, model: HFPCRewardModel, pairs: list[Pair]):
        self.model, self.pairs = model, pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        batches = list(iter_row_batches(self.model, list(self.pairs[index]), batch_size=2))
        if not batches or len(batches[0][0]) != 2:
            return None
        _, originals, generated, texts = batches[0]
        return (originals[0] if originals is not None else None), generated[0], generated[1], texts


def _collate_pairs(items) -> PixelPairBatch | None:
    items = [item for item in items if item is not None]
    if not items:
        return None
    return PixelPairBatch(
        originals=None if items[0][0] is None else torch.stack([item[0] for item in items]),
        positives=torch.stack([item[1] for item in items]),
        negatives=torch.stack([item[2] for item in items]),
        texts=[item[3][0] for item in items] + [item[3][1] for item in items],
    )


class PixelPairs:
    """Pairs read from their images for every micro-batch (the backbone trains)."""

    def __init__(
        self,
        model: HFPCRewardModel,
        train_pairs: list[Pair],
        valid_rows: list[ManifestRow],
        valid_pairs: list[Pair],
        *,
        num_workers: int,
        eval_batch_size: int,
        seed: int,
    ):
        self.model, self.train_pairs = model, train_pairs
        self.valid_rows, self.valid_pairs = valid_rows, valid_pairs
        self.num_workers, self.eval_batch_size, self.seed = num_workers, eval_batch_size, seed
        self.trained_module: torch.nn.Module = model

    def micro_batches(self, indices: list[list[int]], epoch: int) -> Iterator[PixelPairBatch | None]:
        yield from torch.utils.data.DataLoader(
            _PairImages(self.model, self.train_pairs),
            batch_sampler=indices,
            num_workers=self.num_workers,
            collate_fn=_collate_pairs,
            # own generator: creating the iterator must not consume the global RNG (exact resume)
            generator=torch.Generator().manual_seed(self.seed + epoch),
        )

    def validate(self) -> tuple[float, float]:
        if not self.valid_pairs:
            return float("nan"), float("nan")
        raw = score_rows(self.model, self.valid_rows, self.eval_batch_size, standardise=False)
        position = {id(row): i for i, row in enumerate(self.valid_rows)}
        diff = np.array([raw[position[id(p)]] - raw[position[id(n)]] for p, n in self.valid_pairs])
        diff = torch.from_numpy(diff[np.isfinite(diff)])
        return float((diff > 0).double().mean()), float(-F.logsigmoid(diff).mean())


class CachedFeaturePairs:
    """Pairs as rows of a fused-feature cache computed once (backbone frozen: only the head trains).

    Pairs with an unreadable image are dropped from `train_pairs` before any epoch order is drawn."""

    def __init__(
        self,
        model: HFPCRewardModel,
        train_pairs: list[Pair],
        valid_pairs: list[Pair],
        *,
        eval_batch_size: int,
    ):
        self.model = model
        index: dict[int, int] = {}
        rows: list[ManifestRow] = []
        pair_rows = {}
        for name, pairs in (("train", train_pairs), ("valid", valid_pairs)):
            for row in (r for pair in pairs for r in pair):
                if id(row) not in index:
                    index[id(row)] = len(rows)
                    rows.append(row)
            pair_rows[name] = np.array([[index[id(p)], index[id(n)]] for p, n in pairs], dtype=np.int64)
            pair_rows[name] = pair_rows[name].reshape(
                -1, 2
            )  # (pairs, 2): row of the positive, of the negative
        self.features, readable = row_features(model, rows, eval_batch_size)  # (rows, D)
        kept = {}
        for name in pair_rows:
            kept[name] = readable[pair_rows[name]].all(axis=1)
            if not kept[name].all():
                logger.warning("dropping %d %s pairs with unreadable images", int((~kept[name]).sum()), name)
            pair_rows[name] = pair_rows[name][kept[name]]
        self.train_pairs = [pair for pair, ok in zip(train_pairs, kept["train"]) if ok]
        self.pair_rows = pair_rows
        self.trained_module: torch.nn.Module = model.head

    def micro_batches(self, indices: list[list[int]], epoch: int) -> Iterator[FeaturePairBatch]:
        for batch in indices:
            pos, neg = self.pair_rows["train"][batch].T
            yield FeaturePairBatch(self.features[np.concatenate([pos, neg])])

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        pairs = self.pair_rows["valid"]
        if len(pairs) == 0:
            return float("nan"), float("nan")
        head = self.model.head
        was_training = head.training
        head.eval()
        scores = head(self.features).squeeze(-1).float()
        head.train(was_training)
        diff = scores[pairs[:, 0]] - scores[pairs[:, 1]]
        return float((diff > 0).float().mean()), float(-F.logsigmoid(diff).mean())
