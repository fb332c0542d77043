"""`hfpc calibrate-reward`: choose the reward model's pass threshold on labelled validation rows.

The threshold is the highest-recall one reaching `--target-precision` (the paper reports 96.4%
precision), or the best-F1 one without a target. Pass probabilities are fitted at the same time (Platt
scaling: a one-feature logistic regression on the standardised score), so evaluation can report the
expected calibration error. Both are written into the model folder's config.json.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import numpy as np

from hfpc_reward.data.manifest import ManifestRow
from hfpc_reward.reward.model import HFPCRewardModel
from hfpc_reward.reward.rows import score_rows
from hfpc_reward.stats import CalibrationError, pick_threshold

logger = logging.getLogger(__name__)


def calibrate(
    model: HFPCRewardModel,
    rows: Sequence[ManifestRow],
    target_precision: float | None = None,
    batch_size: int = 32,
) -> dict:
    """Set `model.threshold` and `model.probability_calibration` from labelled rows; returns what was set.

    Rows without a label or with unreadable images are left out. Raises CalibrationError (from
    `pick_threshold`) when the target precision cannot be reached.
    """
    from sklearn.linear_model import LogisticRegression

    labelled = [row for row in rows if row.label is not None]
    scores = score_rows(model, labelled, batch_size)
    ok = np.isfinite(scores)
    scores, labels = scores[ok], np.array([row.label for row in labelled])[ok]
    if len(np.unique(labels)) < 2:
        raise CalibrationError(
            f"calibration needs rows of both labels; got {len(labels)} readable rows of one label: "
            "give a manifest with passes (label 1) and fails (label 0)"
        )
    model.threshold = pick_threshold(scores, labels, target_precision)
    platt = LogisticRegression(C=1e6).fit(scores.reshape(-1, 1), labels)  # C large = (almost) unregularised
    model.probability_calibration = {"scale": float(platt.coef_[0, 0]), "bias": float(platt.intercept_[0])}
    result = {
        "threshold": model.threshold,
        "target_precision": target_precision,
        "probability_calibration": model.probability_calibration,
        "rows": int(ok.sum()),
        "unreadable_rows": int((~ok).sum()),
    }
    logger.info("calibrated: %s", json.dumps(result))
    return result
