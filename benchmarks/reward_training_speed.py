"""Head-only reward training: cached fused features vs recomputing the frozen backbone every step.

Both sides train the same model (freeze_fraction 1.0) on the same generated colour-preference task with
the same seed, in one process; the only difference is `training.cache_features`. Prints wall time,
final training loss and best validation accuracy side by side, and the speed-up.

    python benchmarks/reward_training_speed.py                       # tiny BLIP, CPU
    python benchmarks/reward_training_speed.py --backbone base --device cuda --originals 400
`--backbone base` builds a random BLIP of the real base size (ViT-B/16 at 384 px, 12+12 layers) so the
timing reflects Salesforce/blip-itm-base-coco without downloading it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
import yaml

from hfpc_reward.config import load_config
from hfpc_reward.data.manifest import read_jsonl
from hfpc_reward.reward.train import TrainRewardConfig, train_reward_model
from hfpc_reward.testing.tiny_blip import (
    TINY_HEAD,
    tiny_blip_processor,
    write_colour_preference_task,
    write_tiny_blip,
)


def write_base_size_blip(out_dir: Path) -> Path:
    """A random BLIP ITM checkpoint with the base model's shapes (random weights; speed only)."""
    from transformers import BlipConfig, BlipForImageTextRetrieval

    processor = tiny_blip_processor(image_size=384)
    config = BlipConfig(vision_config={"initializer_range": 0.02}, text_config={"vocab_size": 30524})
    BlipForImageTextRetrieval(config).save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def run_side(config_path: Path, manifest: Path, out_dir: Path, cache: bool, args) -> dict:
    overrides = [
        f"data.train_manifest={manifest}",
        f"training.out_dir={out_dir}",
        "training.freeze_fraction=1.0",
        f"training.cache_features={str(cache).lower()}",
        f"training.epochs={args.epochs}",
        f"training.batch_size={args.batch_size}",
        "training.eval_every_steps=100000",
        "training.save_every_steps=100000",
        "training.learning_rate=1e-3",
        "data.valid_fraction=0.2",
    ]
    cfg = load_config(TrainRewardConfig, config_path, overrides)
    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    summary = train_reward_model(cfg)
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    losses = [r["train_loss"] for r in read_jsonl(out_dir / "metrics.jsonl") if "train_loss" in r]
    return {
        "seconds": seconds,
        "final_train_loss": losses[-1],
        "best_valid_accuracy": summary["best_valid_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=["tiny", "base"], default="tiny")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (accelerate picks the GPU when present)")
    parser.add_argument("--originals", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        backbone = (
            write_tiny_blip(root / "blip") if args.backbone == "tiny" else write_base_size_blip(root / "blip")
        )
        config_path = root / "config.yaml"
        head = TINY_HEAD if args.backbone == "tiny" else {}
        config_path.write_text(yaml.safe_dump({"model": str(backbone), "architecture": dict(head)}))
        image_size = 32 if args.backbone == "tiny" else 384
        manifest = write_colour_preference_task(root / "data", args.originals, image_size=image_size)
        results = {
            "recompute": run_side(config_path, manifest, root / "recompute", False, args),
            "cached": run_side(config_path, manifest, root / "cached", True, args),
        }
    print(f"backbone={args.backbone} device={args.device} originals={args.originals} epochs={args.epochs}")
    print(f"{'':12s}{'seconds':>10s}{'final loss':>12s}{'valid acc':>11s}")
    for name, r in results.items():
        print(f"{name:12s}{r['seconds']:10.2f}{r['final_train_loss']:12.5f}{r['best_valid_accuracy']:11.4f}")
    speedup = results["recompute"]["seconds"] / results["cached"]["seconds"]
    loss_gap = abs(results["recompute"]["final_train_loss"] - results["cached"]["final_train_loss"])
    print(f"speed-up of cached features: {speedup:.1f}x (final loss difference {loss_gap:.2e})")
    print(json.dumps({"speedup": speedup, "loss_difference": loss_gap, **results}))


if __name__ == "__main__":
    main()
