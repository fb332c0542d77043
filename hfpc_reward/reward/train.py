"""`hfpc train-reward`: comparative (Bradley-Terry) training of the image-referenced reward model.

Loop (`RewardTrainer.train`): per epoch, a pair source (`pair_sources`: pixels, or cached features when
the backbone is frozen) yields this process's micro-batches of (positive, negative) pairs;
`compute_loss` (TRL's shape) gives `-log sigmoid(r_pos - r_neg)`, plus `pointwise_weight` x binary
cross-entropy of sigmoid(r) against the labels (helps calibration); `gradient_accumulation_steps`
micro-batches make one AdamW step under a warmup + `lr_scheduler` schedule that spans `schedule_epochs`.
Validation (pairwise accuracy and loss on held-out originals) runs every `eval_every_steps`; the best
model is kept in `out_dir/best`. At the end the best model gets the training set's score mean/std and
a pass threshold and is written to `out_dir/model`.

Run contract (`hfpc_reward.runs`): `out_dir` is locked while a run trains; its settings (the resolved
config, the manifests' content hashes) are stamped in `out_dir/run.json`; an existing output needs
`--resume` or `--overwrite`. Checkpoints (`out_dir/checkpoints/step-N`, accelerate `save_state`: model,
optimizer, scheduler, RNG, plus the loop state) let `--resume` continue exactly where the last checkpoint
left off, so an interrupted run ends with the same weights as an uninterrupted one. `--resume` refuses a
changed setting outside `TRAIN_SAFE_KEYS`, naming it; more `training.epochs` are accepted, and give the
same weights as an uninterrupted longer run when the schedule's length is fixed (`schedule_epochs`).
metrics.jsonl keeps each step once across resumes.
Multi-GPU: `accelerate launch -m hfpc_reward.cli train-reward ...` (each process its shard of pairs).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hfpc_reward.config import config_to_dict
from hfpc_reward.data.manifest import ManifestError, ManifestRow, comparison_pairs, read_manifest
from hfpc_reward.data.results import input_hashes
from hfpc_reward.data.splits import split_by_original
from hfpc_reward.reward.model import HFPCRewardModel, RewardModelConfig
from hfpc_reward.reward.pair_sources import CachedFeaturePairs, PixelPairs
from hfpc_reward.reward.rows import require_local_images, score_rows
from hfpc_reward.reward.train_config import RewardDataConfig, RewardTrainingConfig, TrainRewardConfig
from hfpc_reward.reward.trainer import RewardTrainer
from hfpc_reward.runs import CheckpointFolder, RunOutput

__all__ = ["RewardDataConfig", "RewardTrainingConfig", "TrainRewardConfig", "train_reward_model"]

logger = logging.getLogger(__name__)

# --resume may change these: they decide how long, how fast or how often to save, not what a step computes
TRAIN_SAFE_KEYS = (
    "training.out_dir",  # a run folder that was moved resumes where it now is
    "training.epochs",
    "training.save_every_steps",
    "training.keep_checkpoints",
    "training.num_workers",
    "training.eval_batch_size",
    "training.log_with",
)
SCHEDULE_HINT = (
    "training.schedule_epochs follows training.epochs when unset, so more epochs would change the learning "
    "rate of steps already taken; fix training.schedule_epochs from the start to extend a run"
)


def run_settings(cfg: TrainRewardConfig) -> dict[str, Any]:
    """What the run stamp records: the config with the schedule's length resolved, and the hashes of the files
    it names (the manifests, and the cluster assignment that draws every epoch's pairs)."""
    settings = config_to_dict(cfg)
    settings["training"]["schedule_epochs"] = cfg.training.schedule_epochs or cfg.training.epochs
    data = cfg.data
    settings["input_sha256"] = input_hashes(
        {
            "train_manifest": data.train_manifest,
            "valid_manifest": data.valid_manifest,
            "cluster_assignment": data.cluster_assignment,
        }
    )
    return settings


def train_reward_model(
    cfg: TrainRewardConfig,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> dict:
    """Train (or resume) and return a summary: best validation accuracy/loss, steps, output folders.

    `on_step(global_step)` is called after every optimizer step (after any checkpoint of that step).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    tcfg = cfg.training
    out_dir = Path(tcfg.out_dir)
    accelerator = Accelerator(
        mixed_precision=tcfg.mixed_precision,
        log_with=tcfg.log_with,
        project_dir=str(out_dir / "logs"),
        cpu=not torch.cuda.is_available(),  # CPU processes under torchrun: gloo, each its own shard
    )
    train_rows, valid_rows = _split_rows(cfg.data)
    pairs = comparison_pairs(train_rows)
    if cfg.data.cluster_assignment and pairs:  # a bad or stale cluster file stops the run before it starts
        from hfpc_reward.data.clusters import ClusterAssignment, pair_weights

        pair_weights(pairs, ClusterAssignment.load(cfg.data.cluster_assignment).assignment)
    with RunOutput(
        out_dir,
        run_settings(cfg),
        resume=resume,
        overwrite=overwrite,
        safe_keys=TRAIN_SAFE_KEYS,
        inputs=[cfg.data.train_manifest, cfg.data.valid_manifest, cfg.model],
        is_main_process=accelerator.is_main_process,
        name="train-reward",
        folder=True,
        hints={"training.schedule_epochs": SCHEDULE_HINT},
    ) as run:
        checkpoints = CheckpointFolder(out_dir / "checkpoints", tcfg.keep_checkpoints)
        resume_from = checkpoints.latest() if run.resuming else None
        if accelerator.is_main_process and resume_from is None and checkpoints.root.exists():
            shutil.rmtree(checkpoints.root)  # a fresh start (or nothing to resume): no stale checkpoints
        accelerator.wait_for_everyone()
        set_seed(tcfg.seed)
        train_pairs, valid_pairs = pairs, comparison_pairs(valid_rows)
        if not train_pairs:
            raise ManifestError(
                f"{cfg.data.train_manifest} has no (label 1, label 0) pairs within an original to train on"
            )
        logger.info(
            "training on %d pairs (%d rows), validating on %d pairs (%d rows)",
            len(train_pairs),
            len(train_rows),
            len(valid_pairs),
            len(valid_rows),
        )
        model = HFPCRewardModel.from_pretrained(cfg.model, config=_new_head_config(cfg))
        model.to(accelerator.device).train()
        model.freeze_backbone(tcfg.freeze_fraction)
        logger.info(
            "%d trainable parameters of %d",
            sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()),
        )
        if model.backbone_frozen and tcfg.cache_features:
            source = CachedFeaturePairs(model, train_pairs, valid_pairs, eval_batch_size=tcfg.eval_batch_size)
        else:
            source = PixelPairs(
                model,
                train_pairs,
                valid_rows,
                valid_pairs,
                num_workers=tcfg.num_workers,
                eval_batch_size=tcfg.eval_batch_size,
                seed=tcfg.seed,
            )
        trainer = RewardTrainer(cfg, accelerator, model, source, out_dir)
        trainer.train(resume_from, on_step)
        summary = {**asdict(trainer.state), "out_dir": str(out_dir), "valid_pairs": len(valid_pairs)}
        summary["model_dir"] = str(out_dir / "model")
        if accelerator.is_main_process:
            _finalise(out_dir, cfg, train_rows, valid_rows, accelerator.device)
            run.update_stamp(finished_step=trainer.state.global_step)
        accelerator.wait_for_everyone()
    accelerator.end_training()  # closes trackers and, under torchrun / accelerate launch, the process group
    return summary


def _split_rows(cfg: RewardDataConfig) -> tuple[list[ManifestRow], list[ManifestRow]]:
    if not cfg.train_manifest:
        raise ManifestError(
            "data.train_manifest is not set: pass data.train_manifest=PATH (a labelled manifest)"
        )
    rows = [row for row in read_manifest(cfg.train_manifest) if row.label is not None]
    require_local_images(rows, cfg.train_manifest)
    if cfg.valid_manifest:
        valid = [row for row in read_manifest(cfg.valid_manifest) if row.label is not None]
        require_local_images(valid, cfg.valid_manifest)
        return rows, valid
    parts = split_by_original(
        rows, {"train": 1.0 - cfg.valid_fraction, "valid": cfg.valid_fraction}, seed=cfg.split_seed
    )
    return parts["train"], parts["valid"]


def _new_head_config(cfg: TrainRewardConfig) -> RewardModelConfig | None:
    """The architecture config for a new head; None when `model` is already a reward-model checkpoint."""
    from hfpc_reward.reward.model import CONFIG_KEY, CONFIG_NAME, resolve_model_file

    stored = json.loads(resolve_model_file(cfg.model, CONFIG_NAME).read_text())
    return None if CONFIG_KEY in stored else cfg.architecture


def _finalise(out_dir: Path, cfg: TrainRewardConfig, train_rows, valid_rows, device) -> None:
    """Best model + training-set score mean/std + pass threshold (and probabilities) -> out_dir/model."""
    from hfpc_reward.reward.calibrate import calibrate

    source = out_dir / "best"
    model = HFPCRewardModel.from_pretrained(source, device=device)
    rng = np.random.default_rng(cfg.training.seed)
    sample = [train_rows[i] for i in sorted(rng.permutation(len(train_rows))[: cfg.data.max_stats_rows])]
    raw = score_rows(model, sample, cfg.training.eval_batch_size, standardise=False)
    raw = raw[np.isfinite(raw)]
    model.score_mean = float(raw.mean())
    model.score_std = float(raw.std()) if raw.std() > 0 else 1.0
    labels = [row.label for row in valid_rows]
    if 0 < sum(labels) < len(labels):
        calibrate(model, valid_rows, target_precision=None, batch_size=cfg.training.eval_batch_size)
    else:  # a calibration loaded with a trained model belongs to its old score scale
        model.threshold, model.probability_calibration = 0.0, None
        logger.warning(
            "validation rows lack both labels: threshold set to 0 (the training mean), no probabilities; "
            "run `hfpc calibrate-reward` on labelled rows"
        )
    target = model.save_pretrained(out_dir / "model")
    logger.info(
        "final model (score mean %.4f, std %.4f, threshold %.3f) -> %s",
        model.score_mean,
        model.score_std,
        model.threshold,
        target,
    )
