"""`hfpc eval-reward`: how well a reward model separates passed from rejected generations.

Metrics (JSON): pairwise accuracy within originals (ties count half); for the pass class at the model's
stored threshold precision, recall and F1; PR-AUC, ROC-AUC, recall at precision >= 0.964; expected
calibration error when the model has fitted pass probabilities (`hfpc calibrate-reward`). Every metric
gets a bootstrap confidence interval that resamples whole originals. Also writes `pr_curve.png` and
`score_histogram.png` next to the metrics file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hfpc_reward.data.manifest import ManifestError, ManifestRow, comparison_pairs
from hfpc_reward.reward.model import HFPCRewardModel
from hfpc_reward.reward.rows import score_rows
from hfpc_reward.stats import binary_metrics, grouped_bootstrap_ci

logger = logging.getLogger(__name__)


def pairwise_accuracy(scores: np.ndarray, pairs: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Share of (positive, negative) row-index pairs (n,2) scored in the right order; ties count half.

    `weights` (n,) counts each pair (a bootstrap draws an original's pairs as often as the original).
    """
    weights = np.ones(len(pairs)) if weights is None else np.asarray(weights, dtype=float)
    if len(pairs) == 0 or weights.sum() == 0:
        return float("nan")
    diff = scores[pairs[:, 0]] - scores[pairs[:, 1]]
    return float(np.average((diff > 0) + 0.5 * (diff == 0), weights=weights))


def evaluate_scores(
    scores: np.ndarray,
    rows: Sequence[ManifestRow],
    threshold: float,
    probabilities: np.ndarray | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Metrics and grouped-bootstrap 95% CIs of per-row scores (NaN = unreadable row, left out)."""
    keep = np.flatnonzero(np.isfinite(scores))
    rows = [rows[i] for i in keep]
    scores = scores[keep]
    probabilities = None if probabilities is None else probabilities[keep]
    labels = np.array([row.label for row in rows])
    position = {id(row): i for i, row in enumerate(rows)}
    pairs = np.array([[position[id(p)], position[id(n)]] for p, n in comparison_pairs(rows)], dtype=np.int64)
    pairs = pairs.reshape(-1, 2)

    def metrics(indices: np.ndarray) -> dict:
        result = binary_metrics(
            scores[indices],
            labels[indices],
            threshold,
            None if probabilities is None else probabilities[indices],
        )
        # all rows of an original are drawn together, so a pair's weight is how often its original was drawn
        result["pairwise_accuracy"] = pairwise_accuracy(
            scores, pairs, np.bincount(indices, minlength=len(rows))[pairs[:, 0]]
        )
        return result

    groups = [row.origin for row in rows]
    cis = grouped_bootstrap_ci(metrics, groups, n_resamples=n_resamples, seed=seed)
    return {
        "metrics": metrics(np.arange(len(rows))),
        "confidence_intervals": {
            name: [ci["low"], ci["high"]]
            for name, ci in cis.items()
            if name not in ("n", "n_positive", "threshold")
        },
        "confidence": 0.95,
        "bootstrap_resamples": n_resamples,
        "originals": len(set(groups)),
        "rows": len(rows),
        "pairs": len(pairs),
    }


def plot_curves(scores: np.ndarray, labels: np.ndarray, threshold: float, out_dir: Path) -> list[Path]:
    """PR curve and score histogram by label as PNGs in `out_dir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import PrecisionRecallDisplay

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 4))
    PrecisionRecallDisplay.from_predictions(labels, scores, ax=ax, name="reward model")
    ax.axhline(0.964, color="grey", linestyle=":", label="precision 0.964")
    ax.legend(loc="lower left")
    ax.set_title("Pass class: precision vs recall")
    pr_path = out_dir / "pr_curve.png"
    fig.savefig(pr_path, dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    bins = np.histogram_bin_edges(scores, bins=40)
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="passed (label 1)", color="tab:green")
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="rejected (label 0)", color="tab:red")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.2f}")
    ax.set_xlabel("standardised reward score")
    ax.set_ylabel("rows")
    ax.legend()
    hist_path = out_dir / "score_histogram.png"
    fig.savefig(hist_path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return [pr_path, hist_path]


def evaluate_model(
    model: HFPCRewardModel,
    rows: Sequence[ManifestRow],
    batch_size: int = 32,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[dict, np.ndarray]:
    """Score labelled rows with `model` and evaluate; returns (report, per-row scores)."""
    import torch

    rows = [row for row in rows if row.label is not None]
    if not rows:
        raise ManifestError("the manifest has no labelled rows to evaluate on: give rows with a 0/1 'label'")
    scores = score_rows(model, rows, batch_size)
    if not np.isfinite(scores).any():
        raise ManifestError(
            "no row of the manifest could be read (see the warnings above); nothing to evaluate"
        )
    probabilities = model.pass_probability(torch.from_numpy(scores))
    report = evaluate_scores(
        scores,
        rows,
        model.threshold,
        None if probabilities is None else probabilities.numpy(),
        n_resamples,
        seed,
    )
    report["unreadable_rows"] = int((~np.isfinite(scores)).sum())
    if report["unreadable_rows"]:
        logger.warning(
            "%d of %d rows could not be read and were left out", report["unreadable_rows"], len(rows)
        )
    return report, scores
