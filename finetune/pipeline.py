"""The pipeline being fine-tuned: a 9-channel SD-inpainting pipeline, frozen, with a LoRA on its UNet.

Frozen weights take `run.mixed_precision`'s dtype; the LoRA weights stay float32 (diffusers'
`cast_training_params`), initialised from `run.seed` alone so every process and every run of a seed starts
from the same adapter. The scheduler becomes DDIM (the DDPO policy needs its eta > 0 step).
"""

from __future__ import annotations

import contextlib

import torch
from hfpc_finetune.config import FinetuneConfig

from hfpc_reward.errors import UsageError

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
INPAINT_UNET_CHANNELS = 9  # latents (4) + mask (1) + masked-image latents (4)


def load_lora_pipeline(config: FinetuneConfig, device):
    """(pipeline with a fresh LoRA on its UNet, AdamW over the LoRA weights)."""
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig
    from peft.utils.error import NoMatchingPeftModuleError

    try:  # its loading bars are off unless -v (hfpc_reward.cli.configure_logging)
        pipe = StableDiffusionInpaintPipeline.from_pretrained(
            config.model.pretrained,
            revision=config.model.revision,
            dtype=WEIGHT_DTYPES[config.run.mixed_precision],
            safety_checker=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError) as exc:  # a missing folder, an unknown hub id, an incomplete checkpoint
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(
            f"model.pretrained={config.model.pretrained!r} does not load as a diffusers inpainting pipeline "
            f"(a folder with model_index.json, or a hub id): {reason}"
        ) from None
    if pipe.unet.config.in_channels != INPAINT_UNET_CHANNELS:
        raise UsageError(
            f"{config.model.pretrained}: UNet has {pipe.unet.config.in_channels} input channels; DDPO here "
            f"needs an inpainting UNet with {INPAINT_UNET_CHANNELS} (latents + mask + masked image)"
        )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    if config.sample.num_steps > pipe.scheduler.config.num_train_timesteps:
        raise UsageError(
            f"sample.num_steps={config.sample.num_steps} exceeds the scheduler's "
            f"{pipe.scheduler.config.num_train_timesteps} training timesteps: use at most that many"
        )
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
    pipe.to(device)
    with torch.random.fork_rng(devices=[]):  # the same LoRA init on every process and every run of a seed
        torch.manual_seed(config.run.seed)
        try:
            pipe.unet.add_adapter(
                LoraConfig(
                    r=config.model.lora_rank,
                    lora_alpha=config.model.lora_alpha,
                    target_modules=list(config.model.lora_targets),
                    init_lora_weights="gaussian",
                )
            )
        except NoMatchingPeftModuleError as exc:
            raise UsageError(
                f"model.lora_targets={list(config.model.lora_targets)} match no module of the UNet "
                f"({str(exc).splitlines()[0]}): name its layers, e.g. [to_q, to_k, to_v, to_out.0]"
            ) from None
    cast_training_params(pipe.unet, dtype=torch.float32)
    if config.model.gradient_checkpointing:  # only when asked: less memory, ~30% slower training
        pipe.unet.enable_gradient_checkpointing()
    if config.model.xformers:
        pipe.unet.enable_xformers_memory_efficient_attention()
    train = config.train
    optimizer = torch.optim.AdamW(
        [p for p in pipe.unet.parameters() if p.requires_grad],
        lr=train.learning_rate,
        betas=(train.adam_beta1, 0.999),
        weight_decay=train.adam_weight_decay,
        eps=train.adam_epsilon,
    )
    return pipe, optimizer


@contextlib.contextmanager
def merged_lora(unet):
    """Within the block, the LoRA is merged into the frozen weights: sampling then costs what the base
    model costs (peft's unmerged layers run three products each). Training needs the unmerged layers; on
    leaving, the frozen weights are restored bit for bit (merging and unmerging alone would drift them)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [module for module in unet.modules() if isinstance(module, BaseTunerLayer)]
    frozen = [layer.get_base_layer().weight.detach().clone() for layer in layers]
    with torch.no_grad():
        for layer in layers:
            layer.merge()
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, weight in zip(layers, frozen):
                layer.unmerge()
                layer.get_base_layer().weight.copy_(weight)
