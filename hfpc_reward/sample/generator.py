"""Train the mini world's inpainting generator from scratch: a real `StableDiffusionInpaintPipeline`, small.

Components (all built from configs, trained here, saved with `save_pretrained` as safetensors and loaded
back through `from_pretrained` by finetune/ and eval/ like any hub checkpoint):
- AutoencoderKL (16,32,32) channels, 64 px -> 16x16x4 latents (0.24M parameters);
- UNet2DConditionModel with 9 input channels (latents + mask + masked-image latents), (32,64,64), 1.66M;
- CLIPTextModel (hidden 32, 2 layers) + a CLIPTokenizer built in memory (one token per prompt word);
- DDIMScheduler with steps_offset=1 (DDPO needs a nonzero std at the last step).

Stage 1 trains the VAE on world renders (MSE + a small KL); stage 2 freezes it, caches the latents of a fixed
set of renders, and trains UNet + text encoder on the inpainting objective: mask = background (the inverse
of the product), epsilon prediction, 10% empty prompts (so classifier-free guidance works). The renders mix
in the world's flaws (`world.FLAWS`: wrong captions, bleed, blotches) at `GeneratorConfig.flaw_mix`, so the
base generator sometimes fails like a real one. Training uses accelerate, is seeded (every batch is drawn
from (seed, stage, step)) and resumable from `out_dir/state` (saved every `save_every` steps).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hfpc_reward.config import config_to_dict
from hfpc_reward.data.manifest import append_jsonl
from hfpc_reward.runs import check_resume
from hfpc_reward.sample.world import FLAWS, SCENE_KINDS, WORLD_SIZE, render, world_products

logger = logging.getLogger(__name__)

_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789,.-'"


@dataclass
class GeneratorConfig:
    """Mini generator training (`hfpc world train-generator`)."""

    out_dir: str = "outputs/mini_world/generator"  # pipeline/ (the result), state/ (resume), metrics.jsonl
    seed: int = 0  # every random draw derives from (seed, stage, step)
    train_products: int = 64  # world products of the train split the generator sees
    renders: int = 3072  # renders cached for stage 2 (product x scene x flaw draws)
    flaw_mix: dict[str, float] = field(
        default_factory=lambda: {"none": 0.55, "wrong_scene": 0.2, "bleed": 0.125, "blotch": 0.125}
    )  # share of each world flaw among the training renders (the base model's failure modes)
    vae_steps: int = 400  # stage 1 optimizer steps
    vae_batch_size: int = 16  # stage 1 renders per step
    vae_learning_rate: float = 1e-3  # stage 1 AdamW learning rate
    vae_kl_weight: float = 1e-6  # weight of the KL term (keeps latents near N(0,1) scale)
    unet_steps: int = 1200  # stage 2 optimizer steps
    unet_batch_size: int = 32  # stage 2 renders per step
    unet_learning_rate: float = 1e-3  # stage 2 AdamW learning rate (cosine decay to 10%)
    prompt_dropout: float = 0.1  # share of stage 2 samples trained with the empty prompt (for CFG)
    save_every: int = 250  # steps between resumable checkpoints
    log_every: int = 50  # steps between metrics.jsonl lines

    def __post_init__(self):
        if set(self.flaw_mix) - set(FLAWS) or abs(sum(self.flaw_mix.values()) - 1) > 1e-6:
            raise ValueError(f"flaw_mix must give shares of {FLAWS} that sum to 1, got {self.flaw_mix}")
        if min(self.vae_steps, self.unet_steps, self.renders, self.train_products) < 1:
            raise ValueError("vae_steps, unet_steps, renders and train_products must be >= 1")
        if min(self.save_every, self.log_every) < 1:
            raise ValueError(
                f"save_every and log_every must be >= 1, got {self.save_every}, {self.log_every}"
            )


RESUME_SAFE_KEYS = (
    "out_dir",
    "save_every",
    "log_every",
    "unet_steps",
)  # a finished run extends its UNet steps


def world_tokenizer():
    """A CLIPTokenizer built in memory: every word of the world's prompts is one token (BPE merges spell it),
    any other lowercase text falls back to characters."""
    from transformers import CLIPTokenizer

    from hfpc_reward.sample.products import CATEGORIES
    from hfpc_reward.sample.world import SCENES

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "<unk>": 2}
    for char in _CHARS:
        vocab[char] = len(vocab)
        vocab[f"{char}</w>"] = len(vocab)
    merges = []
    words = sorted({"a", *CATEGORIES, *(word for phrase in SCENES.values() for word in phrase.split())})
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            if (merged, piece) not in merges:
                merges.append((merged, piece))
            merged += piece
            vocab.setdefault(merged, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=48)


def build_components(seed: int = 0):
    """Untrained UNet, VAE, text encoder, tokenizer and scheduler of the mini pipeline (seeded)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from hfpc_reward.testing.tiny_sd import sd_ddim_scheduler

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=WORLD_SIZE // 4,
        in_channels=9,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=WORLD_SIZE,
        layers_per_block=1,
    )
    tokenizer = world_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer.get_vocab()),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            projection_dim=32,
        )
    )
    return unet, vae, text_encoder, tokenizer, sd_ddim_scheduler()


def training_renders(config: GeneratorConfig, count: int, stream: int):
    """`count` seeded renders of train products: (images (N,3,H,W) in [-1,1], product masks (N,1,H,W), prompts)."""
    products = world_products("train", config.train_products)
    flaws, shares = list(config.flaw_mix), np.array(list(config.flaw_mix.values()))
    images, masks, prompts = [], [], []
    for index in range(count):
        rng = np.random.default_rng([config.seed, stream, index])
        product = products[int(rng.integers(len(products)))]
        flaw = str(rng.choice(flaws, p=shares / shares.sum()))
        item = render(product, str(rng.choice(SCENE_KINDS)), rng, flaw)
        images.append(item.image.transpose(2, 0, 1) * 2 - 1)
        masks.append(item.product_mask[None].astype(np.float32))
        prompts.append(item.prompt)
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks)), prompts


def _batch(step: int, size: int, total: int, seed: int, stage: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, stage, step]).generate_state(1)[0])
    )
    return torch.randint(0, total, (size,), generator=generator)


class GeneratorTrainer:
    """Two-stage training with accelerate; `fit()` runs (or resumes) both and saves the pipeline."""

    def __init__(self, config: GeneratorConfig):
        from accelerate import Accelerator

        self.config = config
        self.out = Path(config.out_dir)
        self.accelerator = Accelerator(cpu=True)
        self.unet, self.vae, self.text_encoder, self.tokenizer, self.scheduler = build_components(config.seed)
        self.metrics_path = self.out / "metrics.jsonl"

    # ---- checkpoints ----------------------------------------------------------------------------------
    def _save(self, stage: int, step: int, optimizer) -> None:
        """Weights, optimizer and progress (stage 1 VAE, 2 UNet, step done); the VAE's scaling factor lives in its config."""
        from safetensors.torch import save_model

        state = self.out / "state"
        state.mkdir(parents=True, exist_ok=True)
        for name in ("unet", "vae", "text_encoder"):
            save_model(self.accelerator.unwrap_model(getattr(self, name)), str(state / f"{name}.safetensors"))
        torch.save(optimizer.state_dict(), state / "optimizer.pt")
        torch.save(torch.get_rng_state(), state / "rng.pt")  # the VAE's posterior draws continue from here
        progress = {"stage": stage, "step": step, "scaling_factor": self.vae.config.scaling_factor}
        (state / "progress.json").write_text(
            json.dumps({**progress, "settings": config_to_dict(self.config)})
        )

    def _progress(self) -> dict:
        path = self.out / "state" / "progress.json"
        return json.loads(path.read_text()) if path.is_file() else {"stage": 1, "step": 0}

    def _restore_models(self, scaling_factor: float) -> None:
        from safetensors.torch import load_model

        for name in ("unet", "vae", "text_encoder"):
            load_model(getattr(self, name), str(self.out / "state" / f"{name}.safetensors"))
        self.vae.register_to_config(scaling_factor=scaling_factor)

    def _restore_optimizer(self, optimizer) -> None:
        optimizer.load_state_dict(torch.load(self.out / "state" / "optimizer.pt", weights_only=True))

    def _log(self, record: dict) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.metrics_path, [record])
        logger.info(
            "%s", " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        )

    # ---- stages ---------------------------------------------------------------------------------------
    def fit(self, resume: bool = True) -> Path:
        progress = self._progress() if resume else {"stage": 1, "step": 0}
        stage, step = progress["stage"], progress["step"]
        if not resume and self.metrics_path.exists():
            self.metrics_path.unlink()
        if stage > 1 or step > 0:
            check_resume(
                "train-generator",
                self.out,
                progress["settings"],
                config_to_dict(self.config),
                RESUME_SAFE_KEYS,
                advice="resume with them, or train into another out_dir (or pass --restart)",
            )
            self._restore_models(progress["scaling_factor"])
            torch.set_rng_state(torch.load(self.out / "state" / "rng.pt", weights_only=True))
            logger.info("resuming the mini generator at stage %d, step %d", stage, step)
        if stage == 1:
            self.train_vae(step)
        if stage == 1 or step < self.config.unet_steps:  # a finished run extends when unet_steps grows
            self.train_unet(step if stage == 2 else 0)
        return self.save_pipeline()

    def train_vae(self, start: int) -> None:
        cfg = self.config
        images, _, _ = training_renders(cfg, max(cfg.vae_batch_size * 64, 1024), stream=1)
        optimizer = torch.optim.AdamW(self.vae.parameters(), lr=cfg.vae_learning_rate)
        if start:
            self._restore_optimizer(optimizer)
        vae, optimizer = self.accelerator.prepare(self.vae, optimizer)
        vae.train()
        for step in range(start, cfg.vae_steps):
            x = images[_batch(step, cfg.vae_batch_size, len(images), cfg.seed, 1)]
            posterior = vae.encode(x).latent_dist
            reconstruction = vae.decode(posterior.sample()).sample
            mse = F.mse_loss(reconstruction, x)
            loss = mse + cfg.vae_kl_weight * posterior.kl().mean()
            self.accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if (step + 1) % cfg.log_every == 0 or step == start:
                self._log({"stage": "vae", "step": step + 1, "mse": mse.item()})
            if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.vae_steps:
                self._save(1, step + 1, optimizer)
        self.vae = self.accelerator.unwrap_model(vae).eval().requires_grad_(False)
        # SD convention: latents are scaled to unit variance before diffusion
        with torch.no_grad():
            z = self.vae.encode(images[:256]).latent_dist.mode()
        self.vae.register_to_config(scaling_factor=float(1.0 / z.std()))
        self._save(2, 0, torch.optim.AdamW([torch.zeros(1)]))

    def train_unet(self, start: int) -> None:
        cfg = self.config
        self.vae.requires_grad_(False).eval()
        images, masks, prompts = training_renders(cfg, cfg.renders, stream=2)
        inputs = inpainting_inputs(self.vae, images, masks)
        params = list(self.unet.parameters()) + list(self.text_encoder.parameters())
        optimizer = torch.optim.AdamW(params, lr=cfg.unet_learning_rate, weight_decay=1e-4)
        if start:
            self._restore_optimizer(optimizer)

        def lr_factor(s: int) -> float:  # cosine from 1.0 down to 0.1 over unet_steps
            return float(0.1 + 0.45 * (1 + np.cos(np.pi * min(s, cfg.unet_steps) / cfg.unet_steps)))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        if start:  # resume: jump to step `start` (stepping the schedule before an optimizer step warns)
            schedule.last_epoch = start
            for group, base in zip(optimizer.param_groups, schedule.base_lrs):
                group["lr"] = base * lr_factor(start)
        unet, text_encoder, optimizer = self.accelerator.prepare(self.unet, self.text_encoder, optimizer)
        unet.train()
        text_encoder.train()
        for step in range(start, cfg.unet_steps):
            index = _batch(step, cfg.unet_batch_size, len(inputs[0]), cfg.seed, 2)
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            loss = denoising_loss(
                unet,
                text_encoder,
                self.tokenizer,
                self.scheduler,
                tuple(part[index] for part in inputs),
                [prompts[i] for i in index.tolist()],
                generator,
                cfg.prompt_dropout,
            )
            self.accelerator.backward(loss)
            self.accelerator.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            if (step + 1) % cfg.log_every == 0 or step == start:
                self._log({"stage": "unet", "step": step + 1, "loss": loss.item()})
            if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.unet_steps:
                self._save(2, step + 1, optimizer)
        self.unet = self.accelerator.unwrap_model(unet).eval()
        self.text_encoder = self.accelerator.unwrap_model(text_encoder).eval()
        self._save(2, cfg.unet_steps, optimizer)

    def save_pipeline(self) -> Path:
        from diffusers import StableDiffusionInpaintPipeline

        pipe = StableDiffusionInpaintPipeline(
            unet=self.unet,
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        path = self.out / "pipeline"
        pipe.save_pretrained(path, safe_serialization=True)
        logger.info("saved the mini generator to %s", path)
        return path


@torch.no_grad()
def inpainting_inputs(vae, images: torch.Tensor, masks: torch.Tensor):
    """What the 9-channel UNet is trained on, from images (N,3,H,W) in [-1,1] and product masks (N,1,H,W):
    (latents of the images, repaint masks at the latent size (1 = background), latents of the images with
    the background blanked), in the UNet's channel order, as `denoising_loss` takes them."""
    scale = vae.config.scaling_factor
    latents, masked = [], []
    for start in range(0, len(images), 128):
        x, m = images[start : start + 128], masks[start : start + 128]
        latents.append(vae.encode(x).latent_dist.mode() * scale)
        masked.append(vae.encode(x * (m > 0.5)).latent_dist.mode() * scale)  # background blanked
    small = F.interpolate(1 - masks, size=latents[0].shape[-2:])  # 1 = repaint (background)
    return torch.cat(latents), small, torch.cat(masked)


def denoising_loss(unet, text_encoder, tokenizer, scheduler, inputs, prompts, generator, prompt_dropout):
    """The inpainting UNet's noise-prediction loss on one batch: `inputs` = (latents, repaint masks, masked
    latents) as `inpainting_inputs` gives them, `prompts` one per row (a `prompt_dropout` share replaced by
    "" for classifier-free guidance); noise, timesteps and the dropout are drawn from `generator`."""
    latents, repaint, masked = inputs
    noise = torch.randn(latents.shape, generator=generator)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
    drop = torch.rand(len(latents), generator=generator) < prompt_dropout
    texts = ["" if d else prompt for prompt, d in zip(prompts, drop.tolist())]
    tokens = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")
    hidden = text_encoder(tokens.input_ids)[0]
    noisy = scheduler.add_noise(latents, noise, t)
    prediction = unet(torch.cat([noisy, repaint, masked], dim=1), t, encoder_hidden_states=hidden).sample
    return F.mse_loss(prediction, noise)


def train_generator(config: GeneratorConfig, resume: bool = True) -> Path:
    """Train (or resume) the mini generator; returns the saved pipeline folder."""
    return GeneratorTrainer(config).fit(resume=resume)
