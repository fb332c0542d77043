"""A tiny random Stable Diffusion *inpainting* pipeline (9-channel UNet) for offline tests, demo and benchmarks.

Same classes as `stable-diffusion-v1-5/stable-diffusion-inpainting` at toy sizes (~0.4M parameters):
UNet2DConditionModel with 9 input channels (latents + mask + masked-image latents), AutoencoderKL with 4
latent channels, CLIPTextModel + a CLIPTokenizer built in memory, DDIMScheduler with `steps_offset=1`
(DDPO needs a nonzero std at the last step), no safety checker. 4 steps at 64x64 take ~0.2 s on a CPU.
"""

from __future__ import annotations

from pathlib import Path

# character-level vocabulary (no merges): every lowercase prompt tokenises, word by word, into letters
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789,.-'"


def sd_ddim_scheduler():
    """SD v1's DDIM noise schedule with `steps_offset=1` (DDPO needs a nonzero std at the last step)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_tiny_sd_inpaint(seed: int = 0):
    """The tiny pipeline object, built in memory (seeded)."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=9,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,  # 4 channels per norm group (SD: 10), so adapters can move channel means
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    # a random decoder maps latents to pixels chaotically; a trained one smoothly. Zeroing the residual branches
    # (resnet conv2, attention out) leaves a smooth, nearly linear decoder, so toy rewards such as background
    # brightness respond to the policy like they do with a real VAE, and tiny fine-tunes can show learning.
    for name, module in vae.decoder.named_modules():
        if name.endswith(("conv2", "to_out.0")):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=3 + 2 * len(_CHARS),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            projection_dim=32,
        )
    )
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "<unk>": 2}
    for char in _CHARS:
        vocab[char] = len(vocab)
        vocab[f"{char}</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    scheduler = sd_ddim_scheduler()
    return StableDiffusionInpaintPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def write_tiny_sd_inpaint(out_dir: Path) -> dict:
    """Save the tiny pipeline (plus a few sample products) and return the tiny fine-tune config delta."""
    out_dir = Path(out_dir)
    pipeline_dir = out_dir / "pipeline"
    build_tiny_sd_inpaint().save_pretrained(pipeline_dir, safe_serialization=True)
    manifest = write_tiny_products(out_dir / "products", n_products=4, size=64)
    # learns in a CPU minute: LoRA on the UNet's output conv (it can move the latents' channel means that the
    # tiny decoder turns into brightness), no CFG (half the UNet work), a dark-background brightness target
    config = {
        "model": {
            "pretrained": str(pipeline_dir),
            "lora_rank": 4,
            "lora_alpha": 4.0,
            "lora_targets": ["conv_out"],
        },
        "data": {
            "manifest": str(manifest),
            "prompts": ["a photo on a dark studio background", "product on a wooden table"],
            "resolution": 32,
        },
        "sample": {"num_steps": 4, "guidance_scale": 1.0, "batch_size": 8, "samples_per_epoch": 32},
        "train": {
            "epochs": 8,
            "group_size": 4,
            "learning_rate": 0.1,
            "clip_range": 0.2,
            "train_batch_size": 8,
            "samples_per_step": 32,
        },
        "reward": {"name": "background_brightness", "kwargs": {"target": 0.0}},
        "run": {"out_dir": str(out_dir / "run"), "mixed_precision": "no", "grid_every": 4, "cpu": True},
    }
    return {"finetune_tiny": config}


def write_tiny_products(out_dir: Path, n_products: int, size: int, seed: int = 0) -> Path:
    """A manifest of simple synthetic products (a coloured shape on a grey background + its mask)."""
    import numpy as np
    from PIL import Image

    from hfpc_reward.data.manifest import write_jsonl

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n_products):
        yy, xx = np.mgrid[:size, :size]
        cx, cy = rng.uniform(0.35, 0.65, size=2) * size
        radius = rng.uniform(0.15, 0.3) * size
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
        image = np.full((size, size, 3), 110, np.uint8)
        image[mask] = rng.integers(30, 230, size=3)
        Image.fromarray(image).save(out_dir / f"product_{index}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(out_dir / f"product_{index}_mask.png")
        rows.append(
            {
                "origin": f"product_{index}.png",
                "mask": f"product_{index}_mask.png",
                "prompt": "a product photo on a clean background",
                "product_id": f"p{index}",
                "category": "toy",
            }
        )
    manifest = out_dir / "manifest.jsonl"
    write_jsonl(manifest, rows)
    return manifest
