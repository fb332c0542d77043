"""Sampling a 9-channel SD-inpainting pipeline with per-step log-probs (the DDPO rollout).

The UNet input is [x_t, mask, masked-image latents] (4 + 1 + 4 channels) as in diffusers'
`StableDiffusionInpaintPipeline.__call__`; prompts are encoded with the pipeline's own `encode_prompt`.
Differences from the pipeline, on purpose: masked-image latents use the VAE posterior *mode* and every
sample draws its noise from its own seeded generator, so a sample depends only on its seed (the same
samples on 1 or N processes, and on resume). `predict_noise` is the one forward used for sampling AND for
training, so the likelihood ratio is exactly 1 before the first update.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from hfpc_finetune.ddim_logprob import ddim_step_with_logprob
from PIL import Image

from hfpc_reward.images import paste_product, tensor_to_pil


@dataclass
class Conditioning:
    """What the UNet needs besides x_t, per sample (plus the shared unconditional prompt embedding)."""

    prompt_embeds: torch.Tensor  # (B,L,D) text embeddings of the prompts
    negative_embeds: torch.Tensor  # (1,L,D) embedding of the negative / empty prompt (CFG)
    mask: torch.Tensor  # (B,1,h,w) inpainting mask at latent size: 1 = repaint (background)
    masked_image_latents: torch.Tensor  # (B,4,h,w) VAE latents of the image with the background blanked

    def select(self, index) -> Conditioning:
        return Conditioning(
            self.prompt_embeds[index],
            self.negative_embeds,
            self.mask[index],
            self.masked_image_latents[index],
        )

    @classmethod
    def cat(cls, parts: list[Conditioning]) -> Conditioning:
        """The conditioning of several batches as one (they share the unconditional embedding)."""
        if len(parts) == 1:
            return parts[0]
        return cls(
            torch.cat([c.prompt_embeds for c in parts]),
            parts[0].negative_embeds,
            torch.cat([c.mask for c in parts]),
            torch.cat([c.masked_image_latents for c in parts]),
        )


@dataclass
class Trajectory:
    latents: torch.Tensor  # (B,T+1,4,h,w): x_T ... x_0
    log_probs: torch.Tensor  # (B,T) float32 log-prob of each step under the sampling policy
    timesteps: torch.Tensor  # (T,) scheduler timesteps, shared by the batch

    @classmethod
    def cat(cls, parts: list[Trajectory]) -> Trajectory:
        """Several batches' trajectories as one (they share the timesteps)."""
        return cls(
            torch.cat([t.latents for t in parts]), torch.cat([t.log_probs for t in parts]), parts[0].timesteps
        )


@torch.no_grad()
def prepare_conditioning(
    pipe,
    prompts: list[str],
    images: list[Image.Image],
    inpaint_masks: list[Image.Image],
    negative_prompt: str,
    resolution: int,
    device,
    dtype,
) -> Conditioning:
    """Encode prompts, the background mask and the masked image like the inpainting pipeline does."""
    prompt_embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
    negative_embeds, _ = pipe.encode_prompt([negative_prompt], device, 1, False)
    pixels = pipe.image_processor.preprocess(images, height=resolution, width=resolution).to(device, dtype)
    mask = pipe.mask_processor.preprocess(inpaint_masks, height=resolution, width=resolution).to(
        device, dtype
    )
    latents = encode_pixels(pipe, pixels * (mask < 0.5))
    mask = F.interpolate(mask, size=latents.shape[-2:])
    return Conditioning(prompt_embeds.to(dtype), negative_embeds.to(dtype), mask, latents.to(dtype))


@torch.no_grad()
def encode_pixels(pipe, pixels: torch.Tensor) -> torch.Tensor:
    """VAE latents (posterior mode, scaled) of preprocessed images (B,3,H,W) in [-1,1]."""
    return pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor


def predict_noise(
    unet, scheduler, latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning, guidance_scale: float
) -> torch.Tensor:
    """The guided noise prediction eps(x_t, t) (B,4,h,w); `timesteps` is a scalar or (B,) tensor."""
    batch = latents.shape[0]
    timesteps = timesteps.reshape(-1).expand(batch) if timesteps.numel() == 1 else timesteps
    negative = cond.negative_embeds.expand(batch, -1, -1)
    latent_input = scheduler.scale_model_input(latents, timesteps)
    if guidance_scale > 1.0:
        model_input = torch.cat([latent_input] * 2)
        model_input = torch.cat(
            [model_input, cond.mask.repeat(2, 1, 1, 1), cond.masked_image_latents.repeat(2, 1, 1, 1)], dim=1
        )
        out = unet(
            model_input,
            timesteps.repeat(2),
            encoder_hidden_states=torch.cat([negative, cond.prompt_embeds]),
            return_dict=False,
        )[0]
        uncond, text = out.chunk(2)
        return uncond + guidance_scale * (text - uncond)
    model_input = torch.cat([latent_input, cond.mask, cond.masked_image_latents], dim=1)
    return unet(model_input, timesteps, encoder_hidden_states=cond.prompt_embeds, return_dict=False)[0]


@torch.no_grad()
def sample_with_logprob(
    pipe, scheduler, cond: Conditioning, seeds: list[int], num_steps: int, guidance_scale: float, eta: float
) -> Trajectory:
    """Run the DDIM (eta) chain from seeded noise, recording every x_t and each step's log-prob."""
    unet = pipe.unet
    device, dtype = cond.prompt_embeds.device, cond.prompt_embeds.dtype
    generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]
    h, w = cond.mask.shape[-2:]
    shape = (pipe.vae.config.latent_channels, h, w)

    def noise() -> torch.Tensor:  # (B,4,h,w), each sample from its own generator
        return torch.stack(
            [torch.randn(shape, generator=g, device=device, dtype=torch.float32) for g in generators]
        )

    scheduler.set_timesteps(num_steps, device=device)
    latents = (noise() * scheduler.init_noise_sigma).to(dtype)
    all_latents, log_probs = [latents], []
    for t in scheduler.timesteps:
        eps = predict_noise(unet, scheduler, latents, t, cond, guidance_scale)
        step = ddim_step_with_logprob(scheduler, eps, t, latents, eta=eta, noise=noise())
        latents = step.prev_sample
        all_latents.append(latents)
        log_probs.append(step.log_prob)
    return Trajectory(
        torch.stack(all_latents, dim=1), torch.stack(log_probs, dim=1), scheduler.timesteps.clone()
    )


@torch.no_grad()
def decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Latents (B,4,h,w) -> images (B,3,H,W) float32 in [0,1] on the CPU."""
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1).cpu()


def paste_back(
    decoded: torch.Tensor, originals: list[Image.Image], product_masks: list[np.ndarray], paste: bool = True
) -> tuple[list[Image.Image], list[float]]:
    """The images the reward sees (product pasted back if `paste`) and each sample's product drift.

    Drift = mean |decoded - original| over product pixels (RGB in [0,1]) *before* paste-back: how much the
    9-channel UNet re-synthesised the product it was asked to keep.
    """
    generated = tensor_to_pil(decoded)
    drifts = []
    for index, (original, mask) in enumerate(zip(originals, product_masks)):
        reference = torch.from_numpy(np.asarray(original, dtype=np.float32) / 255.0).permute(2, 0, 1)
        inside = torch.from_numpy(mask)
        drifts.append(float((decoded[index] - reference).abs()[:, inside].mean()))
        if paste:
            generated[index] = paste_product(generated[index], original, mask)
    return generated, drifts
