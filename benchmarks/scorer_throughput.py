"""Throughput of HFPCScorer (batched, original side cached) vs a per-pair loop with the same models.

    OMP_NUM_THREADS=1 python benchmarks/scorer_throughput.py [--originals 6] [--generations 8] [--size 512]
        [--vision-hidden 256] [--vision-layers 4] [--image-size 224] [--repeats 1] [--batch-size N]

The reward model is a random BLIP of the given size (default: a small ViT at 224 px, so the run takes
about a minute on one CPU core; pass --vision-hidden 768 --vision-layers 12 --image-size 384 for BLIP-base
shapes) with the consistency checker's classic backend. The per-pair loop is what a user writes without the
scorer: `reward_model.score([o], [g])` and `checker.check([o], [g], [m])` for each pair. Both sides must give
the same rewards; the script prints both and the ratio. `--repeats N` times both sides N times, alternating,
and keeps each side's best time (steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def build_reward_model(folder: Path, hidden: int, layers: int, image_size: int):
    from transformers import BlipConfig, BlipForImageTextRetrieval

    from hfpc_reward.reward.model import HFPCRewardModel, RewardModelConfig
    from hfpc_reward.testing.tiny_blip import tiny_blip_processor

    processor = tiny_blip_processor(image_size=image_size)
    config = BlipConfig(
        vision_config={
            "image_size": image_size,
            "patch_size": 16,
            "hidden_size": hidden,
            "intermediate_size": 4 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": max(1, hidden // 64),
            "initializer_range": 0.02,
        },
        text_config={
            "vocab_size": len(processor.tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 4 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": max(1, hidden // 64),
            "encoder_hidden_size": hidden,
        },
    )
    torch.manual_seed(0)
    BlipForImageTextRetrieval(config).save_pretrained(folder / "blip")
    processor.save_pretrained(folder / "blip")
    model = HFPCRewardModel.from_pretrained(
        folder / "blip", config=RewardModelConfig(head_dims=[1024, 128, 64, 16])
    )
    return HFPCRewardModel.from_pretrained(model.save_pretrained(folder / "reward")).eval()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--originals", type=int, default=6)
    parser.add_argument("--generations", type=int, default=8, help="generations per original")
    parser.add_argument("--size", type=int, default=512, help="sample image size (px)")
    parser.add_argument("--vision-hidden", type=int, default=256)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224, help="reward-model input size (px)")
    parser.add_argument("--repeats", type=int, default=1, help="time each side N times, keep the best")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="the scorer's reward_model.batch_size (default: the config's)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    from hfpc_reward.consistency.checker import ProductConsistencyChecker
    from hfpc_reward.consistency.config import ConsistencyConfig
    from hfpc_reward.data.manifest import read_manifest
    from hfpc_reward.sample.pairs import generate_pairs
    from hfpc_reward.scorer import HFPCScorer, RewardModelRef, ScorerConfig

    work = Path(tempfile.mkdtemp(prefix="hfpc-bench-"))
    model = build_reward_model(work, args.vision_hidden, args.vision_layers, args.image_size)
    rows = read_manifest(
        generate_pairs(
            work / "pairs",
            n_pairs=args.originals * args.generations,
            size=args.size,
            generations_per_original=args.generations,
        )
    )
    rows.sort(key=lambda r: r.origin)
    print(
        f"{len(rows)} pairs, {len({r.origin for r in rows})} originals, {args.size}px; reward model "
        f"ViT hidden {args.vision_hidden} x {args.vision_layers} layers at {args.image_size}px"
    )
    checker = ProductConsistencyChecker.from_config(ConsistencyConfig())
    config = (
        ScorerConfig()
        if args.batch_size is None
        else ScorerConfig(RewardModelRef(batch_size=args.batch_size))
    )
    print(f"scorer reward_model.batch_size {config.reward_model.batch_size}")

    def per_pair() -> list[float]:
        rewards = []
        for row in rows:
            background = float(model.score([row.origin], [row.generation], [row.prompt])[0])
            report = checker.check([row.origin], [row.generation], [row.mask])[0]
            rewards.append(background if report.consistent else config.policy.fail_value)
        return rewards

    def batched() -> list[float]:
        scorer = HFPCScorer(model, checker, config)
        results = scorer.score(
            [r.origin for r in rows],
            [r.generation for r in rows],
            [r.mask for r in rows],
            [r.prompt for r in rows],
        )
        return [r.reward for r in results]

    timings: dict[str, float] = {}
    outputs = {}
    batched()  # warm-up of the scorer path's lazy imports (each call builds a new scorer: nothing is cached)
    for _ in range(max(1, args.repeats)):
        for name, fn in (("per-pair loop", per_pair), ("HFPCScorer batched+cached", batched)):
            start = time.perf_counter()
            outputs[name] = fn()
            timings[name] = min(timings.get(name, math.inf), time.perf_counter() - start)
    a, b = outputs.values()
    max_diff = float(np.max(np.abs(np.array(a) - np.array(b))))
    for name, seconds in timings.items():
        print(
            f"{name:28s} {seconds:7.2f} s   {len(rows) / seconds:7.2f} pairs/s   (best of {max(1, args.repeats)})"
        )
    print(
        f"speed-up: {timings['per-pair loop'] / timings['HFPCScorer batched+cached']:.2f}x   "
        f"max |reward difference|: {max_diff:.2e} (identical outputs: {max_diff < 1e-4})"
    )


if __name__ == "__main__":
    main()
