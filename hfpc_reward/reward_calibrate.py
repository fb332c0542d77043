"""`hfpc calibrate-reward`: choose the reward model's pass threshold on labelled validation rows.

The threshold is the highest-recall one reaching `--target-precision` (the paper reports 96.4%
precision), or the best-F1 one without a target. Pass probabilities are fitted at the same time (Platt
scaling: a one-feature logistic regression on the standardised score), so evaluation can report the
expected calibration error. Both are written into the model folder's config.json.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence

import numpy as np

from hfpc_reward.calibration import pick_threshold
from hfpc_reward.data import ManifestRow, read_manifest
from hfpc_reward.reward_model import HFPCRewardModel, require_local_images, score_rows

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
        raise ValueError(
            f"calibration needs rows of both labels; got {len(labels)} readable rows of one label"
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="reward-model folder (its config.json is updated)")
    parser.add_argument(
        "--manifest", required=True, help="labelled validation manifest (never the test split)"
    )
    parser.add_argument(
        "--target-precision",
        type=float,
        default=None,
        help="pick the highest-recall threshold with at least this precision (default: best F1)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="rows scored per batch")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")


def run(args: argparse.Namespace) -> int:
    rows = read_manifest(args.manifest)
    require_local_images(rows, args.manifest)
    model = HFPCRewardModel.from_pretrained(args.model, device=args.device)
    calibrate(model, rows, args.target_precision, args.batch_size)
    model.write_checkpoint_config(args.model)
    logger.info("wrote threshold %.4f into %s/config.json", model.threshold, args.model)
    return 0
