"""`hfpc calibrate-consistency`: fit the verdict thresholds on a labelled manifest.

    hfpc calibrate-consistency --manifest M.jsonl --out configs/consistency/mine.yaml [--best-f1 | --target-precision P]

The thresholds are fitted on a part of the originals and reported on the others (`--holdout`, the share
of originals held out, split by original with hfpc_reward.data.splits so that no product is in both):
the numbers on the fitted rows chose the thresholds and are printed only as such. With fewer than two
labelled originals nothing can be held out; the run says so.

Ground truth per row: the `consistent` field (bool; results rows keep it as `consistent_truth`), else the HFPC `label` (1 = accepted = consistent; note
that human labels also reject pairs for their background, so they are a noisier target). The rows are
checked once (results cached in `--results`, default <out>.results.jsonl, resumable), then every threshold
of ThresholdConfig is fitted by coordinate ascent over candidate values (midpoints between quantiles of
that metric), a few rounds, starting from the current config; a last pass moves each threshold to its most
lenient value that keeps the objective within `SLACK` of the best, so the fitted thresholds keep a margin
for pairs not seen in calibration. The detection task is "inconsistent" as the
positive class: `--best-f1` maximises F1; `--target-precision P` maximises recall among settings with
precision >= P; `--max-rejection R` maximises recall among settings that reject at most R of the
consistent rows. The output YAML is the input config delta (if any) with the fitted `thresholds` section,
loadable with `--config`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from hfpc_reward.consistency.config import ThresholdConfig
from hfpc_reward.stats import precision_recall_f1

logger = logging.getLogger(__name__)

TRUTH_FIELD = "consistent_truth"  # results rows keep the input's ground-truth `consistent` under this name
ROUNDS = 4  # coordinate-ascent passes over all thresholds
CANDIDATES = 64  # quantiles of each metric tried as its threshold
SLACK = 0.005  # F1 (or recall) given up per threshold for a more lenient value, i.e. a margin on unseen data


def ground_truth(record: dict[str, Any]) -> bool | None:
    """Of a results record: True = the product is truly consistent (the input row's `consistent`, kept as
    `consistent_truth`), else from `label` (1 = accepted); None = unknown."""
    if isinstance(record.get(TRUTH_FIELD), bool):
        return record[TRUTH_FIELD]
    if record.get("label") in (0, 1):
        return record["label"] == 1
    return None


def detection_metrics(
    truth_consistent: Sequence[bool], predicted_consistent: Sequence[bool]
) -> dict[str, float]:
    """Detecting inconsistent products (the positive class): precision, recall, F1, and the share of
    truly consistent rows that were rejected (`false_rejection`)."""
    truth = ~np.asarray(truth_consistent, dtype=bool)
    flagged = ~np.asarray(predicted_consistent, dtype=bool)
    n_consistent = int((~truth).sum())
    return {
        "n": int(truth.size),
        "n_inconsistent": int(truth.sum()),
        **precision_recall_f1(truth, flagged),
        "false_rejection": int((~truth & flagged).sum()) / max(n_consistent, 1),
    }


FIT_PART, HELD_OUT_PART = "fit", "held_out"


def split_for_calibration(
    rows: Sequence[Any], records: Sequence[dict[str, Any]], holdout: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(records to fit on, held-out records): `records[i]` is the result of `rows[i]` (ManifestRow), split
    by original so that every row of one product is on one side. Nothing is held out when `holdout` is 0
    or the rows have fewer than two originals."""
    from hfpc_reward.data.splits import split_by_original

    if holdout <= 0 or len({row.origin for row in rows}) < 2:
        return list(records), []
    position = {id(row): i for i, row in enumerate(rows)}
    parts = split_by_original(rows, {FIT_PART: 1.0 - holdout, HELD_OUT_PART: holdout}, seed=seed)
    return tuple([records[position[id(row)]] for row in parts[name]] for name in (FIT_PART, HELD_OUT_PART))


def fit_thresholds(
    metrics: list[dict[str, float]],
    truth_consistent: Sequence[bool],
    start: ThresholdConfig,
    target_precision: float | None = None,
    slack: float = SLACK,
    max_rejection: float | None = None,
) -> ThresholdConfig:
    """Thresholds maximising F1 (or recall at `target_precision`, or recall with at most `max_rejection` of
    the consistent rows rejected: what an RL reward needs) of detecting inconsistent rows.

    Coordinate ascent finds the best objective; a last pass then moves each threshold to its most lenient
    value that keeps the objective within `slack` of that best (a margin for unseen consistent pairs).
    """
    from hfpc_reward.consistency.verdict import CHECKS

    if not metrics:
        raise ValueError("no checked rows to calibrate on")
    truth = ~np.asarray(truth_consistent, dtype=bool)
    if truth.all() or not truth.any():
        raise ValueError("calibration needs both consistent and inconsistent rows")
    values = {name: np.array([m[name] for m in metrics], dtype=np.float64) for name, *_ in CHECKS}
    limits = {field: getattr(start, field) for _, field, _, *_ in CHECKS}

    def fails(name: str, field: str, kind: str, limit: float) -> np.ndarray:
        return values[name] > limit if kind == "max" else values[name] < limit

    def objective(flagged: np.ndarray) -> tuple:
        m = detection_metrics(~truth, ~flagged)
        if max_rejection is not None:
            reached = m["false_rejection"] <= max_rejection
            return (reached, m["recall"] if reached else -m["false_rejection"])
        if target_precision is None:
            return (m["f1"],)
        reached = m["precision"] >= target_precision
        return (reached, m["recall"] if reached else m["precision"])

    def sweep(floor: tuple | None) -> tuple:
        """One pass over the thresholds; each takes the most lenient value whose objective is the best one
        (floor None) or at least `floor`. Returns the objective after the pass."""
        for name, field, kind, *_ in CHECKS:
            others = np.zeros(truth.size, dtype=bool)
            for other, other_field, other_kind, *_ in CHECKS:
                if other != name:
                    others |= fails(other, other_field, other_kind, limits[other_field])
            quantiles = np.unique(np.quantile(values[name], np.linspace(0, 1, CANDIDATES)))
            candidates = np.concatenate([(quantiles[:-1] + quantiles[1:]) / 2, [limits[field]]])
            candidates = np.clip(candidates, 0.0, 0.999) if kind == "min" else np.maximum(candidates, 1e-4)
            scored = [(objective(others | fails(name, field, kind, c)), c) for c in candidates]
            target = floor if floor is not None else max(score for score, _ in scored)
            good = [c for score, c in scored if score[:-1] == target[:-1] and score[-1] >= target[-1]]
            limits[field] = float(max(good) if kind == "max" else min(good))
        return objective(np.any([fails(n, f, k, limits[f]) for n, f, k, *_ in CHECKS], axis=0))

    for _ in range(ROUNDS):  # coordinate ascent to the best objective
        best = sweep(None)
    # then relax every threshold as far as the objective stays within `slack` of that best, in total
    sweep(best[:-1] + (best[-1] - slack,))
    return replace(start, **{field: round(value, 5) for field, value in limits.items()})
