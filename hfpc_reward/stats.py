"""The one metrics module: precision / recall / F1, thresholds, grouped bootstrap CIs, paired tests.

Conventions used throughout: `scores` are "higher = more likely to pass", `labels` are 1 (pass, the
positive class) / 0 (fail), and a row is predicted to pass when `score >= threshold` (scikit-learn's
convention for `precision_recall_curve` thresholds). Confidence intervals resample whole groups
(originals / products), never rows, because rows of one original are strongly correlated.
Paired comparisons (two versions judged on the same products) test per-group differences.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)

from hfpc_reward.errors import UsageError

logger = logging.getLogger(__name__)

# The precision the HFPC paper reports for its judge; recall at this precision is a headline metric.
HEADLINE_PRECISION = 0.964
PAIRED_TESTS = ("permutation", "bootstrap")  # p-value methods of paired_difference_test
P_VALUE_TIE_TOLERANCE = 1e-12  # a null statistic this close to the observed one counts as reaching it


class CalibrationError(UsageError):
    """A threshold cannot be chosen or a metric cannot be computed; the message says why."""


def pick_threshold(
    scores: Sequence[float], labels: Sequence[int], target_precision: float | None = None
) -> float:
    """The pass threshold (predict pass when score >= threshold) chosen on labelled scores.

    With `target_precision`, the threshold with the highest recall whose precision reaches the target
    (ties: the higher threshold); without it, the threshold with the best F1. Raises CalibrationError when
    there are no positives, or when no threshold reaches the target precision.
    """
    scores, labels = _as_arrays(scores, labels)
    if labels.sum() == 0:
        raise CalibrationError("cannot pick a threshold: the labels contain no positive (label 1) rows")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # precision/recall have one more entry than thresholds (the final point recall=0, precision=1).
    precision, recall = precision[:-1], recall[:-1]
    if target_precision is None:
        f1 = np.where(
            precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0
        )
        best = int(np.flatnonzero(f1 == f1.max())[-1])
        return float(thresholds[best])
    if not 0.0 < target_precision <= 1.0:
        raise CalibrationError(f"target_precision must be in (0, 1], got {target_precision}")
    reachable = np.flatnonzero(precision >= target_precision)
    if reachable.size == 0:
        raise CalibrationError(
            f"no threshold reaches precision {target_precision:.3f} on these {labels.size} rows "
            f"(best precision {precision.max():.3f}); lower the target precision or use more data"
        )
    best_recall = recall[reachable].max()
    chosen = reachable[recall[reachable] == best_recall][-1]
    return float(thresholds[chosen])


def recall_at_precision(scores: Sequence[float], labels: Sequence[int], min_precision: float) -> float:
    """The highest recall of any threshold whose precision is >= `min_precision` (0.0 when none is)."""
    scores, labels = _as_arrays(scores, labels)
    if labels.sum() == 0:
        return float("nan")
    precision, recall, _ = precision_recall_curve(labels, scores)
    ok = (precision[:-1] >= min_precision) & (recall[:-1] > 0)
    return float(recall[:-1][ok].max()) if ok.any() else 0.0


def expected_calibration_error(
    probabilities: Sequence[float], labels: Sequence[int], n_bins: int = 10
) -> float:
    """Expected calibration error of pass probabilities: bin-size-weighted |mean label - mean probability|
    over `n_bins` equal-width bins on [0, 1]."""
    probabilities, labels = _as_arrays(probabilities, labels)
    if probabilities.min() < 0.0 or probabilities.max() > 1.0:
        raise CalibrationError("expected calibration error needs probabilities in [0, 1]; got values outside")
    bins = np.minimum((probabilities * n_bins).astype(int), n_bins - 1)
    prob_sum = np.bincount(bins, weights=probabilities, minlength=n_bins)
    label_sum = np.bincount(bins, weights=labels.astype(float), minlength=n_bins)
    # sum over bins of (count / n) * |mean label - mean probability| = sum |label sum - probability sum| / n
    return float(np.abs(label_sum - prob_sum).sum() / labels.size)


def precision_recall_f1(truth: Sequence[bool], predicted: Sequence[bool]) -> dict[str, float]:
    """Precision, recall and F1 of predicting the positive class (True) against `truth`, 0.0 where undefined
    (scikit-learn's `zero_division=0`)."""
    precision, recall, f1, _ = precision_recall_fscore_support(
        np.asarray(truth, dtype=bool),
        np.asarray(predicted, dtype=bool),
        average="binary",
        pos_label=True,
        zero_division=0.0,
    )
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def binary_metrics(
    scores: Sequence[float],
    labels: Sequence[int],
    threshold: float,
    probabilities: Sequence[float] | None = None,
    headline_precision: float = HEADLINE_PRECISION,
) -> dict[str, float]:
    """Pass-class metrics at `threshold` plus threshold-free ones.

    Keys: n, n_positive, threshold, precision, recall, f1 (at the threshold), pr_auc (average precision),
    roc_auc, `recall_at_precision_<headline_precision>`, and ece when `probabilities` (pass probabilities
    in [0,1], one per row) are given. Threshold-free metrics are NaN when only one class is present.
    """
    scores, labels = _as_arrays(scores, labels)
    both_classes = 0 < labels.sum() < labels.size
    metrics = {
        "n": int(labels.size),
        "n_positive": int(labels.sum()),
        "threshold": float(threshold),
        **precision_recall_f1(labels == 1, scores >= threshold),
        "pr_auc": float(average_precision_score(labels, scores)) if both_classes else float("nan"),
        "roc_auc": float(roc_auc_score(labels, scores)) if both_classes else float("nan"),
        f"recall_at_precision_{headline_precision:g}": recall_at_precision(
            scores, labels, headline_precision
        ),
    }
    if probabilities is not None:
        metrics["ece"] = expected_calibration_error(probabilities, labels)
    return metrics


def grouped_bootstrap_ci(
    metric_fn: Callable[[np.ndarray], float | dict[str, float]],
    groups: Sequence[Hashable],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Percentile bootstrap confidence intervals that resample whole groups with replacement.

    `groups` gives each row's group (e.g. its original image); `metric_fn(row_indices)` computes the
    metric(s) on the rows at those indices (repeats allowed) and returns a float or a dict of floats.
    Returns {"estimate", "low", "high", "n_valid"} for a float metric, or {name: that dict} for a dict.
    Resamples where a metric is NaN (e.g. only one class drawn) are left out of its interval and
    counted out of `n_valid`.
    """
    if not 0.0 < confidence < 1.0:
        raise CalibrationError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise CalibrationError(f"n_resamples must be >= 1, got {n_resamples}")
    first_seen: dict[Hashable, int] = {}
    group_ids = np.asarray([first_seen.setdefault(g, len(first_seen)) for g in groups], dtype=np.int64)
    if group_ids.size == 0:
        raise CalibrationError("cannot bootstrap an empty set of rows")
    rows_of_group = np.split(np.argsort(group_ids, kind="stable"), np.cumsum(np.bincount(group_ids))[:-1])
    estimate = metric_fn(np.arange(group_ids.size))
    names = list(estimate) if isinstance(estimate, dict) else [None]
    samples = {name: np.empty(n_resamples) for name in names}
    rng = np.random.default_rng(seed)
    for i in range(n_resamples):
        drawn = rng.integers(0, len(rows_of_group), size=len(rows_of_group))
        value = metric_fn(np.concatenate([rows_of_group[g] for g in drawn]))
        for name in names:
            samples[name][i] = value[name] if name is not None else value
    tail = (1.0 - confidence) / 2.0 * 100.0
    result = {}
    for name in names:
        valid = samples[name][np.isfinite(samples[name])]
        low, high = np.percentile(valid, [tail, 100.0 - tail]) if valid.size else (float("nan"),) * 2
        point = estimate[name] if name is not None else estimate
        result[name] = {
            "estimate": float(point),
            "low": float(low),
            "high": float(high),
            "n_valid": int(valid.size),
        }
    return result[None] if names == [None] else result


def paired_difference_test(
    differences: Sequence[float],
    groups: Sequence[Hashable],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "permutation",
) -> dict[str, Any]:
    """Mean of per-group paired `differences` (e.g. candidate - reference pass rate per product), its
    bootstrap interval over groups, and a two-sided p-value for "no difference": a sign-flip permutation
    test ("permutation": exact under the null that the two sides are exchangeable per group, at most
    conservative) or a centred bootstrap ("bootstrap")."""
    if method not in PAIRED_TESTS:
        raise CalibrationError(f"paired test must be one of {PAIRED_TESTS}, got {method!r}")
    diffs = np.asarray(differences, dtype=np.float64)
    ci = grouped_bootstrap_ci(lambda rows: float(diffs[rows].mean()), groups, n_resamples, confidence, seed)
    observed = abs(diffs.mean())
    rng = np.random.default_rng(seed)
    if method == "permutation":
        signs = rng.choice((-1.0, 1.0), size=(n_resamples, diffs.size))
        null = np.abs((signs * diffs).mean(axis=1))
    else:
        centred = diffs - diffs.mean()
        null = np.abs(centred[rng.integers(0, diffs.size, size=(n_resamples, diffs.size))].mean(axis=1))
    p_value = float((1 + np.sum(null >= observed - P_VALUE_TIE_TOLERANCE)) / (1 + n_resamples))
    return {
        "estimate": ci["estimate"],
        "low": ci["low"],
        "high": ci["high"],
        "p_value": p_value,
        "test": method,
        "better": int(np.sum(diffs > 0)),
        "worse": int(np.sum(diffs < 0)),
    }


def _as_arrays(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.size != labels.size:
        raise CalibrationError(f"scores and labels differ in length ({scores.size} vs {labels.size})")
    if scores.size == 0:
        raise CalibrationError("no rows: scores and labels are empty")
    if not np.isfinite(scores).all():
        raise CalibrationError("scores contain NaN or infinite values")
    if not np.isin(labels, (0, 1)).all():
        raise CalibrationError("labels must be 0 or 1")
    return scores, labels.astype(int)
