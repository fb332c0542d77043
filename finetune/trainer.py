"""The DDPO-IS loop for SD inpainting with LoRA: sample -> reward -> advantages -> PPO epochs.

Distributed with accelerate: each process samples its contiguous slice of the epoch's global sample
indices (every sample seeded by its global index), rewards are gathered so groups span processes, and the
LoRA gradients are averaged across processes with one all-reduce per optimizer step (the UNet is not
wrapped in DDP: no `module.` prefixes, no unused-parameter issues with adapters or checkpointing).
All randomness derives from (run.seed, epoch, sample index), so a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hfpc_finetune.advantages import GroupAdvantages
from hfpc_finetune.checkpoint import load_state, save_lora, save_state
from hfpc_finetune.config import FinetuneConfig
from hfpc_finetune.data import ProductPrompt, epoch_group_items, load_products
from hfpc_finetune.ddim_logprob import ddim_step_with_logprob
from hfpc_finetune.rewards import call_reward, load_reward
from hfpc_finetune.sampling import (
    Trajectory,
    decode,
    paste_back,
    predict_noise,
    prepare_conditioning,
    sample_with_logprob,
)
from PIL import Image

from hfpc_reward.config import save_resolved_config
from hfpc_reward.data.manifest import append_jsonl, read_jsonl

logger = logging.getLogger(__name__)

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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


def seed_for(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, epoch, index, ...), stable across processes and runs."""
    return int(
        np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1)
    )


class DDPOTrainer:
    def __init__(self, config: FinetuneConfig):
        from accelerate import Accelerator
        from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        self.config = config
        self.accelerator = Accelerator(mixed_precision=config.run.mixed_precision, cpu=config.run.cpu)
        self.device = self.accelerator.device
        logger.info(
            "process %d of %d on %s",
            self.accelerator.process_index,
            self.accelerator.num_processes,
            self.device,
        )
        self.out_dir = Path(config.run.out_dir)
        procs, sample, train = self.accelerator.num_processes, config.sample, config.train
        if sample.samples_per_epoch % (sample.batch_size * procs):
            raise ValueError(
                f"sample.samples_per_epoch ({sample.samples_per_epoch}) must be a multiple of "
                f"sample.batch_size x processes ({sample.batch_size} x {procs})"
            )
        if train.samples_per_step % (train.train_batch_size * procs):
            raise ValueError(
                f"train.samples_per_step ({train.samples_per_step}) must be a multiple of "
                f"train.train_batch_size x processes ({train.train_batch_size} x {procs})"
            )
        self.local_samples = sample.samples_per_epoch // procs
        if self.local_samples % train.train_batch_size:
            raise ValueError(
                f"samples per process ({self.local_samples}) must be a multiple of train.train_batch_size"
            )
        self.accumulation = train.samples_per_step // (train.train_batch_size * procs)

        self.weight_dtype = WEIGHT_DTYPES[config.run.mixed_precision]
        pipe = StableDiffusionInpaintPipeline.from_pretrained(
            config.model.pretrained,
            revision=config.model.revision,
            torch_dtype=self.weight_dtype,
            safety_checker=None,
            requires_safety_checker=False,
        )
        if pipe.unet.config.in_channels != 9:
            raise ValueError(
                f"{config.model.pretrained}: UNet has {pipe.unet.config.in_channels} input channels; "
                "DDPO here needs an inpainting UNet with 9 (latents + mask + masked image)"
            )
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            module.requires_grad_(False)
        pipe.to(self.device)
        with torch.random.fork_rng(devices=[]):  # the same LoRA init on every process and every run of a seed
            torch.manual_seed(config.run.seed)
            pipe.unet.add_adapter(
                LoraConfig(
                    r=config.model.lora_rank,
                    lora_alpha=config.model.lora_alpha,
                    target_modules=list(config.model.lora_targets),
                    init_lora_weights="gaussian",
                )
            )
        cast_training_params(pipe.unet, dtype=torch.float32)
        if config.model.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
        if config.model.xformers:
            pipe.unet.enable_xformers_memory_efficient_attention()
        self.pipe, self.unet, self.scheduler = pipe, pipe.unet, pipe.scheduler
        self.lora_params = [p for p in self.unet.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            self.lora_params,
            lr=train.learning_rate,
            betas=(train.adam_beta1, 0.999),
            weight_decay=train.adam_weight_decay,
            eps=train.adam_epsilon,
        )
        self.optimizer = self.accelerator.prepare(optimizer)
        self.products = load_products(config.data)
        self.reward_fn = load_reward(config.reward)
        self.advantages = GroupAdvantages(train.min_group_count, train.group_history)

    # ---- one epoch ------------------------------------------------------------------------------------
    def global_indices(self) -> range:
        start = self.accelerator.process_index * self.local_samples
        return range(start, start + self.local_samples)

    def sample_epoch(self, epoch: int, pool: ThreadPoolExecutor):
        """Sample this process's share; rewards run in `pool` while the next batch samples."""
        cfg, seed = self.config, self.config.run.seed
        group_items = epoch_group_items(
            len(self.products), cfg.sample.samples_per_epoch // cfg.train.group_size, seed, epoch
        )
        items = [self.products[group_items[g // cfg.train.group_size]] for g in self.global_indices()]
        trajectories, conds, futures, drifts, shown, reward_metrics = [], [], [], [], [], []
        self.unet.eval()
        for start in range(0, len(items), cfg.sample.batch_size):
            batch: list[ProductPrompt] = items[start : start + cfg.sample.batch_size]
            indices = self.global_indices()[start : start + cfg.sample.batch_size]
            with self.accelerator.autocast():
                cond = prepare_conditioning(
                    self.pipe,
                    [b.prompt for b in batch],
                    [b.image for b in batch],
                    [b.inpaint_mask() for b in batch],
                    cfg.sample.negative_prompt,
                    cfg.data.resolution,
                    self.device,
                    self.weight_dtype,
                )
                traj = sample_with_logprob(
                    self.pipe,
                    self.scheduler,
                    cond,
                    [seed_for(seed, epoch, g) for g in indices],
                    cfg.sample.num_steps,
                    cfg.sample.guidance_scale,
                    cfg.sample.eta,
                )
                decoded = decode(self.pipe, traj.latents[:, -1])
            images, drift = paste_back(
                decoded, [b.image for b in batch], [b.product_mask for b in batch], cfg.sample.paste_back
            )
            metrics: dict[str, list[float]] = {}
            reward_metrics.append(metrics)
            futures.append(pool.submit(self._timed_reward, batch, images, metrics))
            trajectories.append(traj)
            conds.append(cond)
            drifts.extend(drift)
            if len(shown) < 8:
                shown.extend((b.image, image) for b, image in zip(batch, images))
        return items, trajectories, conds, futures, drifts, shown[:8], reward_metrics

    def _timed_reward(self, batch: list[ProductPrompt], images: list[Image.Image], metrics: dict):
        started = time.perf_counter()
        values = call_reward(
            self.reward_fn,
            [b.prompt for b in batch],
            images,
            [b.image for b in batch],
            [b.product_mask for b in batch],
            lambda name, value: metrics.setdefault(name, []).append(float(value)),
            category=[b.category for b in batch],
        )
        return values, time.perf_counter() - started

    def train_epoch(
        self, epoch: int, trajectories: list[Trajectory], conds, advantages: torch.Tensor
    ) -> dict:
        """PPO-clip over the epoch's samples; returns training statistics (averaged over processes)."""
        cfg, seed, acc = self.config.train, self.config.run.seed, self.accelerator
        latents = torch.cat([t.latents for t in trajectories])  # (N,T+1,4,h,w)
        old_log_probs = torch.cat([t.log_probs for t in trajectories])  # (N,T)
        timesteps = trajectories[0].timesteps  # (T,)
        cond = conds[0] if len(conds) == 1 else _cat_conditioning(conds)
        num_steps = timesteps.shape[0]
        trained_steps = max(1, int(num_steps * cfg.timestep_fraction))
        advantages = advantages.clamp(-cfg.adv_clip_max, cfg.adv_clip_max)
        stats: dict[str, list[float]] = {
            "approx_kl": [],
            "clipfrac": [],
            "loss": [],
            "grad_norm": [],
            "kl": [],
        }
        first_dev = 0.0
        self.unet.train()
        for inner in range(cfg.inner_epochs):
            order = torch.randperm(
                len(latents),
                generator=torch.Generator().manual_seed(seed_for(seed, epoch, inner, acc.process_index)),
            )
            step_choice = torch.stack(
                [
                    torch.randperm(
                        num_steps,
                        generator=torch.Generator().manual_seed(seed_for(seed, epoch, inner, 10**9 + g)),
                    )
                    for g in self.global_indices()
                ]
            )[:, :trained_steps]  # (N,K) denoising step indices per sample
            minibatches = order.split(cfg.train_batch_size)
            updates_done = 0
            for mb_index, mb in enumerate(minibatches):
                mb_dev = mb.to(self.device)
                sub = cond.select(mb_dev)
                for j in range(trained_steps):
                    k = step_choice[mb, j].to(self.device)  # (b,) step index of each sample
                    x_t = latents[mb_dev, k]
                    x_prev = latents[mb_dev, k + 1]
                    t = timesteps[k]
                    with acc.autocast():
                        eps = predict_noise(
                            self.unet, self.scheduler, x_t, t, sub, self.config.sample.guidance_scale
                        )
                    step = ddim_step_with_logprob(
                        self.scheduler, eps, t, x_t, eta=self.config.sample.eta, prev_sample=x_prev
                    )
                    log_ratio = step.log_prob - old_log_probs[mb_dev, k]
                    ratio = torch.exp(log_ratio)
                    adv = advantages[mb_dev]
                    loss = torch.maximum(
                        -adv * ratio, -adv * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range)
                    ).mean()
                    if cfg.kl_coef > 0:
                        kl = self._kl_to_reference(x_t, t, sub, step)
                        loss = loss + cfg.kl_coef * kl
                        stats["kl"].append(kl.item())
                    acc.backward(loss / (trained_steps * self.accumulation))
                    stats["approx_kl"].append(0.5 * (log_ratio.detach() ** 2).mean().item())
                    stats["clipfrac"].append(
                        ((ratio.detach() - 1).abs() > cfg.clip_range).float().mean().item()
                    )
                    stats["loss"].append(loss.item())
                    if inner == 0 and updates_done == 0:
                        first_dev = max(first_dev, (ratio.detach() - 1).abs().max().item())
                if (mb_index + 1) % self.accumulation == 0 or mb_index == len(minibatches) - 1:
                    self._sync_gradients()
                    stats["grad_norm"].append(float(acc.clip_grad_norm_(self.lora_params, cfg.max_grad_norm)))
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    updates_done += 1
        means = torch.tensor(
            [np.mean(v) if v else 0.0 for v in stats.values()] + [first_dev], device=self.device
        )
        means = acc.reduce(means, reduction="mean")
        result = dict(zip(list(stats) + ["ratio_deviation_before_update"], means.tolist()))
        if cfg.kl_coef == 0:
            result.pop("kl")
        return result

    def _kl_to_reference(self, x_t, t, cond, step) -> torch.Tensor:
        """KL(policy || reference) of one step: both Gaussians share the std, so it is |mean diff|^2 / 2 std^2."""
        with torch.no_grad(), self.accelerator.autocast():
            self.unet.disable_adapters()
            try:
                eps_ref = predict_noise(
                    self.unet, self.scheduler, x_t, t, cond, self.config.sample.guidance_scale
                )
            finally:
                self.unet.enable_adapters()
            ref = ddim_step_with_logprob(
                self.scheduler, eps_ref, t, x_t, eta=self.config.sample.eta, prev_sample=step.prev_sample
            )
        per_sample = ((step.mean - ref.mean) ** 2).mean(dim=(1, 2, 3)) / (2 * step.std.reshape(-1) ** 2)
        return per_sample.mean()

    def _sync_gradients(self) -> None:
        """Average the LoRA gradients over processes (one flat all-reduce)."""
        if self.accelerator.num_processes == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.lora_params]
        flat = self.accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
        offset = 0
        for p, g in zip(self.lora_params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    # ---- the run --------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> RunSummary:
        cfg, acc = self.config, self.accelerator
        metrics_path = self.out_dir / "metrics.jsonl"
        start_epoch = 0
        if resume:
            state = load_state(self.out_dir / "state", self.unet, self.optimizer)
            if state is None:
                logger.warning(
                    "--resume: no saved state under %s, starting from scratch", self.out_dir / "state"
                )
            else:
                start_epoch = state["epoch"]
                self.advantages.load_state_dict(state["advantages"])
                logger.info("resumed after epoch %d", start_epoch)
        if acc.is_main_process:
            save_resolved_config(cfg, self.out_dir)
            kept = [r for r in read_jsonl(metrics_path) if r.get("epoch", 0) < start_epoch]
            tmp = metrics_path.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            append_jsonl(tmp, kept)
            tmp.replace(metrics_path)
        with ThreadPoolExecutor(max_workers=cfg.reward.num_workers) as pool:
            for epoch in range(start_epoch, cfg.train.epochs):
                record = self._run_epoch(epoch, pool)
                if acc.is_main_process:
                    append_jsonl(metrics_path, [record])
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
                    save_lora(self.unet, self.out_dir / "lora")
                    save_state(
                        self.out_dir / "state",
                        epoch + 1,
                        self.unet,
                        self.optimizer,
                        {"advantages": self.advantages.state_dict()},
                    )
                acc.wait_for_everyone()
        records = read_jsonl(metrics_path)
        return RunSummary(
            str(self.out_dir),
            len(records),
            records[0]["reward_mean"],
            records[-1]["reward_mean"],
            str(self.out_dir / "lora"),
        )

    def _run_epoch(self, epoch: int, pool: ThreadPoolExecutor) -> dict:
        cfg, acc = self.config, self.accelerator
        started = time.perf_counter()
        _, trajectories, conds, futures, drifts, shown, reward_metrics = self.sample_epoch(epoch, pool)
        sampled = time.perf_counter()
        results = [future.result() for future in futures]
        rewarded = time.perf_counter()
        local = [np.nan if v is None else v for values, _ in results for v in values]
        rewards = (
            acc.gather(torch.tensor(local, dtype=torch.float64, device=self.device)).cpu().numpy()
        )  # (N,)
        group_items = epoch_group_items(
            len(self.products), cfg.sample.samples_per_epoch // cfg.train.group_size, cfg.run.seed, epoch
        )
        keys = [self.products[group_items[g // cfg.train.group_size]].key for g in range(len(rewards))]
        advantages = self.advantages(keys, rewards)[list(self.global_indices())]
        train_stats = self.train_epoch(
            epoch, trajectories, conds, torch.tensor(advantages, dtype=torch.float32, device=self.device)
        )
        finished = time.perf_counter()
        valid = rewards[np.isfinite(rewards)]
        record = {
            "epoch": epoch,
            "reward_mean": float(valid.mean()) if len(valid) else float("nan"),
            "reward_std": float(valid.std()) if len(valid) else float("nan"),
            "reward_abstained": int((~np.isfinite(rewards)).sum()),
            "product_drift": float(np.mean(drifts)),
            **{f"reward/{name}": float(np.mean(values)) for name, values in _merge(reward_metrics).items()},
            **train_stats,
            "time_sample": sampled - started,
            "time_reward_wait": rewarded - sampled,
            "time_reward_compute": sum(seconds for _, seconds in results),
            "time_train": finished - rewarded,
        }
        if acc.is_main_process and cfg.run.grid_every and epoch % cfg.run.grid_every == 0:
            _save_grid(shown, self.out_dir / "grids" / f"epoch_{epoch:04d}.png")
        return record


def _cat_conditioning(conds):
    from hfpc_finetune.sampling import Conditioning

    return Conditioning(
        torch.cat([c.prompt_embeds for c in conds]),
        conds[0].negative_embeds,
        torch.cat([c.mask for c in conds]),
        torch.cat([c.masked_image_latents for c in conds]),
    )


def _merge(dicts: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    merged: dict[str, list[float]] = {}
    for d in dicts:
        for name, values in d.items():
            merged.setdefault(name, []).extend(values)
    return merged


def _save_grid(pairs: list[tuple[Image.Image, Image.Image]], path: Path) -> None:
    """Originals on the top row, the rewarded samples below."""
    if not pairs:
        return
    width, height = pairs[0][0].size
    grid = Image.new("RGB", (width * len(pairs), height * 2), "white")
    for column, (original, sample) in enumerate(pairs):
        grid.paste(original, (column * width, 0))
        grid.paste(sample, (column * width, height))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def train(config: FinetuneConfig, resume: bool = False) -> RunSummary:
    """Fine-tune per `config` (see configs/finetune/); returns the first/last epoch rewards and the LoRA path."""
    return DDPOTrainer(config).fit(resume=resume)
