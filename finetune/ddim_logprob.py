"""One DDIM step (eta > 0) that also returns the Gaussian log-probability of x_{t-1}: the DDPO policy.

Written against `DDIMScheduler`'s public state (`alphas_cumprod`, `final_alpha_cumprod`,
`num_inference_steps`, `config`), following its `step` (DDIM paper eqs. 12 and 16), with per-sample
timesteps so a training batch may mix denoising steps. The log-prob is averaged over latent dimensions
(summing gives huge values and NaNs in the ratio); the std must be nonzero, which for SD's schedule needs
`steps_offset=1` (else the last step has alpha_t == alpha_prev and std 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class DDIMStepOutput:
    prev_sample: torch.Tensor  # x_{t-1} (B,C,H,W): given one, or mean + std * noise
    log_prob: torch.Tensor  # (B,) float32 log N(x_{t-1}; mean, std^2), averaged over C*H*W
    mean: torch.Tensor  # (B,C,H,W) float32 DDIM mean of x_{t-1}
    std: torch.Tensor  # (B,1,1,1) float32 std of x_{t-1}


def ddim_step_with_logprob(
    scheduler,
    model_output: torch.Tensor,
    timestep: torch.Tensor | int,
    sample: torch.Tensor,
    eta: float = 1.0,
    prev_sample: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> DDIMStepOutput:
    """x_t -> x_{t-1} with log-prob. Pass `prev_sample` to score a stored step, or `noise` to draw one.

    model_output, sample: (B,C,H,W); timestep: an int or a (B,) tensor of scheduler timesteps.
    """
    config = scheduler.config
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(num_steps) before stepping")
    if (prev_sample is None) == (noise is None):
        raise ValueError("pass exactly one of prev_sample (to score a step) or noise (to sample one)")
    batch = sample.shape[0]
    device = sample.device
    timestep = torch.as_tensor(timestep, device=device).reshape(-1).expand(batch).long()
    prev_timestep = timestep - config.num_train_timesteps // scheduler.num_inference_steps
    alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, device=device, dtype=torch.float32)
    alpha_prod_t = alphas_cumprod[timestep]
    alpha_prod_prev = torch.where(prev_timestep >= 0, alphas_cumprod[prev_timestep.clamp(min=0)], final)
    alpha_prod_t, alpha_prod_prev = _expand(alpha_prod_t), _expand(alpha_prod_prev)
    beta_prod_t = 1 - alpha_prod_t

    model_output = model_output.float()
    sample_f = sample.float()
    if config.prediction_type == "epsilon":
        pred_original = (sample_f - beta_prod_t.sqrt() * model_output) / alpha_prod_t.sqrt()
        pred_epsilon = model_output
    elif config.prediction_type == "v_prediction":
        pred_original = alpha_prod_t.sqrt() * sample_f - beta_prod_t.sqrt() * model_output
        pred_epsilon = alpha_prod_t.sqrt() * model_output + beta_prod_t.sqrt() * sample_f
    elif config.prediction_type == "sample":
        pred_original = model_output
        pred_epsilon = (sample_f - alpha_prod_t.sqrt() * pred_original) / beta_prod_t.sqrt()
    else:
        raise ValueError(f"unsupported prediction_type {config.prediction_type!r}")
    if config.thresholding:
        raise ValueError("DDPO sampling does not support scheduler thresholding; set thresholding=False")
    if config.clip_sample:
        pred_original = pred_original.clamp(-config.clip_sample_range, config.clip_sample_range)

    variance = (1 - alpha_prod_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_prev)
    std = eta * variance.sqrt()
    if bool((std <= 0).any()):
        raise ValueError(
            "DDIM step with zero noise (std 0): the log-prob is undefined. Use a scheduler with steps_offset=1 "
            "(SD checkpoints ship it) and eta > 0"
        )
    direction = (1 - alpha_prod_prev - std**2).clamp(min=0).sqrt() * pred_epsilon
    mean = alpha_prod_prev.sqrt() * pred_original + direction
    if prev_sample is None:
        prev_sample = (mean + std * noise.float()).to(sample.dtype)
    log_prob = (
        -((prev_sample.detach().float() - mean) ** 2) / (2 * std**2)
        - std.log()
        - math.log(math.sqrt(2 * math.pi))
    )
    return DDIMStepOutput(prev_sample, log_prob.mean(dim=tuple(range(1, log_prob.ndim))), mean, std)


def _expand(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, 1, 1, 1)
