"""Commands of the reward-model domain: `hfpc train-reward`, `hfpc eval-reward`, `hfpc calibrate-reward`."""

from __future__ import annotations

import argparse
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from hfpc_reward.config import add_config_arguments, load_config
from hfpc_reward.data.manifest import read_manifest
from hfpc_reward.reward.calibrate import calibrate
from hfpc_reward.reward.evaluate import evaluate_model, plot_curves
from hfpc_reward.reward.model import HFPCRewardModel
from hfpc_reward.reward.rows import require_local_images
from hfpc_reward.reward.train import TrainRewardConfig, train_reward_model
from hfpc_reward.runs import add_run_arguments, refuse_output_over_inputs, write_json_atomic

logger = logging.getLogger(__name__)


def add_train_reward_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, TrainRewardConfig, example="configs/reward/blip_base.yaml")
    add_run_arguments(parser)  # --resume: from the newest checkpoint of training.out_dir


def run_train_reward(args: argparse.Namespace) -> int:
    cfg = load_config(TrainRewardConfig, args.config, args.overrides)
    summary = train_reward_model(cfg, resume=args.resume, overwrite=args.overwrite)
    logger.info("done: %s", json.dumps(summary))
    return 0


def add_eval_reward_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="reward-model folder or hub id")
    parser.add_argument("--manifest", required=True, help="labelled manifest to evaluate on")
    parser.add_argument("--out", required=True, help="metrics JSON to write (plots go next to it)")
    parser.add_argument("--batch-size", type=int, default=32, help="rows scored per batch")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of originals")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def run_eval_reward(args: argparse.Namespace) -> int:
    import hfpc_reward

    refuse_output_over_inputs(Path(args.out), [args.manifest, args.model], "hfpc eval-reward")
    rows = read_manifest(args.manifest)
    require_local_images(rows, args.manifest)
    model = HFPCRewardModel.from_pretrained(args.model, device=args.device, trained=True)
    report, scores = evaluate_model(model, rows, args.batch_size, args.bootstrap, args.seed)
    report.update(
        {
            "model": str(args.model),
            "manifest": str(args.manifest),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "hfpc_reward_version": getattr(hfpc_reward, "__version__", "unknown"),
        }
    )
    out = Path(args.out)
    labelled = [row for row in rows if row.label is not None]
    ok = np.isfinite(scores)
    labels = np.array([row.label for row in labelled])[ok]
    report["plots"] = [str(p) for p in plot_curves(scores[ok], labels, model.threshold, out.parent)]
    write_json_atomic(out, report)
    m = report["metrics"]
    logger.info(
        "pairwise accuracy %.4f, precision %.4f, recall %.4f, F1 %.4f, PR-AUC %.4f, ROC-AUC %.4f -> %s",
        m["pairwise_accuracy"],
        m["precision"],
        m["recall"],
        m["f1"],
        m["pr_auc"],
        m["roc_auc"],
        out,
    )
    return 0


def add_calibrate_reward_arguments(parser: argparse.ArgumentParser) -> None:
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


def run_calibrate_reward(args: argparse.Namespace) -> int:
    rows = read_manifest(args.manifest)
    require_local_images(rows, args.manifest)
    model = HFPCRewardModel.from_pretrained(args.model, device=args.device, trained=True)
    calibrate(model, rows, args.target_precision, args.batch_size)
    model.write_checkpoint_config(args.model)
    logger.info("wrote threshold %.4f into %s/config.json", model.threshold, args.model)
    return 0
