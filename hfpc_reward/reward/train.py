"""`hfpc train-reward`: comparative (Bradley-Terry) training of the image-referenced reward model.

Loop: per epoch, a seeded permutation of the within-original (positive, negative) pairs is cut into
global micro-batches (`batch_size` pairs per process); `gradient_accumulation_steps` micro-batches make
one AdamW step under a cosine schedule with warmup. Loss per pair: `-log sigmoid(r_pos - r_neg)`, plus
`pointwise_weight` x binary cross-entropy of sigmoid(r) against the labels (helps calibration).
Validation (pairwise accuracy and loss on held-out originals) runs every `eval_every_steps`; the best
model is kept in `output_dir/best`. When `freeze_fraction` is 1.0 the backbone cannot change, so the fused
features of every row are computed once and only the head trains on them.

Checkpoints (`output_dir/checkpoints/step-N`, written to a temp folder and renamed, `latest` pointer
replaced atomically) hold model, optimizer, scheduler and RNG states (accelerate `save_state`) plus the
data position; `--resume` continues exactly where the last checkpoint left off, so an interrupted run
ends with the same weights as an uninterrupted one. At the end the best model gets the training set's
score mean/std and a pass threshold and is written to `output_dir/model`.
Multi-GPU: `accelerate launch -m hfpc_reward.cli train-reward ...`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from hfpc_reward.config import RESOLVED_CONFIG_NAME, config_to_dict, save_resolved_config
from hfpc_reward.data.manifest import ManifestRow, append_jsonl, comparison_pairs, read_manifest
from hfpc_reward.data.splits import split_by_original
from hfpc_reward.reward.model import HFPCRewardModel, RewardModelConfig
from hfpc_reward.reward.rows import iter_row_batches, require_local_images, row_features, score_rows
from hfpc_reward.runs import replace_directory

logger = logging.getLogger(__name__)


@dataclass
class RewardDataConfig:
    """Where the labelled rows come from and how the held-out originals are chosen."""

    train_manifest: str = ""  # labelled manifest (ours or HFPC-44k); pairs are formed within each original
    valid_manifest: str | None = (
        None  # held-out manifest; null = split `valid_fraction` of train originals off
    )
    valid_fraction: float = 0.1  # share of originals held out when valid_manifest is null
    split_seed: int = 0  # seed of that split (by original, never by row)
    cluster_assignment: str | None = None  # `hfpc data clusters` JSON: draw pairs balanced over clusters
    max_stats_rows: int = 5000  # training rows scored (seeded sample) for the score mean/std at the end

    def __post_init__(self):
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"data.valid_fraction must be in (0, 1), got {self.valid_fraction}")
        if self.max_stats_rows < 2:
            raise ValueError(f"data.max_stats_rows must be >= 2, got {self.max_stats_rows}")


@dataclass
class RewardTrainingConfig:
    """Optimisation, checkpointing and logging (ImageReward's recipe by default)."""

    output_dir: str = "outputs/reward"  # checkpoints, best model, final model, metrics.jsonl, resolved config
    epochs: int = 10  # passes over all training pairs
    batch_size: int = 8  # pairs per process per micro-batch
    gradient_accumulation_steps: int = (
        8  # micro-batches per optimizer step (effective batch 8 x 8 = 64 on 1 GPU)
    )
    learning_rate: float = 1e-5  # AdamW peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_ratio: float = 0.05  # share of optimizer steps with linear warmup before the cosine decay
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    freeze_fraction: float = 0.7  # lowest share of BLIP layers (+ embeddings) frozen; 1.0 = head only
    cache_features: bool = (
        True  # with freeze_fraction 1.0: compute fused features once, train the head on them
    )
    pointwise_weight: float = (
        0.0  # weight of the pointwise BCE term (sigmoid(r) vs label) added to the pair loss
    )
    mixed_precision: str = "no"  # accelerate mixed precision: "no", "fp16" or "bf16"
    eval_every_steps: int = 100  # validate every N optimizer steps (and after every epoch)
    save_every_steps: int = (
        100  # write a resumable checkpoint every N optimizer steps (and after every epoch)
    )
    keep_checkpoints: int = 2  # resumable checkpoints kept on disk (oldest deleted first)
    eval_batch_size: int = 32  # rows per batch when scoring for validation, caching and statistics
    num_workers: int = 0  # DataLoader worker processes loading images
    seed: int = 42  # seeds model init, data order and dropout
    log_with: str | None = (
        None  # accelerate tracker, e.g. "tensorboard" (needs that package); null = JSONL only
    )

    def __post_init__(self):
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "gradient_accumulation_steps": self.gradient_accumulation_steps >= 1,
            "learning_rate": self.learning_rate > 0,
            "eval_every_steps": self.eval_every_steps >= 1,
            "save_every_steps": self.save_every_steps >= 1,
            "keep_checkpoints": self.keep_checkpoints >= 1,
            "eval_batch_size": self.eval_batch_size >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"training.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.freeze_fraction <= 1.0:
            raise ValueError(f"training.freeze_fraction must be in [0, 1], got {self.freeze_fraction}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"training.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.pointwise_weight < 0:
            raise ValueError(f"training.pointwise_weight must be >= 0, got {self.pointwise_weight}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(
                f"training.mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}"
            )


@dataclass
class TrainRewardConfig:
    """`hfpc train-reward` settings: YAML deltas under configs/reward/ plus dotted overrides."""

    model: str = "Salesforce/blip-itm-base-coco"  # BLIP ITM checkpoint (new head) or reward-model folder
    architecture: RewardModelConfig = field(default_factory=RewardModelConfig)  # used only for a new head
    data: RewardDataConfig = field(default_factory=RewardDataConfig)
    training: RewardTrainingConfig = field(default_factory=RewardTrainingConfig)


class _PairImages(torch.utils.data.Dataset):
    """Pair index -> (original, positive, negative pixels, texts), or None when an image is unreadable."""

    def __init__(self, model: HFPCRewardModel, pairs: list[tuple[ManifestRow, ManifestRow]]):
        self.model, self.pairs = model, pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        batches = list(iter_row_batches(self.model, list(self.pairs[index]), batch_size=2))
        if not batches or len(batches[0][0]) != 2:
            return None
        _, originals, generated, texts = batches[0]
        return (originals[0] if originals is not None else None), generated[0], generated[1], texts


def _collate_pairs(items):
    items = [item for item in items if item is not None]
    if not items:
        return None
    originals = None if items[0][0] is None else torch.stack([item[0] for item in items])
    positives = torch.stack([item[1] for item in items])
    negatives = torch.stack([item[2] for item in items])
    texts = [item[3][0] for item in items] + [item[3][1] for item in items]
    return originals, positives, negatives, texts


def _pair_loss(r_pos: torch.Tensor, r_neg: torch.Tensor, pointwise_weight: float) -> torch.Tensor:
    loss = -F.logsigmoid(r_pos - r_neg).mean()
    if pointwise_weight > 0:
        logits = torch.cat([r_pos, r_neg])
        targets = torch.cat([torch.ones_like(r_pos), torch.zeros_like(r_neg)])
        loss = loss + pointwise_weight * F.binary_cross_entropy_with_logits(logits, targets)
    return loss


def _epoch_order(pairs: list, epoch: int, cfg: TrainRewardConfig, assignment: dict | None) -> np.ndarray:
    """The pair indices of one epoch: a seeded permutation, or a cluster-balanced draw with replacement."""
    if assignment is None:
        return np.random.default_rng([cfg.training.seed, epoch]).permutation(len(pairs))
    from hfpc_reward.data.clusters import balanced_pair_sampler

    sampler = balanced_pair_sampler(pairs, assignment, seed=cfg.training.seed)
    sampler.set_epoch(epoch)
    return np.fromiter(sampler, dtype=np.int64)


def _micro_batches(order: np.ndarray, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """This process's pair indices per micro-batch of an epoch's `order` (padded like DistributedSampler)."""
    global_size = batch_size * world
    batches = []
    for start in range(0, len(order), global_size):
        chunk = order[start : start + global_size]
        per_process = math.ceil(len(chunk) / world)
        chunk = np.concatenate([chunk, order[: per_process * world - len(chunk)]])
        batches.append(chunk[rank * per_process : (rank + 1) * per_process].tolist())
    return batches


def _pair_rewards(wrapped, batch, device, features=None, pair_rows=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw rewards (r_pos, r_neg) of one micro-batch: from cached features (head only) or from pixels."""
    if features is not None:
        pos_idx, neg_idx = pair_rows["train"][batch[0]].T
        scores = wrapped(features[np.concatenate([pos_idx, neg_idx])]).squeeze(-1)
    else:
        originals, positives, negatives, texts = batch
        originals = None if originals is None else originals.to(device)
        scores = wrapped(originals, torch.cat([positives, negatives]).to(device), texts, standardise=False)
    r_pos, r_neg = scores.float().chunk(2)
    return r_pos, r_neg


def _split_rows(cfg: RewardDataConfig) -> tuple[list[ManifestRow], list[ManifestRow]]:
    if not cfg.train_manifest:
        raise ValueError(
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


class _Checkpoints:
    """Resumable checkpoints: `checkpoints/step-N` folders written atomically, `latest` names the newest."""

    def __init__(self, output_dir: Path, keep: int):
        self.root = output_dir / "checkpoints"
        self.keep = keep

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text().strip()
        return path if (path / "trainer_state.json").is_file() else None

    def save(self, accelerator, state: dict) -> None:
        staging = self.root / f".step-{state['global_step']}.tmp"
        if accelerator.is_main_process and staging.exists():
            shutil.rmtree(staging)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        if accelerator.is_main_process:
            (staging / "trainer_state.json").write_text(json.dumps(state))
            final = self.root / f"step-{state['global_step']}"
            replace_directory(staging, final)
            tmp_pointer = self.root / "latest.tmp"
            tmp_pointer.write_text(final.name)
            os.replace(tmp_pointer, self.root / "latest")
            steps = sorted(int(p.name.split("-")[1]) for p in self.root.glob("step-*"))
            for old in steps[: -self.keep]:
                shutil.rmtree(self.root / f"step-{old}")
        accelerator.wait_for_everyone()


def _check_resume_config(cfg: TrainRewardConfig, output_dir: Path) -> None:
    """Refuse to resume a run with different settings (the checkpoint would not mean the same thing)."""
    saved_path = output_dir / RESOLVED_CONFIG_NAME
    if not saved_path.is_file():
        return
    saved, current = yaml.safe_load(saved_path.read_text()), config_to_dict(cfg)
    changed = [
        f"{section}.{key}" if isinstance(values, dict) else section
        for section, values in current.items()
        for key in (values if isinstance(values, dict) else [None])
        if (values[key] if key else values)
        != ((saved.get(section) or {}).get(key) if key else saved.get(section))
    ]
    if changed:
        raise ValueError(
            f"--resume with a config that differs from the run's saved {saved_path} in {changed}; "
            "resume with the same config, or use a new training.output_dir"
        )


def train_reward_model(
    cfg: TrainRewardConfig, resume: bool = False, on_step: Callable[[int], None] | None = None
) -> dict:
    """Train (or resume) and return a summary: best validation accuracy/loss, steps, output folders.

    `on_step(global_step)` is called after every optimizer step (after any checkpoint of that step).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    tcfg = cfg.training
    output_dir = Path(tcfg.output_dir)
    accelerator = Accelerator(
        mixed_precision=tcfg.mixed_precision, log_with=tcfg.log_with, project_dir=str(output_dir / "logs")
    )
    checkpoints = _Checkpoints(output_dir, tcfg.keep_checkpoints)
    resume_from = checkpoints.latest() if resume else None
    if resume and resume_from is None:
        logger.info("no checkpoint under %s: starting a new run", checkpoints.root)
    if resume_from is not None:
        _check_resume_config(cfg, output_dir)
    elif accelerator.is_main_process:
        save_resolved_config(cfg, output_dir)
    set_seed(tcfg.seed)

    train_rows, valid_rows = _split_rows(cfg.data)
    train_pairs, valid_pairs = comparison_pairs(train_rows), comparison_pairs(valid_rows)
    if not train_pairs:
        raise ValueError(
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
    cached = model.backbone_frozen and tcfg.cache_features
    trainable = [p for p in model.parameters() if p.requires_grad]
    logger.info(
        "%d trainable parameters of %d",
        sum(p.numel() for p in trainable),
        sum(p.numel() for p in model.parameters()),
    )

    features = pair_rows = None
    if cached:
        features, pair_rows, readable = _feature_cache(model, train_pairs, valid_pairs, tcfg.eval_batch_size)
        train_pairs = [pair for pair, ok in zip(train_pairs, readable) if ok]
    trained_module = model.head if cached else model
    assignment = None
    if cfg.data.cluster_assignment:
        from hfpc_reward.data.clusters import ClusterAssignment

        assignment = ClusterAssignment.load(cfg.data.cluster_assignment).assignment
    world, rank = accelerator.num_processes, accelerator.process_index
    micro_per_epoch = math.ceil(len(train_pairs) / (tcfg.batch_size * world))
    steps_per_epoch = math.ceil(micro_per_epoch / tcfg.gradient_accumulation_steps)
    total_steps = steps_per_epoch * tcfg.epochs
    optimizer = torch.optim.AdamW(trainable, lr=tcfg.learning_rate, weight_decay=tcfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, int(tcfg.warmup_ratio * total_steps) * world, total_steps * world
    )
    wrapped, optimizer, scheduler = accelerator.prepare(trained_module, optimizer, scheduler)

    state = {"epoch": 0, "micro_batch": 0, "global_step": 0, "best_valid_accuracy": -1.0, "best_step": 0}
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = json.loads((resume_from / "trainer_state.json").read_text())
        logger.info("resumed from %s (epoch %d, step %d)", resume_from, state["epoch"], state["global_step"])
    if tcfg.log_with:
        accelerator.init_trackers("hfpc-reward", config={k: str(v) for k, v in config_to_dict(tcfg).items()})
    metrics_path = output_dir / "metrics.jsonl"

    def log(record: dict) -> None:
        if accelerator.is_main_process:
            append_jsonl(metrics_path, [record])
        if tcfg.log_with:
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def validate() -> None:
        if cached:
            accuracy, loss = _validate_cached(model, features, pair_rows["valid"])
        else:
            accuracy, loss = _validate_rows(model, valid_rows, valid_pairs, tcfg.eval_batch_size)
        log({"step": state["global_step"], "valid_pair_accuracy": accuracy, "valid_loss": loss})
        logger.info("step %d: valid pairwise accuracy %.4f, loss %.4f", state["global_step"], accuracy, loss)
        if math.isnan(accuracy) or accuracy > state["best_valid_accuracy"]:  # no valid pairs: keep the latest
            state["best_valid_accuracy"], state["best_step"] = accuracy, state["global_step"]
            if accelerator.is_main_process:
                model.save_pretrained(output_dir / "best")
        accelerator.wait_for_everyone()

    progress = tqdm(
        total=total_steps,
        initial=state["global_step"],
        desc="train-reward",
        disable=not accelerator.is_main_process,
    )
    while state["epoch"] < tcfg.epochs:
        order = _epoch_order(train_pairs, state["epoch"], cfg, assignment)
        batches = _micro_batches(order, tcfg.batch_size, rank, world)
        group_losses: list[float] = []
        if cached:
            loader = ((idx,) for idx in batches[state["micro_batch"] :])
        else:
            loader = torch.utils.data.DataLoader(
                _PairImages(model, train_pairs),
                batch_sampler=batches[state["micro_batch"] :],
                num_workers=tcfg.num_workers,
                collate_fn=_collate_pairs,
                # own generator: creating the iterator must not consume the global RNG (exact resume)
                generator=torch.Generator().manual_seed(tcfg.seed + state["epoch"]),
            )
        for batch in loader:
            position = state["micro_batch"]
            group_start = position - position % tcfg.gradient_accumulation_steps
            group_size = min(tcfg.gradient_accumulation_steps, len(batches) - group_start)
            last_in_group = position - group_start == group_size - 1
            loss = None  # stays None when every pair of the micro-batch had an unreadable image
            if batch is not None:
                with accelerator.autocast():
                    rewards = _pair_rewards(wrapped, batch, accelerator.device, features, pair_rows)
                    loss = _pair_loss(*rewards, tcfg.pointwise_weight)
            if loss is not None:
                with accelerator.no_sync(wrapped) if not last_in_group else contextlib.nullcontext():
                    accelerator.backward(loss / group_size)
                group_losses.append(loss.item())
            state["micro_batch"] += 1
            if not last_in_group:
                continue
            if tcfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(trainable, tcfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["global_step"] += 1
            progress.update(1)
            train_loss = float(np.mean(group_losses)) if group_losses else float("nan")
            group_losses = []
            progress.set_postfix(loss=f"{train_loss:.4f}")
            log(
                {
                    "step": state["global_step"],
                    "epoch": state["epoch"],
                    "train_loss": train_loss,
                    "learning_rate": scheduler.get_last_lr()[0],
                }
            )
            end_of_epoch = state["micro_batch"] == len(batches)
            if end_of_epoch:
                state["epoch"] += 1
                state["micro_batch"] = 0
            if end_of_epoch or state["global_step"] % tcfg.eval_every_steps == 0:
                validate()
            if end_of_epoch or state["global_step"] % tcfg.save_every_steps == 0:
                checkpoints.save(accelerator, state)
            if on_step is not None:
                on_step(state["global_step"])
    progress.close()

    summary = {**state, "output_dir": str(output_dir), "valid_pairs": len(valid_pairs)}
    summary["model_dir"] = str(output_dir / "model")
    if accelerator.is_main_process:
        _finalise(output_dir, cfg, train_rows, valid_rows, accelerator.device)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes trackers and, under torchrun / accelerate launch, the process group
    return summary


def _new_head_config(cfg: TrainRewardConfig) -> RewardModelConfig | None:
    """The architecture config for a new head; None when `model` is already a reward-model checkpoint."""
    from transformers.utils import cached_file

    from hfpc_reward.reward.model import CONFIG_KEY, CONFIG_NAME

    stored = json.loads(Path(cached_file(cfg.model, CONFIG_NAME)).read_text())
    return None if CONFIG_KEY in stored else cfg.architecture


def _feature_cache(model, train_pairs, valid_pairs, batch_size):
    """Fused features of every distinct row in the pairs, the readable pairs as (pos, neg) row-index
    arrays per split, and which train pairs were readable."""
    index: dict[int, int] = {}
    rows: list[ManifestRow] = []
    pair_rows = {}
    for name, pairs in (("train", train_pairs), ("valid", valid_pairs)):
        for row in (r for pair in pairs for r in pair):
            if id(row) not in index:
                index[id(row)] = len(rows)
                rows.append(row)
        pair_rows[name] = np.array([[index[id(p)], index[id(n)]] for p, n in pairs], dtype=np.int64).reshape(
            -1, 2
        )
    features, readable = row_features(model, rows, batch_size)
    kept = {}
    for name in pair_rows:
        kept[name] = readable[pair_rows[name]].all(axis=1)
        if not kept[name].all():
            logger.warning("dropping %d %s pairs with unreadable images", int((~kept[name]).sum()), name)
        pair_rows[name] = pair_rows[name][kept[name]]
    return features, pair_rows, kept["train"]


@torch.no_grad()
def _validate_cached(model, features, pairs) -> tuple[float, float]:
    if len(pairs) == 0:
        return float("nan"), float("nan")
    was_training = model.head.training
    model.head.eval()
    scores = model.head(features).squeeze(-1).float()
    model.head.train(was_training)
    diff = scores[pairs[:, 0]] - scores[pairs[:, 1]]
    return float((diff > 0).float().mean()), float(-F.logsigmoid(diff).mean())


def _validate_rows(model, rows, pairs, batch_size) -> tuple[float, float]:
    if not pairs:
        return float("nan"), float("nan")
    raw = score_rows(model, rows, batch_size, standardise=False)
    position = {id(row): i for i, row in enumerate(rows)}
    diff = np.array([raw[position[id(p)]] - raw[position[id(n)]] for p, n in pairs])
    diff = torch.from_numpy(diff[np.isfinite(diff)])
    return float((diff > 0).double().mean()), float(-F.logsigmoid(diff).mean())


def _finalise(output_dir: Path, cfg: TrainRewardConfig, train_rows, valid_rows, device) -> None:
    """Best model + training-set score mean/std + pass threshold (and probabilities) -> output_dir/model."""
    from hfpc_reward.reward.calibrate import calibrate

    source = output_dir / "best"
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
    else:
        logger.warning("validation rows lack both labels: threshold left at 0 (the training mean)")
    target = model.save_pretrained(output_dir / "model")
    logger.info(
        "final model (score mean %.4f, std %.4f, threshold %.3f) -> %s",
        model.score_mean,
        model.score_std,
        model.threshold,
        target,
    )
