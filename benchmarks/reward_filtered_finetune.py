"""Experiment: distil best-of-N selection by the HFPC reward into the mini generator (reward-filtered
fine-tuning, as in RAFT), and judge it on held-out products with HFPC and the oracle.

    make demo                                                   # products, reward model, oracle
    python -m benchmarks.reward_filtered_finetune --candidates 16 --keep 1 --steps 400

For every train (product, prompt) of `make demo`, the mini generator (`--pipeline`, by default the committed
one; a previous run's `pipeline/` for another round) paints `--candidates`
backgrounds (DDIM 10 steps, guidance 4, the product pasted back) and keeps the `--keep` best, as production
best-of-N does (`hfpc_reward.best_of_n.select_best` with the demo's HFPC scorer, configs/world/scorer.yaml:
its trained reward model + the consistency gate; passing candidates by reward first); the UNet and text encoder are then trained on those with the generator's own loss (noise
prediction on the inpainting input, 10% empty prompts), from those weights. `hfpc eval run` then compares
the committed base and the result on the held-out products (same seeds), writing `<out>/eval/results.json`
and its report. No oracle verdict is used before that eval. The DDPO path (`hfpc finetune`) is what
`make demo` runs; this script measures whether the reward, used as a filter, can move the generator.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

DEMO = Path("outputs/demo")
PIPELINE = Path("assets/mini_world/pipeline")
SIDE = 64  # the mini world's resolution
PROMPT_DROPOUT = 0.1  # share of training samples with the empty prompt, as the generator was trained (CFG)

logger = logging.getLogger("reward_filtered_finetune")


def load_products(manifest: Path) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(original RGB uint8, product mask bool, prompt) per row of a world products manifest, at SIDE px."""
    rows = []
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        image = Image.open(manifest.parent / row["origin"]).convert("RGB").resize((SIDE, SIDE))
        mask = Image.open(manifest.parent / row["mask"]).convert("L").resize((SIDE, SIDE), Image.NEAREST)
        rows.append((np.asarray(image), np.asarray(mask) > 127, row["prompt"]))
    return rows


def best_candidates(
    pipe, scorer, products, candidates: int, keep: int, seed: int
) -> tuple[list, list[float]]:
    """The `keep` best of `candidates` pasted-back generations per product, ranked as production best-of-N
    ranks them (`hfpc_reward.best_of_n.select_best`: passing ones by reward first), and their rewards."""
    from tqdm.auto import tqdm

    from hfpc_reward.best_of_n import select_best

    chosen, rewards = [], []
    for index, (original, mask, prompt) in enumerate(tqdm(products, desc="candidates", unit="product")):
        found = select_best(
            pipe,
            Image.fromarray(original),
            Image.fromarray(mask.astype(np.uint8) * 255),
            prompt,
            n=candidates,
            scorer=scorer,
            seed=seed * 1_000_003 + index,
            height=SIDE,
            width=SIDE,
            num_inference_steps=10,
            guidance_scale=4.0,
        )
        for k in found.order[:keep]:
            chosen.append((np.asarray(found.candidates[k].convert("RGB")), mask, prompt))
            rewards.append(float(found.results[k].reward or 0.0))
    return chosen, rewards


def fine_tune(pipe, chosen, steps: int, learning_rate: float, batch: int, seed: int) -> list[float]:
    """Train the UNet and text encoder on `chosen` with the generator's noise-prediction loss; the losses."""
    from diffusers import DDPMScheduler

    from hfpc_reward.sample.generator import denoising_loss, inpainting_inputs

    unet, text_encoder = pipe.unet, pipe.text_encoder
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    images = np.stack([c[0] for c in chosen]).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1
    masks = np.stack([c[1] for c in chosen])[:, None].astype(np.float32)
    inputs = inpainting_inputs(pipe.vae, torch.from_numpy(images), torch.from_numpy(masks))
    prompts = [c[2] for c in chosen]
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=1e-4)
    unet.train()
    text_encoder.train()
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        index = torch.randint(0, len(prompts), (batch,), generator=generator)
        loss = denoising_loss(
            unet,
            text_encoder,
            pipe.tokenizer,
            noise_scheduler,
            tuple(part[index] for part in inputs),
            [prompts[i] for i in index.tolist()],
            generator,
            PROMPT_DROPOUT,
        )
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
    unet.eval()
    text_encoder.eval()
    return losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=DEMO, help="a finished `make demo` folder")
    parser.add_argument(
        "--pipeline",
        type=Path,
        default=PIPELINE,
        help="generator to start from (a previous round's pipeline/)",
    )
    parser.add_argument("--candidates", type=int, default=16, help="generations per train product")
    parser.add_argument("--keep", type=int, default=1, help="highest-reward generations kept per product")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps")
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEMO / "reward_filtered", help="pipeline/, eval/ go here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if (
        not (args.demo / "reward" / "model").is_dir()
        or not (args.demo / "products" / "train.jsonl").is_file()
    ):
        parser.error(f"{args.demo} is not a finished demo folder: run `make demo` first")
    if not 1 <= args.keep <= args.candidates:
        parser.error(f"--keep must be in [1, --candidates], got {args.keep}")
    from diffusers import StableDiffusionInpaintPipeline

    from hfpc_reward.config import load_config
    from hfpc_reward.scorer import HFPCScorer, ScorerConfig

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        PIPELINE, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    scorer = HFPCScorer.from_config(
        load_config(
            ScorerConfig, "configs/world/scorer.yaml", [f"reward_model.path={args.demo / 'reward' / 'model'}"]
        )
    )
    products = load_products(args.demo / "products" / "train.jsonl")
    chosen, rewards = best_candidates(pipe, scorer, products, args.candidates, args.keep, args.seed)
    logger.info(
        "kept %d of %d generations, mean reward %.3f",
        len(chosen),
        len(products) * args.candidates,
        np.mean(rewards),
    )
    losses = fine_tune(pipe, chosen, args.steps, args.learning_rate, args.batch, args.seed)
    logger.info("loss %.4f (first 20 steps) -> %.4f (last 20)", np.mean(losses[:20]), np.mean(losses[-20:]))
    args.out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(args.out / "pipeline")
    settings = {name: str(value) if isinstance(value, Path) else value for name, value in vars(args).items()}
    (args.out / "selection.json").write_text(json.dumps({**settings, "rewards": rewards}, indent=1))
    version = f"{{name: reward-filtered, kind: pipeline, path: {args.out / 'pipeline'}}}"
    config = Path("configs/world/eval.yaml").read_text()
    config = config.replace("{name: hfpc-lora, kind: lora, path: outputs/demo/finetune/lora}", version)
    config = config.replace("outputs/demo/eval", str(args.out / "eval")).replace(
        "outputs/demo/", f"{args.demo}/"
    )
    (args.out / "eval.yaml").write_text(config)
    logger.info(
        "selection and training took %.0f s; judging on held-out products", time.perf_counter() - start
    )
    from hfpc_eval.__main__ import main as eval_main

    return eval_main(["run", "--config", str(args.out / "eval.yaml"), "--overwrite"])


if __name__ == "__main__":
    raise SystemExit(main())
