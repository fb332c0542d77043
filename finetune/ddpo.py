"""DDPO-IS with LoRA: sample with log-probs -> reward -> group advantages -> PPO epochs.

Distributed with accelerate: each process samples its contiguous slice of the epoch's global sample
indices (every sample seeded by its global index), rewards are gathered so groups span processes, and the
LoRA gradients are averaged across processes (see `ppo.py`). All randomness derives from (run.seed, epoch,
sample index), so a resumed run repeats the uninterrupted one. The run itself (checks, run folder,
checkpoints, tracking) is `hfpc_finetune.trainer.Trainer`.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from hfpc_finetune.advantages import GroupAdvantages
from hfpc_finetune.data import ProductPrompt, epoch_group_items
from hfpc_finetune.pipeline import WEIGHT_DTYPES
from hfpc_finetune.ppo import Policy, PPOUpdate
from hfpc_finetune.rewards import RewardBatch
from hfpc_finetune.sampling import (
    Conditioning,
    Trajectory,
    decode,
    paste_back,
    prepare_conditioning,
    sample_with_logprob,
)
from hfpc_finetune.trainer import PREVIEW_SAMPLES, Trainer, seed_for, with_rewards
from PIL import Image

from hfpc_reward.config import ConfigError


@dataclass
class EpochSamples:
    """One process's share of an epoch, collated: one row per sample (N rows), as PPO consumes it."""

    items: list[ProductPrompt]  # (N) the product, mask and prompt each sample inpainted
    trajectory: Trajectory  # latents (N,T+1,4,h,w), log_probs (N,T), timesteps (T,)
    conditioning: Conditioning  # prompt embeddings, masks and masked-image latents (N rows)
    product_drift: list[float]  # (N) mean |decoded - original| over product pixels, before paste-back
    rewards: list[Future]  # one per sampling batch, resolving to (RewardBatch, seconds spent)
    preview: list[tuple[Image.Image, Image.Image]]  # (original, rewarded image) of the first samples


class DDPOTrainer(Trainer):
    """DDPO-IS: every epoch samples `sample.samples_per_epoch` trajectories and takes PPO steps on them."""

    def _setup(self) -> None:
        policy = Policy(self.unet, self.scheduler, self.config.sample.guidance_scale, self.config.sample.eta)
        self.ppo = PPOUpdate(
            policy, self.optimizer, self.accelerator, self.lora_params, self.config.train, self.accumulation
        )
        self.advantages = GroupAdvantages(self.config.train.min_group_count, self.config.train.group_history)

    def _units_per_epoch(self) -> int:  # progress units: sampling batches + PPO minibatches
        cfg = self.config
        return self.local_samples // cfg.sample.batch_size + cfg.train.inner_epochs * -(
            -self.local_samples // cfg.train.train_batch_size
        )

    def _describe(self, record: dict) -> str:
        return f"approx_kl {record['approx_kl']:.2e}, clipfrac {record['clipfrac']:.3f}"

    def _trainer_state(self) -> dict:
        return {"advantages": self.advantages.state_dict()}

    def _load_trainer_state(self, state: dict) -> None:
        self.advantages.load_state_dict(state["advantages"])

    def _check_sizes(self) -> None:
        procs, sample, train = self.accelerator.num_processes, self.config.sample, self.config.train
        if sample.samples_per_epoch % (sample.batch_size * procs):
            raise ConfigError(
                f"sample.samples_per_epoch ({sample.samples_per_epoch}) must be a multiple of "
                f"sample.batch_size x processes ({sample.batch_size} x {procs})"
            )
        if train.samples_per_step % (train.train_batch_size * procs):
            raise ConfigError(
                f"train.samples_per_step ({train.samples_per_step}) must be a multiple of "
                f"train.train_batch_size x processes ({train.train_batch_size} x {procs})"
            )
        self.local_samples = sample.samples_per_epoch // procs
        if self.local_samples % train.train_batch_size:
            raise ConfigError(
                f"samples per process ({self.local_samples}) must be a multiple of train.train_batch_size"
            )
        self.accumulation = train.samples_per_step // (train.train_batch_size * procs)

    # ---- one epoch ------------------------------------------------------------------------------------
    def global_indices(self) -> range:
        start = self.accelerator.process_index * self.local_samples
        return range(start, start + self.local_samples)

    def epoch_items(self, epoch: int, indices) -> list[ProductPrompt]:
        """The product, mask and prompt of each global sample index: G consecutive samples share one."""
        cfg = self.config
        groups = epoch_group_items(
            len(self.products), cfg.sample.samples_per_epoch // cfg.train.group_size, cfg.run.seed, epoch
        )
        return [self.products[groups[g // cfg.train.group_size]] for g in indices]

    def sample_epoch(self, epoch: int, pool: ThreadPoolExecutor, on_batch=lambda: None) -> EpochSamples:
        """Sample this process's share; each batch's reward runs in `pool` while the next batch samples."""
        cfg, seed = self.config, self.config.run.seed
        indices = self.global_indices()
        items = self.epoch_items(epoch, indices)
        trajectories, conds, drifts, rewards, preview = [], [], [], [], []
        self.unet.eval()
        for start in range(0, len(items), cfg.sample.batch_size):
            batch = items[start : start + cfg.sample.batch_size]
            with self.accelerator.autocast():
                cond = prepare_conditioning(
                    self.pipe,
                    [b.prompt for b in batch],
                    [b.image for b in batch],
                    [b.inpaint_mask() for b in batch],
                    cfg.sample.negative_prompt,
                    cfg.data.resolution,
                    self.device,
                    WEIGHT_DTYPES[cfg.run.mixed_precision],
                )
                trajectory = sample_with_logprob(
                    self.pipe,
                    self.scheduler,
                    cond,
                    [seed_for(seed, epoch, g) for g in indices[start : start + cfg.sample.batch_size]],
                    cfg.sample.num_steps,
                    cfg.sample.guidance_scale,
                    cfg.sample.eta,
                )
                decoded = decode(self.pipe, trajectory.latents[:, -1])  # (B,3,H,W) in [0,1]
            images, drift = paste_back(
                decoded, [b.image for b in batch], [b.product_mask for b in batch], cfg.sample.paste_back
            )
            rewards.append(pool.submit(self._timed_reward, batch, images))
            trajectories.append(trajectory)
            conds.append(cond)
            drifts.extend(drift)
            preview.extend((b.image, image) for b, image in zip(batch, images))
            del preview[PREVIEW_SAMPLES:]
            on_batch()
        return EpochSamples(
            items, Trajectory.cat(trajectories), Conditioning.cat(conds), drifts, rewards, preview
        )

    def _run_epoch(self, epoch: int, pool: ThreadPoolExecutor, progress) -> dict:
        cfg, acc = self.config, self.accelerator
        started = time.perf_counter()
        samples = self.sample_epoch(epoch, pool, on_batch=lambda: progress.update(1))
        sampled = time.perf_counter()
        results: list[tuple[RewardBatch, dict, float]] = [future.result() for future in samples.rewards]
        rewarded = time.perf_counter()
        local = [np.nan if v is None else v for batch, _, _ in results for v in batch.values]
        rewards = (
            acc.gather(torch.tensor(local, dtype=torch.float64, device=self.device)).cpu().numpy()
        )  # (N,)
        reward_stats = self._reward_record(epoch, rewards, results)  # refuses an epoch of abstentions
        keys = [item.key for item in self.epoch_items(epoch, range(len(rewards)))]
        advantages = self.advantages(keys, rewards)[list(self.global_indices())]
        train_stats = self.ppo.train_epoch(
            samples.trajectory,
            samples.conditioning,
            torch.tensor(advantages, dtype=torch.float32, device=self.device),
            self.global_indices(),
            lambda *parts: seed_for(cfg.run.seed, epoch, *parts),
            on_minibatch=lambda: progress.update(1),
        )
        finished = time.perf_counter()
        record = {
            "epoch": epoch,
            **reward_stats,
            "product_drift": float(np.mean(samples.product_drift)),
            **train_stats,
            "time_sample": sampled - started,
            "time_reward_wait": rewarded - sampled,
            "time_train": finished - rewarded,
        }
        self._save_grid(epoch, with_rewards(samples.preview, results))
        return record
