"""The reward-training loop: one pair source's micro-batches -> `compute_loss` -> accumulated AdamW steps,
with validation, best-model keeping, metrics and accelerate checkpoints (see `train` for the whole run)."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hfpc_reward.data.manifest import ManifestError, append_jsonl, read_jsonl, write_jsonl
from hfpc_reward.reward.pair_sources import PairBatch, epoch_order, micro_batches
from hfpc_reward.reward.train_config import TrainRewardConfig
from hfpc_reward.runs import CheckpointFolder

logger = logging.getLogger(__name__)

NO_VALIDATION_ACCURACY = -1.0  # best accuracy before the first validation


@dataclass
class TrainerState:
    """Where the loop is; saved with every checkpoint."""

    epoch: int = 0  # epochs completed
    micro_batch: int = 0  # micro-batches of the current epoch done
    global_step: int = 0  # optimizer steps done
    best_valid_accuracy: float = NO_VALIDATION_ACCURACY  # best validation pairwise accuracy so far
    best_step: int = 0  # the step that reached it (its weights are in out_dir/best)


def pair_loss(r_pos: torch.Tensor, r_neg: torch.Tensor, pointwise_weight: float) -> torch.Tensor:
    """Bradley-Terry `-log sigmoid(r_pos - r_neg)` (mean), plus `pointwise_weight` x BCE against the labels."""
    loss = -F.logsigmoid(r_pos - r_neg).mean()
    if pointwise_weight > 0:
        logits = torch.cat([r_pos, r_neg])
        targets = torch.cat([torch.ones_like(r_pos), torch.zeros_like(r_neg)])
        loss = loss + pointwise_weight * F.binary_cross_entropy_with_logits(logits, targets)
    return loss


def compute_loss(model: torch.nn.Module, inputs: PairBatch, pointwise_weight: float, device) -> torch.Tensor:
    """The one step function (TRL RewardTrainer.compute_loss): raw rewards of a pair batch -> loss."""
    r_pos, r_neg = inputs.rewards(model, device)
    return pair_loss(r_pos, r_neg, pointwise_weight)


class MetricsLog:
    """metrics.jsonl (main process) and the accelerate tracker; a resume first drops the records of steps
    after its checkpoint, so each step is logged once."""

    def __init__(self, path: Path, accelerator, tracked: bool, resumed_step: int | None):
        self.path, self.accelerator, self.tracked = path, accelerator, tracked
        if accelerator.is_main_process:
            kept = [
                r for r in read_jsonl(path) if resumed_step is not None and r.get("step", 0) <= resumed_step
            ]
            write_jsonl(path, kept)

    def write(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            append_jsonl(self.path, [record])
        if self.tracked:
            self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])


UNREADABLE_PAIRS = (
    "no training pair of {manifest} has readable images: check its origin / generation paths (relative ones "
    "resolve against the manifest's folder)"
)


class RewardTrainer:
    """The accelerate loop over one pair source: micro-batches -> compute_loss -> accumulated AdamW steps,
    with validation, best-model keeping and checkpoints."""

    def __init__(self, cfg: TrainRewardConfig, accelerator, model, source, out_dir: Path):
        from transformers import get_scheduler

        self.cfg, self.tcfg, self.accelerator = cfg, cfg.training, accelerator
        self.model, self.source, self.out_dir = model, source, out_dir
        self.state = TrainerState()
        self.checkpoints = CheckpointFolder(out_dir / "checkpoints", self.tcfg.keep_checkpoints)
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.trainable = [p for p in source.trained_module.parameters() if p.requires_grad]
        if not source.train_pairs:  # every pair had an unreadable image: an epoch would have no step
            raise ManifestError(UNREADABLE_PAIRS.format(manifest=cfg.data.train_manifest))
        micro_per_epoch = math.ceil(len(source.train_pairs) / (self.tcfg.batch_size * self.world))
        self.steps_per_epoch = math.ceil(micro_per_epoch / self.tcfg.gradient_accumulation_steps)
        schedule_steps = self.steps_per_epoch * (self.tcfg.schedule_epochs or self.tcfg.epochs)
        optimizer = torch.optim.AdamW(
            self.trainable, lr=self.tcfg.learning_rate, weight_decay=self.tcfg.weight_decay
        )
        scheduler = get_scheduler(  # accelerate steps a prepared scheduler once per process: x world
            self.tcfg.lr_scheduler,
            optimizer,
            num_warmup_steps=int(self.tcfg.warmup_ratio * schedule_steps) * self.world,
            num_training_steps=schedule_steps * self.world,
        )
        self.wrapped, self.optimizer, self.scheduler = accelerator.prepare(
            source.trained_module, optimizer, scheduler
        )
        self.assignment = None
        if cfg.data.cluster_assignment:
            from hfpc_reward.data.clusters import ClusterAssignment

            self.assignment = ClusterAssignment.load(cfg.data.cluster_assignment).assignment

    def train(self, resume_from: Path | None = None, on_step: Callable[[int], None] | None = None) -> None:
        """Train to `epochs`, from the checkpoint `resume_from` when given; `on_step(global_step)` after
        every optimizer step (after any checkpoint of that step)."""
        from tqdm.auto import tqdm

        if resume_from is not None:
            self.state = TrainerState(**self.checkpoints.load(self.accelerator, resume_from))
            logger.info(
                "resumed from %s (epoch %d, step %d)", resume_from, self.state.epoch, self.state.global_step
            )
        if self.tcfg.log_with:
            settings = {k: str(v) for k, v in asdict(self.tcfg).items()}
            self.accelerator.init_trackers("hfpc-reward", config=settings)
        self.log = MetricsLog(
            self.out_dir / "metrics.jsonl",
            self.accelerator,
            tracked=bool(self.tcfg.log_with),
            resumed_step=self.state.global_step if resume_from is not None else None,
        )

        total = self.steps_per_epoch * self.tcfg.epochs
        main = self.accelerator.is_main_process
        with tqdm(total=total, initial=self.state.global_step, desc="train-reward", disable=not main) as bar:
            while self.state.epoch < self.tcfg.epochs:
                order = epoch_order(
                    self.source.train_pairs, self.state.epoch, self.tcfg.seed, self.assignment
                )
                batches = micro_batches(order, self.tcfg.batch_size, self.rank, self.world)
                self.readable = torch.zeros(
                    2, device=self.accelerator.device
                )  # micro-batches: readable, seen
                for step in self._epoch(batches):
                    bar.update(1)
                    if on_step is not None:
                        on_step(step)
                readable, seen = self.accelerator.reduce(self.readable, reduction="sum").tolist()
                if seen and not readable:  # the pixel path finds unreadable images only as it goes
                    raise ManifestError(UNREADABLE_PAIRS.format(manifest=self.cfg.data.train_manifest))

    def _epoch(self, batches: list[list[int]]):
        """Train the rest of the current epoch; yields the global step after each optimizer step."""
        accumulation = self.tcfg.gradient_accumulation_steps
        losses: list[float] = []
        for batch in self.source.micro_batches(batches[self.state.micro_batch :], self.state.epoch):
            position = self.state.micro_batch
            group_start = position - position % accumulation
            group_size = min(accumulation, len(batches) - group_start)
            last_in_group = position - group_start == group_size - 1
            self.readable[1] += 1
            if batch is not None:  # None: every pair of the micro-batch had an unreadable image
                self.readable[0] += 1
                with self.accelerator.autocast():
                    loss = compute_loss(
                        self.wrapped, batch, self.tcfg.pointwise_weight, self.accelerator.device
                    )
                sync = contextlib.nullcontext() if last_in_group else self.accelerator.no_sync(self.wrapped)
                with sync:
                    self.accelerator.backward(loss / group_size)
                losses.append(loss.item())
            self.state.micro_batch += 1
            if last_in_group:
                self._optimizer_step(float(np.mean(losses)) if losses else float("nan"), len(batches))
                losses = []
                yield self.state.global_step

    def _optimizer_step(self, train_loss: float, batches_in_epoch: int) -> None:
        state = self.state
        if self.tcfg.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.trainable, self.tcfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.global_step += 1
        shard_loss = torch.tensor(train_loss, device=self.accelerator.device)
        self.log.write(
            {
                "step": state.global_step,
                "epoch": state.epoch,
                "train_loss": self.accelerator.reduce(shard_loss, reduction="mean").item(),  # over processes
                "learning_rate": self.scheduler.get_last_lr()[0],
            }
        )
        end_of_epoch = state.micro_batch == batches_in_epoch
        if end_of_epoch:
            state.epoch, state.micro_batch = state.epoch + 1, 0
        if end_of_epoch or state.global_step % self.tcfg.eval_every_steps == 0:
            self._validate()
        if end_of_epoch or state.global_step % self.tcfg.save_every_steps == 0:
            self.checkpoints.save(self.accelerator, state.global_step, asdict(state))

    def _validate(self) -> None:
        state = self.state
        accuracy, loss = self.source.validate()
        self.log.write({"step": state.global_step, "valid_pair_accuracy": accuracy, "valid_loss": loss})
        logger.info("step %d: valid pairwise accuracy %.4f, loss %.4f", state.global_step, accuracy, loss)
        if math.isnan(accuracy) or accuracy > state.best_valid_accuracy:  # no valid pairs: keep the latest
            state.best_valid_accuracy, state.best_step = accuracy, state.global_step
            if self.accelerator.is_main_process:
                self.model.save_pretrained(self.out_dir / "best")
        self.accelerator.wait_for_everyone()
