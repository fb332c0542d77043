"""The DDPO-IS update: PPO-clip on each denoising step's likelihood ratio, over one epoch's samples.

For every minibatch of samples and each trained denoising step, the current policy rescores the stored
step x_t -> x_{t-1}; the loss is PPO's clipped surrogate on exp(logp_new - logp_old) times the sample's
advantage. Each inner epoch draws one order of the epoch's global samples, the same on every process; each
optimizer step takes the next `train.samples_per_step` of them, and every process trains those it holds, so
a step's samples, and the LoRA, do not depend on the number of processes. The UNet is not wrapped in DDP
(no `module.` prefixes, adapters and checkpointing work as in one process), so the LoRA gradients are summed
across processes by one flat all-reduce per step (`sync_gradients`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from hfpc_finetune.config import TrainConfig
from hfpc_finetune.ddim_logprob import DDIMStepOutput, ddim_step_with_logprob
from hfpc_finetune.sampling import Conditioning, Trajectory, predict_noise

# seeds of the per-sample choice of trained steps live in their own range, apart from the minibatch orders
STEP_CHOICE_SEED_OFFSET = 10**9


@dataclass
class Policy:
    """The model being trained and how it steps: the LoRA-adapted UNet under DDIM (eta), with guidance."""

    unet: torch.nn.Module
    scheduler: object
    guidance_scale: float
    eta: float

    def step(self, x_t, t, cond: Conditioning, x_prev, autocast) -> DDIMStepOutput:
        """Rescore the stored step x_t -> x_prev (B samples, per-sample timesteps t (B,))."""
        with autocast():
            eps = predict_noise(self.unet, self.scheduler, x_t, t, cond, self.guidance_scale)
        return ddim_step_with_logprob(self.scheduler, eps, t, x_t, eta=self.eta, prev_sample=x_prev)

    def reference_kl(self, x_t, t, cond: Conditioning, step: DDIMStepOutput, autocast) -> torch.Tensor:
        """KL(policy || reference = LoRA disabled) of one step: same std, so |mean diff|^2 / 2 std^2."""
        with torch.no_grad():
            self.unet.disable_adapters()
            try:
                reference = self.step(x_t, t, cond, step.prev_sample, autocast)
            finally:
                self.unet.enable_adapters()
        per_sample = ((step.mean - reference.mean) ** 2).mean(dim=(1, 2, 3)) / (2 * step.std.reshape(-1) ** 2)
        return per_sample.mean()


def clipped_surrogate(log_prob, old_log_prob, advantages, clip_range: float):
    """PPO's loss -min(A r, A clip(r, 1 +- eps)) averaged over the batch; returns (loss, ratio, log_ratio)."""
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    loss = torch.maximum(
        -advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    ).mean()
    return loss, ratio, log_ratio


def step_choice(num_steps: int, trained_steps: int, seed_of: Callable[[int], int], indices) -> torch.Tensor:
    """(N,K) denoising steps trained per sample: a seeded random subset of K of the T steps per sample."""
    return torch.stack(
        [
            torch.randperm(num_steps, generator=torch.Generator().manual_seed(seed_of(g)))[:trained_steps]
            for g in indices
        ]
    )


class PPOUpdate:
    """One epoch of PPO over the samples a process drew (`train_epoch`)."""

    def __init__(
        self, policy: Policy, optimizer, accelerator, lora_params, config: TrainConfig, accumulation
    ):
        self.policy, self.optimizer, self.accelerator = policy, optimizer, accelerator
        self.lora_params, self.config, self.accumulation = lora_params, config, accumulation

    def train_epoch(
        self,
        trajectory: Trajectory,
        cond: Conditioning,
        advantages: torch.Tensor,
        indices: range,
        seed_of: Callable[..., int],
        on_minibatch: Callable[[], None] = lambda: None,
    ) -> dict[str, float]:
        """PPO-clip over the epoch's samples (`indices` = their global indices); statistics averaged over
        processes. `seed_of(*parts)` seeds the minibatch order and the trained steps of each inner epoch."""
        cfg, acc, device = self.config, self.accelerator, advantages.device
        num_steps = trajectory.timesteps.shape[0]
        trained_steps = max(1, int(num_steps * cfg.timestep_fraction))
        advantages = advantages.clamp(-cfg.adv_clip_max, cfg.adv_clip_max)
        stats: dict[str, list[float]] = {k: [] for k in ("approx_kl", "clipfrac", "loss", "grad_norm", "kl")}
        first_deviation = 0.0
        self.policy.unet.train()
        position = {g: i for i, g in enumerate(indices)}  # global sample index -> row of this process
        for inner in range(cfg.inner_epochs):
            # one global order on every process: optimizer step s trains the global samples in chunk s, each
            # process those it holds, so the steps are the same on 1 or N processes
            order = torch.randperm(
                len(indices) * acc.num_processes, generator=torch.Generator().manual_seed(seed_of(inner))
            )
            steps = step_choice(
                num_steps,
                trained_steps,
                lambda g, inner=inner: seed_of(inner, STEP_CHOICE_SEED_OFFSET + g),
                indices,
            )
            for updates_done, chunk in enumerate(order.split(cfg.samples_per_step)):
                mine = torch.tensor([position[g] for g in chunk.tolist() if g in position], dtype=torch.long)
                for mb in mine.split(cfg.train_batch_size):
                    mb_dev = mb.to(device)
                    sub = cond.select(mb_dev)
                    for j in range(trained_steps):
                        k = steps[mb, j].to(device)  # (b,) step index of each sample
                        x_t, x_prev = trajectory.latents[mb_dev, k], trajectory.latents[mb_dev, k + 1]
                        t = trajectory.timesteps[k]
                        step = self.policy.step(x_t, t, sub, x_prev, acc.autocast)
                        loss, ratio, log_ratio = clipped_surrogate(
                            step.log_prob, trajectory.log_probs[mb_dev, k], advantages[mb_dev], cfg.clip_range
                        )
                        if cfg.kl_coef > 0:
                            kl = self.policy.reference_kl(x_t, t, sub, step, acc.autocast)
                            loss = loss + cfg.kl_coef * kl
                            stats["kl"].append(kl.item())
                        # the step's gradient is the mean over its samples (summed over processes below)
                        acc.backward(loss * len(mb) / (trained_steps * len(chunk)))
                        stats["approx_kl"].append(0.5 * (log_ratio.detach() ** 2).mean().item())
                        stats["clipfrac"].append(
                            ((ratio.detach() - 1).abs() > cfg.clip_range).float().mean().item()
                        )
                        stats["loss"].append(loss.item())
                        if inner == 0 and updates_done == 0:
                            first_deviation = max(first_deviation, (ratio.detach() - 1).abs().max().item())
                self.sync_gradients()
                stats["grad_norm"].append(float(acc.clip_grad_norm_(self.lora_params, cfg.max_grad_norm)))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                for _ in range(self.accumulation):  # progress counts this process's share of minibatches
                    on_minibatch()
        means = torch.tensor(
            [np.mean(v) if v else 0.0 for v in stats.values()] + [first_deviation], device=device
        )
        means = acc.reduce(means, reduction="mean")
        result = dict(zip(list(stats) + ["ratio_deviation_before_update"], means.tolist()))
        if cfg.kl_coef == 0:
            result.pop("kl")
        return result

    def sync_gradients(self) -> None:
        """Sum the LoRA gradients over processes (one flat all-reduce; the UNet is not DDP-wrapped): each holds
        its samples' share of the step's mean."""
        if self.accelerator.num_processes == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.lora_params]
        flat = self.accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="sum")
        offset = 0
        for p, g in zip(self.lora_params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
            offset += g.numel()
