r"""DDPO sampling overhead, the per-epoch time split, and what `train.timestep_fraction` costs in learning.

1. Sampling with log-probs (finetune.sampling: conditioning + DDIM-with-log-prob chain + decode) vs the
   plain `StableDiffusionInpaintPipeline.__call__` at the same steps, batch, guidance and eta
   (target: <= 1.2x).
2. One short fine-tune: seconds per epoch spent sampling, waiting for rewards, and training, GPU-seconds
   per sample, and peak GPU memory (with and without `--gradient-checkpointing`).
3. `--fractions 1.0 0.5`: the tiny kit's learning run (dark-background reward) once per
   `train.timestep_fraction`: reward gain and training seconds side by side.

    python -m benchmarks.ddpo_step                                  # tiny kit on the CPU
    python -m benchmarks.ddpo_step --epochs 0 --fractions 1.0 0.5   # timestep_fraction vs learning (CPU)
    python -m benchmarks.ddpo_step --size sd15 --device cuda --dtype float16 --resolution 512 --steps 50 \
        --batch 8 --guidance 5                                      # one GPU, SD-1.5 sizes, no checkpointing
`--size sd15` builds a randomly initialised pipeline with SD-1.5-inpainting layer sizes (no download).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import tempfile
from pathlib import Path

import torch
from hfpc_finetune.config import FinetuneConfig
from hfpc_finetune.data import load_products
from hfpc_finetune.pipeline import WEIGHT_DTYPES
from hfpc_finetune.run_folder import METRICS_FILE
from hfpc_finetune.sampling import decode, prepare_conditioning, sample_with_logprob

from benchmarks.timing import timed
from hfpc_reward.config import config_from_dict
from hfpc_reward.data.manifest import read_jsonl
from hfpc_reward.testing.tiny_sd import build_tiny_sd_inpaint, write_tiny_products


def build_sd15_sized(seed: int = 0):
    """SD-1.5 inpainting layer sizes, random weights: the real compute profile without a download."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    pipe = build_tiny_sd_inpaint(seed)  # tokenizer, scheduler and pipeline class from the tiny kit
    torch.manual_seed(seed)
    pipe.unet = UNet2DConditionModel(in_channels=9, out_channels=4, cross_attention_dim=768, sample_size=64)
    pipe.vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    pipe.text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=pipe.tokenizer.vocab_size,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    pipe.register_modules(unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder)
    pipe.vae_scale_factor = 8
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["tiny", "sd15"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the time-split fine-tune (0 = skip)")
    parser.add_argument(
        "--train-steps", type=int, default=None, help="DDIM steps of the fine-tune (default --steps)"
    )
    parser.add_argument("--gradient-checkpointing", action="store_true", help="in the fine-tune's UNet")
    parser.add_argument("--timestep-fraction", type=float, default=1.0, help="of the fine-tune")
    parser.add_argument(
        "--fractions",
        type=float,
        nargs="*",
        default=[],
        help="timestep fractions for the learning comparison",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    dtype = getattr(torch, args.dtype)
    work = Path(tempfile.mkdtemp(prefix="ddpo_bench_"))
    pipe = (build_sd15_sized() if args.size == "sd15" else build_tiny_sd_inpaint()).to(dtype=dtype)
    if args.epochs:
        pipe.save_pretrained(work / "pipeline")  # what the fine-tune below loads
    pipe.to(args.device)
    pipe.set_progress_bar_config(disable=True)
    manifest = write_tiny_products(work / "products", n_products=4, size=args.resolution)
    data = config_from_dict(
        FinetuneConfig, {"data": {"manifest": str(manifest), "resolution": args.resolution}}
    ).data
    items = (load_products(data) * args.batch)[: args.batch]
    prompts, images, masks = (
        [i.prompt for i in items],
        [i.image for i in items],
        [i.inpaint_mask() for i in items],
    )

    def plain():
        pipe(
            prompt=prompts,
            image=images,
            mask_image=masks,
            height=args.resolution,
            width=args.resolution,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            eta=1.0,
            output_type="pt",
            generator=torch.Generator(args.device).manual_seed(0),
        )

    def ours():
        with torch.no_grad():
            cond = prepare_conditioning(pipe, prompts, images, masks, "", args.resolution, args.device, dtype)
            traj = sample_with_logprob(
                pipe, pipe.scheduler, cond, list(range(args.batch)), args.steps, args.guidance, 1.0
            )
            decode(pipe, traj.latents[:, -1])

    plain_s, ours_s = timed(plain, args.device, args.repeats), timed(ours, args.device, args.repeats)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"[{args.size} on {device_name}, {args.dtype}, {args.resolution}px, {args.steps} steps, batch {args.batch}, "
        f"CFG {args.guidance}]"
    )
    print(f"plain pipeline call      {plain_s:8.3f} s")
    print(f"sampling with log-probs  {ours_s:8.3f} s   overhead {ours_s / plain_s:.2f}x (target <= 1.2x)")
    if args.epochs:
        time_split(args, work, manifest, dtype)
    if args.fractions:
        compare_timestep_fractions(args.fractions, work)


def time_split(args, work: Path, manifest: Path, dtype) -> None:
    from hfpc_finetune.trainer import train

    pretrained = work / "pipeline"
    precision = next(name for name, weights in WEIGHT_DTYPES.items() if weights == dtype)
    config = config_from_dict(
        FinetuneConfig,
        {
            "model": {"pretrained": str(pretrained), "gradient_checkpointing": args.gradient_checkpointing},
            "data": {"manifest": str(manifest), "resolution": args.resolution},
            "sample": {
                "num_steps": args.train_steps or args.steps,
                "guidance_scale": args.guidance,
                "batch_size": args.batch,
                "samples_per_epoch": 2 * args.batch,
            },
            "train": {
                "epochs": args.epochs,
                "group_size": args.batch,
                "train_batch_size": args.batch,
                "samples_per_step": 2 * args.batch,
                "timestep_fraction": args.timestep_fraction,
            },
            "reward": {"name": "background_brightness"},
            "run": {
                "out_dir": str(work / "run"),
                "mixed_precision": precision,
                "cpu": args.device == "cpu",
                "grid_every": 0,
                "report_to": "none",
            },
        },
    )
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    train(config)
    samples = config.sample.samples_per_epoch
    print(
        f"fine-tune, {samples} samples x {config.sample.num_steps} steps per epoch, gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}, timestep_fraction {args.timestep_fraction} (seconds):"
    )
    print(
        f"{'epoch':>5} {'sample':>8} {'reward wait':>12} {'reward compute':>15} {'train':>8} {'s/sample':>9}"
    )
    for record in read_jsonl(work / "run" / METRICS_FILE):
        total = record["time_sample"] + record["time_reward_wait"] + record["time_train"]
        print(
            f"{record['epoch']:>5} {record['time_sample']:8.2f} {record['time_reward_wait']:12.3f} "
            f"{record['time_reward_compute']:15.3f} {record['time_train']:8.2f} {total / samples:9.3f}"
        )
    if args.device.startswith("cuda"):
        print(json.dumps({"max_memory_allocated_gib": torch.cuda.max_memory_allocated() / 2**30}))


def compare_timestep_fractions(fractions: list[float], work: Path) -> None:
    """The tiny kit's learning run (its own config: 8 epochs x 32 samples x 4 steps) per timestep fraction."""
    from hfpc_finetune.trainer import train

    from hfpc_reward.testing.tiny_sd import write_tiny_sd_inpaint

    kit = write_tiny_sd_inpaint(work / "kit")["finetune_tiny"]
    print("tiny kit learning (dark-background reward, 8 epochs x 32 samples x 4 DDIM steps):")
    print(
        f"{'fraction':>8} {'trained steps':>13} {'first':>7} {'last 2':>7} {'gain':>7} {'train s/epoch':>14}"
    )
    for fraction in fractions:
        values = copy.deepcopy(kit)
        values["train"]["timestep_fraction"] = fraction
        values["run"].update(out_dir=str(work / f"fraction_{fraction}"), report_to="none", grid_every=0)
        train(config_from_dict(FinetuneConfig, values))
        records = read_jsonl(work / f"fraction_{fraction}" / METRICS_FILE)
        first, last = records[0]["reward_mean"], sum(r["reward_mean"] for r in records[-2:]) / 2
        steps = max(1, int(values["sample"]["num_steps"] * fraction))
        train_s = sum(r["time_train"] for r in records) / len(records)
        print(f"{fraction:>8} {steps:>13} {first:7.4f} {last:7.4f} {last - first:+7.4f} {train_s:14.2f}")


if __name__ == "__main__":
    main()
