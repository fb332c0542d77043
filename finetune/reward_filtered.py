"""Reward-filtered fine-tuning (RAFT-style best-of-N distillation) of the LoRA.

Every epoch, the pipeline with the current LoRA paints `train.candidates` backgrounds per (product, prompt)
(the pipeline's own call, DDIM with `sample.eta`, as the eval harness and production best-of-N sample;
every sample seeded by (run.seed, epoch, item, candidate)); the reward judges them with the product pasted
back; the `train.keep` highest-reward ones per (product, prompt) are kept (abstentions never are, nor, with
`train.min_reward`, a generation scoring below it: an epoch that keeps none does not train); the LoRA
then takes `train.steps_per_epoch` optimizer steps of the denoising loss on those (noise prediction on the
inpainting input, `train.prompt_dropout` of the rows with the negative prompt so guidance keeps working).
The next epoch samples from the updated generator. Candidates are judged while the next batch samples and
only the kept ones stay in memory. One process only.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from hfpc_finetune.data import ProductPrompt
from hfpc_finetune.pipeline import WEIGHT_DTYPES, merged_lora
from hfpc_finetune.sampling import (
    Conditioning,
    encode_pixels,
    paste_back,
    predict_noise,
    prepare_conditioning,
)
from hfpc_finetune.trainer import Trainer, seed_for
from PIL import Image

from hfpc_reward.config import ConfigError

TRAIN_SEED_OFFSET = 10**9  # the training draws' seeds live apart from the sampling seeds


@dataclass
class Kept:
    """The best generations of one (product, prompt) so far: (reward, candidate index, image), best first."""

    limit: int
    floor: float = -math.inf  # a reward below this is not kept
    entries: list[tuple[float, int, Image.Image]] = field(default_factory=list)

    def offer(self, reward: float | None, candidate: int, image: Image.Image) -> None:
        if reward is None or not np.isfinite(reward) or reward < self.floor:
            return
        self.entries.append((float(reward), candidate, image))
        self.entries.sort(key=lambda entry: (-entry[0], entry[1]))  # ties: the lower candidate index
        del self.entries[self.limit :]


class RewardFilteredTrainer(Trainer):
    """Each epoch: best `train.keep` of `train.candidates` generations per item by reward -> denoising loss."""

    def _check_sizes(self) -> None:
        if self.accelerator.num_processes > 1:
            raise ConfigError(
                "train.algorithm=reward_filtered runs on one process: start it without accelerate launch / "
                "torchrun, or use train.algorithm=ddpo"
            )
        train = self.config.train
        if train.samples_per_step % train.train_batch_size:
            raise ConfigError(
                f"train.samples_per_step ({train.samples_per_step}) must be a multiple of "
                f"train.train_batch_size ({train.train_batch_size})"
            )

    def _units_per_epoch(self) -> int:  # progress units: sampling batches + optimizer steps
        jobs = len(self.products) * self.config.train.candidates
        return -(-jobs // self.config.sample.batch_size) + self.config.train.steps_per_epoch

    def _describe(self, record: dict) -> str:
        if not record["kept"]:
            return f"nothing reached train.min_reward={self.config.train.min_reward}: no training this epoch"
        return f"kept reward {record['kept_reward_mean']:.4f}, loss {record['loss']:.4f}"

    # ---- sampling and selection ------------------------------------------------------------------------
    @torch.no_grad()
    def _generate(self, items: list[ProductPrompt], seeds: list[int]) -> torch.Tensor:
        """Decoded backgrounds (B,3,H,W) in [0,1] on the CPU, each from its own seeded generator (call it
        with the LoRA merged: `merged_lora`)."""
        cfg = self.config
        side = cfg.data.resolution
        output = self.pipe(
            prompt=[item.prompt for item in items],
            negative_prompt=[cfg.sample.negative_prompt] * len(items),
            image=[item.image for item in items],
            mask_image=[item.inpaint_mask() for item in items],
            height=side,
            width=side,
            num_inference_steps=cfg.sample.num_steps,
            guidance_scale=cfg.sample.guidance_scale,
            eta=cfg.sample.eta,
            generator=[torch.Generator(device=self.device).manual_seed(seed) for seed in seeds],
            output_type="pt",
        )
        return output.images.float().cpu()

    def select(self, epoch: int, pool: ThreadPoolExecutor, on_batch=lambda: None):
        """Sample every (item, candidate), judge each batch in `pool` while the next one samples, and keep
        the best per item: (kept per item, every reward (nan = abstained), reward results, product drifts)."""
        cfg = self.config
        jobs = [(i, c) for i in range(len(self.products)) for c in range(cfg.train.candidates)]
        floor = -math.inf if cfg.train.min_reward is None else cfg.train.min_reward
        kept = [Kept(cfg.train.keep, floor) for _ in self.products]
        pending: list[tuple[list[tuple[int, int]], list[Image.Image], Future]] = []
        results, rewards, drifts = [], [], []

        def settle(only_done: bool) -> None:  # fold judged batches into `kept`, in submission order
            while pending and (not only_done or pending[0][2].done()):
                batch, images, future = pending.pop(0)
                result = future.result()
                results.append(result)
                for (i, c), image, value in zip(batch, images, result[0].values):
                    kept[i].offer(value, c, image)
                    rewards.append(np.nan if value is None else float(value))

        self.unet.eval()
        with merged_lora(self.unet):
            for start in range(0, len(jobs), cfg.sample.batch_size):
                batch = jobs[start : start + cfg.sample.batch_size]
                items = [self.products[i] for i, _ in batch]
                decoded = self._generate(items, [seed_for(cfg.run.seed, epoch, i, c) for i, c in batch])
                images, drift = paste_back(
                    decoded, [b.image for b in items], [b.product_mask for b in items], cfg.sample.paste_back
                )
                drifts.extend(drift)
                pending.append((batch, images, pool.submit(self._timed_reward, items, images)))
                settle(only_done=True)
                on_batch()
        settle(only_done=False)
        return kept, np.array(rewards), results, drifts

    # ---- training ----------------------------------------------------------------------------------------
    def _training_rows(self, kept: list[Kept]) -> tuple[torch.Tensor, Conditioning]:
        """The kept images' latents (N,4,h,w) and the conditioning they were generated under (N rows)."""
        cfg = self.config
        items = [(self.products[i], image) for i, k in enumerate(kept) for _, _, image in k.entries]
        dtype = WEIGHT_DTYPES[cfg.run.mixed_precision]
        side = cfg.data.resolution
        with self.accelerator.autocast():
            cond = prepare_conditioning(
                self.pipe,
                [item.prompt for item, _ in items],
                [item.image for item, _ in items],
                [item.inpaint_mask() for item, _ in items],
                cfg.sample.negative_prompt,
                side,
                self.device,
                dtype,
            )
            pixels = self.pipe.image_processor.preprocess(
                [image for _, image in items], height=side, width=side
            )
            latents = encode_pixels(self.pipe, pixels.to(self.device, dtype))
        return latents, cond

    def _train(
        self, epoch: int, latents: torch.Tensor, cond: Conditioning, on_step=lambda: None
    ) -> list[float]:
        """`train.steps_per_epoch` optimizer steps of the denoising loss on random rows; the step losses."""
        cfg, acc = self.config, self.accelerator
        train = cfg.train
        timesteps_total = self.scheduler.config.num_train_timesteps
        self.unet.train()
        losses = []
        for step in range(train.steps_per_epoch):
            generator = torch.Generator().manual_seed(seed_for(cfg.run.seed, epoch, TRAIN_SEED_OFFSET + step))
            rows = torch.randint(0, len(latents), (train.samples_per_step,), generator=generator)
            noise = torch.randn((len(rows), *latents.shape[1:]), generator=generator)
            t = torch.randint(0, timesteps_total, (len(rows),), generator=generator)
            unconditional = torch.rand(len(rows), generator=generator) < train.prompt_dropout
            total = 0.0
            for part in torch.split(torch.arange(len(rows)), train.train_batch_size):
                loss = self._denoising_loss(
                    latents, cond, rows[part], noise[part], t[part], unconditional[part]
                )
                acc.backward(loss * len(part) / len(rows))
                total += loss.item() * len(part) / len(rows)
            acc.clip_grad_norm_(self.lora_params, train.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            losses.append(total)
            on_step()
        self.unet.eval()
        return losses

    def _denoising_loss(self, latents, cond: Conditioning, rows, noise, t, unconditional) -> torch.Tensor:
        """Noise-prediction MSE of the LoRA UNet on `rows`, the `unconditional` ones with the negative prompt."""
        device = self.device
        part = cond.select(rows.to(device))
        negative = part.negative_embeds.expand_as(part.prompt_embeds)
        embeds = torch.where(unconditional.to(device)[:, None, None], negative, part.prompt_embeds)
        part = Conditioning(embeds, part.negative_embeds, part.mask, part.masked_image_latents)
        noise, t = noise.to(device, latents.dtype), t.to(device)
        noisy = self.scheduler.add_noise(latents[rows.to(device)], noise, t)
        with self.accelerator.autocast():
            prediction = predict_noise(self.unet, self.scheduler, noisy, t, part, guidance_scale=1.0)
        return F.mse_loss(prediction.float(), noise.float())

    def _run_epoch(self, epoch: int, pool: ThreadPoolExecutor, progress) -> dict:
        started = time.perf_counter()
        kept, rewards, results, drifts = self.select(epoch, pool, on_batch=lambda: progress.update(1))
        rewarded = time.perf_counter()
        reward_stats = self._reward_record(epoch, rewards, results)  # refuses an epoch of abstentions
        kept_rewards = [reward for k in kept for reward, _, _ in k.entries]
        losses = []
        if kept_rewards:
            latents, cond = self._training_rows(kept)
            losses = self._train(epoch, latents, cond, on_step=lambda: progress.update(1))
        else:
            progress.update(self.config.train.steps_per_epoch)
        finished = time.perf_counter()
        best = [
            (item.image, k.entries[0][2], k.entries[0][0], None)
            for item, k in zip(self.products, kept)
            if k.entries
        ]
        if best:
            self._save_grid(epoch, best)  # the best generation of the first products
        record = {"epoch": epoch, **reward_stats, "kept": len(kept_rewards)}
        if kept_rewards:  # an epoch that kept nothing has no kept reward or loss to report
            tenth = max(1, len(losses) // 10)
            record["kept_reward_mean"] = float(np.mean(kept_rewards))
            record["loss"] = float(np.mean(losses[-tenth:]))
            record["loss_first"] = float(np.mean(losses[:tenth]))
        return {
            **record,
            "product_drift": float(np.mean(drifts)),
            "time_sample_and_reward": rewarded - started,
            "time_train": finished - rewarded,
        }
