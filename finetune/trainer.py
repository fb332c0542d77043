"""The DDPO-IS loop for SD inpainting with LoRA: sample -> reward -> advantages -> PPO epochs.

Before the pipeline loads, the reward is resolved, built and probed on real product photos and the tracker
is checked; once everything loaded, the run takes `run.out_dir` (the run contract of `hfpc_reward.runs`: a
lock, the settings stamp `run.json`, a resume that refuses changed settings outside `SAFE_RESUME_KEYS`), so
a run that cannot start leaves nothing behind.
Distributed with accelerate: each process samples its contiguous slice of the epoch's global sample
indices (every sample seeded by its global index), rewards are gathered so groups span processes, and the
LoRA gradients are averaged across processes (see `ppo.py`). All randomness derives from (run.seed, epoch,
sample index), so a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hfpc_finetune.advantages import GroupAdvantages
from hfpc_finetune.checkpoint import load_state, save_lora, save_state
from hfpc_finetune.config import FinetuneConfig
from hfpc_finetune.data import ProductPrompt, epoch_group_items, load_products
from hfpc_finetune.pipeline import WEIGHT_DTYPES, load_lora_pipeline
from hfpc_finetune.ppo import Policy, PPOUpdate
from hfpc_finetune.rewards import (
    RewardBatch,
    RewardError,
    build_reward,
    call_reward,
    probe_reward,
    resolve_reward,
)
from hfpc_finetune.run_folder import METRICS_FILE, keep_epochs_before, own_run_folder
from hfpc_finetune.sampling import (
    Conditioning,
    Trajectory,
    decode,
    paste_back,
    prepare_conditioning,
    sample_with_logprob,
)
from hfpc_finetune.tracking import (
    TRACKER_PROJECT,
    model_card,
    primary_reasons,
    progress_bar,
    push_lora,
    resolve_tracker,
    save_grid,
    tracker_config,
)
from PIL import Image
from tqdm.contrib.logging import logging_redirect_tqdm

from hfpc_reward.config import ConfigError, config_to_dict
from hfpc_reward.data.manifest import append_jsonl, read_jsonl
from hfpc_reward.runs import flatten_settings, settings_hash

logger = logging.getLogger(__name__)

PREVIEW_SAMPLES = 8  # samples shown per grid (the first ones of the main process)


@dataclass
class RunSummary:
    out_dir: str
    epochs: int  # epochs finished in total (including before a resume)
    first_reward: float  # mean reward of the first epoch (before any update)
    last_reward: float  # mean reward of the last epoch
    lora_dir: str  # load with pipe.load_lora_weights(lora_dir)

    @property
    def reward_gain(self) -> float:
        return self.last_reward - self.first_reward


@dataclass
class EpochSamples:
    """One process's share of an epoch, collated: one row per sample (N rows), as PPO consumes it."""

    items: list[ProductPrompt]  # (N) the product, mask and prompt each sample inpainted
    trajectory: Trajectory  # latents (N,T+1,4,h,w), log_probs (N,T), timesteps (T,)
    conditioning: Conditioning  # prompt embeddings, masks and masked-image latents (N rows)
    product_drift: list[float]  # (N) mean |decoded - original| over product pixels, before paste-back
    rewards: list[Future]  # one per sampling batch, resolving to (RewardBatch, seconds spent)
    preview: list[tuple[Image.Image, Image.Image]]  # (original, rewarded image) of the first samples


def seed_for(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, epoch, index, ...), stable across processes and runs."""
    return int(
        np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1)
    )


class DDPOTrainer:
    """One fine-tuning run: everything checked and loaded at construction, `fit()` trains to train.epochs."""

    def __init__(self, config: FinetuneConfig, resume: bool = False, overwrite: bool = False):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.config = config
        self.out_dir = Path(config.run.out_dir)
        reward_terms = resolve_reward(config.reward)  # imports only: a wrong name fails in milliseconds
        self.tracker = resolve_tracker(config.run.report_to)
        self.accelerator = Accelerator(
            mixed_precision=config.run.mixed_precision,
            cpu=config.run.cpu,
            log_with=self.tracker,
            project_config=ProjectConfiguration(
                project_dir=str(self.out_dir), logging_dir=str(self.out_dir / "logs")
            ),
        )
        self.device = self.accelerator.device
        logger.info(
            "process %d of %d on %s",
            self.accelerator.process_index,
            self.accelerator.num_processes,
            self.device,
        )
        self._check_sizes()
        self.products = load_products(config.data)
        self.reward_fn = build_reward(reward_terms)
        probe_reward(self.reward_fn, self.products)  # a broken reward stops here, before the pipeline
        self.pipe, optimizer = load_lora_pipeline(config, self.device)
        self.optimizer = self.accelerator.prepare(optimizer)
        # the run takes its folder only now: a run that cannot start leaves nothing behind
        self.settings = config_to_dict(config)
        self._closing = contextlib.ExitStack()
        self.run = own_run_folder(
            config,
            self.settings,
            self.accelerator,
            self._closing,
            resume or config.run.resume == "latest",
            overwrite,
        )
        self.unet, self.scheduler = self.pipe.unet, self.pipe.scheduler
        self.lora_params = [p for p in self.unet.parameters() if p.requires_grad]
        policy = Policy(self.unet, self.scheduler, config.sample.guidance_scale, config.sample.eta)
        self.ppo = PPOUpdate(
            policy, self.optimizer, self.accelerator, self.lora_params, config.train, self.accumulation
        )
        self.advantages = GroupAdvantages(config.train.min_group_count, config.train.group_history)
        self.reward_name = " + ".join(f"{t.weight:g} x {t.name}" for t in reward_terms)

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

    def _timed_reward(self, batch: list[ProductPrompt], images: list[Image.Image]):
        started = time.perf_counter()
        metrics: dict[str, list[float]] = {}
        result = call_reward(
            self.reward_fn,
            [b.prompt for b in batch],
            images,
            [b.image for b in batch],
            [b.product_mask for b in batch],
            lambda name, value: metrics.setdefault(name, []).append(float(value)),
            category=[b.category for b in batch],
        )
        return result, metrics, time.perf_counter() - started

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
        self._refuse_abstaining_epoch(epoch, rewards, results)
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
        valid = rewards[np.isfinite(rewards)]
        metrics: dict[str, list[float]] = {}
        for _, batch_metrics, _ in results:
            for name, values in batch_metrics.items():
                metrics.setdefault(name, []).extend(values)
        record = {
            "epoch": epoch,
            "reward_mean": float(valid.mean()),
            "reward_std": float(valid.std()),
            "reward_abstained": int((~np.isfinite(rewards)).sum()),
            "product_drift": float(np.mean(samples.product_drift)),
            **{f"reward/{name}": float(np.mean(values)) for name, values in metrics.items()},
            **train_stats,
            "time_sample": sampled - started,
            "time_reward_wait": rewarded - sampled,
            "time_reward_compute": sum(seconds for _, _, seconds in results),
            "time_train": finished - rewarded,
        }
        if acc.is_main_process and cfg.run.grid_every and epoch % cfg.run.grid_every == 0:
            self._save_grid(epoch, samples, results)
        return record

    def _refuse_abstaining_epoch(self, epoch: int, rewards: np.ndarray, results) -> None:
        """Stop the run (every process alike: `rewards` is gathered) when too many rewards abstained."""
        abstained = int((~np.isfinite(rewards)).sum())
        if abstained <= self.config.reward.max_abstain_fraction * len(rewards) and abstained < len(rewards):
            return
        first_error = next((batch.error for batch, _, _ in results if batch.error), None)
        raise RewardError(
            f"epoch {epoch}: the reward abstained on {abstained} of {len(rewards)} samples (more than "
            f"reward.max_abstain_fraction={self.config.reward.max_abstain_fraction}); first error: "
            f"{first_error or 'none raised (the reward returned None)'}"
        )

    def _save_grid(self, epoch: int, samples: EpochSamples, results) -> None:
        values = [v for batch, _, _ in results for v in batch.values]
        reasons = [r for batch, _, _ in results for r in primary_reasons(batch.extras, len(batch.values))]
        previews = [(o, s, v, r) for (o, s), v, r in zip(samples.preview, values, reasons)]
        save_grid(self.out_dir / "grids" / f"epoch_{epoch:04d}.png", previews, self.accelerator, epoch)

    # ---- the run --------------------------------------------------------------------------------------
    def fit(self) -> RunSummary:
        """Train to `train.epochs` (continuing a resumed run), then release the output folder."""
        try:
            return self._fit()
        finally:
            self.accelerator.end_training()
            self._closing.close()

    def _fit(self) -> RunSummary:
        cfg, acc = self.config, self.accelerator
        metrics_path = self.out_dir / METRICS_FILE
        start_epoch = self._restore() if self.run.resuming else 0
        if acc.is_main_process:
            keep_epochs_before(metrics_path, start_epoch)
        acc.init_trackers(TRACKER_PROJECT, config=tracker_config(flatten_settings(self.settings)))
        per_epoch = self.local_samples // cfg.sample.batch_size + cfg.train.inner_epochs * -(
            -self.local_samples // cfg.train.train_batch_size
        )  # progress units: sampling batches + PPO minibatches
        bar = progress_bar((cfg.train.epochs - start_epoch) * per_epoch, acc.is_main_process)
        with logging_redirect_tqdm(), bar, ThreadPoolExecutor(max_workers=cfg.reward.num_workers) as pool:
            for epoch in range(start_epoch, cfg.train.epochs):
                bar.set_postfix_str(f"epoch {epoch + 1}/{cfg.train.epochs}")
                record = self._run_epoch(epoch, pool, bar)
                if acc.is_main_process:
                    append_jsonl(metrics_path, [record])
                acc.log(record, step=epoch)
                logger.info(
                    "epoch %d: reward %.4f +- %.4f, approx_kl %.2e, clipfrac %.3f",
                    epoch,
                    record["reward_mean"],
                    record["reward_std"],
                    record["approx_kl"],
                    record["clipfrac"],
                )
                last = epoch + 1 == cfg.train.epochs
                if acc.is_main_process and ((epoch + 1) % cfg.run.save_every == 0 or last):
                    self._save(epoch + 1, read_jsonl(metrics_path))
                acc.wait_for_everyone()
        records = read_jsonl(metrics_path)
        summary = RunSummary(
            str(self.out_dir),
            len(records),
            records[0]["reward_mean"],
            records[-1]["reward_mean"],
            str(self.out_dir / "lora"),
        )
        if acc.is_main_process:
            self.run.update_stamp(finished_epochs=summary.epochs, reward_gain=summary.reward_gain)
            if cfg.run.push_to_hub:
                push_lora(self.out_dir / "lora", cfg.run.hub_model_id)
        return summary

    def _restore(self) -> int:
        state = load_state(self.out_dir / "state", self.unet, self.optimizer)
        if state is None:
            logger.info("resume: no saved state under %s yet, starting at epoch 0", self.out_dir / "state")
            return 0
        self.advantages.load_state_dict(state["advantages"])
        logger.info("resumed after epoch %d", state["epoch"])
        return state["epoch"]

    def _save(self, finished_epochs: int, records: list[dict]) -> None:
        card = model_card(
            self.config.model.pretrained,
            self.reward_name,
            settings_hash(self.settings),
            self.settings,
            records,
        )
        save_lora(self.unet, self.out_dir / "lora", card)
        save_state(
            self.out_dir / "state",
            finished_epochs,
            self.unet,
            self.optimizer,
            {"advantages": self.advantages.state_dict()},
        )


def train(config: FinetuneConfig, resume: bool = False, overwrite: bool = False) -> RunSummary:
    """Fine-tune per `config` (see configs/finetune/); returns the first/last epoch rewards and the LoRA path."""
    return DDPOTrainer(config, resume=resume, overwrite=overwrite).fit()
