"""`hfpc sample-data`: write sample product pairs (or originals only) with their manifest."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from hfpc_reward.sample.pairs import generate_pairs, generate_products

logger = logging.getLogger(__name__)


def add_sample_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output folder (manifest.jsonl, products.jsonl and images)")
    parser.add_argument(
        "--pairs", type=int, default=200, help="number of (original, generation) pairs; 0 = none"
    )
    parser.add_argument(
        "--products", type=int, default=16, help="number of studio products for fine-tuning; 0 = none"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--defect-fraction", type=float, default=0.5, help="share of defective generations")


def run_sample_data(args: argparse.Namespace) -> int:
    if args.pairs < 0 or args.products < 0 or args.pairs + args.products == 0:
        logger.error("nothing to write: give --pairs and/or --products a positive count")
        return 2
    if args.pairs:
        path = generate_pairs(args.out, args.pairs, args.seed, args.size, args.defect_fraction)
        logger.info("pairs manifest: %s", path)
    if args.products:
        path = generate_products(args.out, args.products, args.seed, args.size)
        logger.info("products manifest: %s", path)
    return 0


# ---- hfpc world: the mini product-photo world ---------------------------------------------------------


def add_world_arguments(parser: argparse.ArgumentParser) -> None:
    from hfpc_reward.config import add_config_arguments
    from hfpc_reward.sample.generator import GeneratorConfig

    sub = parser.add_subparsers(dest="world_command", required=True, metavar="SUBCOMMAND")
    oracle = sub.add_parser(
        "oracle", help="fit the ground-truth judge on clean renders; validate on held-out"
    )
    oracle.add_argument("out", type=Path, help="oracle JSON to write (validation lands next to it)")
    oracle.add_argument("--renders-per-kind", type=int, default=120, help="clean renders per scene kind")
    oracle.add_argument("--seed", type=int, default=0, help="seed of the fitting renders")
    products = sub.add_parser("products", help="studio originals + masks + prompts of a split")
    products.add_argument("out", type=Path, help="folder; writes <split>.jsonl, originals/, masks/")
    products.add_argument("--split", choices=("train", "heldout"), required=True, help="product split")
    products.add_argument("--count", type=int, required=True, help="number of products")
    products.add_argument("--scenes-per-product", type=int, default=6, help="scene prompts per product")
    train = sub.add_parser("train-generator", help="train the mini inpainting generator from scratch")
    add_config_arguments(train, GeneratorConfig, example="configs/world/generator.yaml")
    train.add_argument("--restart", action="store_true", help="ignore a saved state and start over")
    label = sub.add_parser("label", help="sample a generator, label samples by noisy simulated annotators")
    label.add_argument("--pipeline", required=True, help="inpainting pipeline folder")
    label.add_argument("--products", required=True, help="products manifest (hfpc world products)")
    label.add_argument("--oracle", required=True, help="oracle JSON (hfpc world oracle)")
    label.add_argument("--out", type=Path, required=True, help="folder; writes manifest.jsonl, generations/")
    label.add_argument("--samples", type=int, default=4, help="generations per product row")
    label.add_argument("--label-noise", type=float, default=0.1, help="share of labels flipped")
    label.add_argument("--steps", type=int, default=20, help="denoising steps")
    label.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    label.add_argument("--seed", type=int, default=0, help="seed of sampling and label noise")
    blip = sub.add_parser("blip", help="a BLIP backbone with the world's vocabulary (64 px), ITM-pretrained")
    blip.add_argument("out", type=Path, help="folder of the BLIP checkpoint")
    blip.add_argument(
        "--pretrain-steps", type=int, default=600, help="ITM steps on clean renders; 0 = random"
    )
    blip.add_argument("--seed", type=int, default=0, help="seed of the init and the pretraining renders")
    summary = sub.add_parser("summary", help="print the demo's numbers (eval results + reward-model checks)")
    summary.add_argument("demo", type=Path, help="the demo folder (outputs/demo)")


def run_world(args: argparse.Namespace) -> int:
    if args.world_command == "oracle":
        import json

        from hfpc_reward.sample.oracle import Oracle, validate

        oracle = Oracle.fit(args.renders_per_kind, args.seed)
        oracle.save(args.out)
        report = validate(oracle)
        args.out.with_name(args.out.stem + "_validation.json").write_text(json.dumps(report, indent=2))
        logger.info(
            "oracle -> %s; held-out scene accuracy %.3f, pass rate of clean / flawed renders: %s",
            args.out,
            report["scene_accuracy"],
            ", ".join(f"{flaw} {rate:.2f}" for flaw, rate in report["pass_rate"].items()),
        )
    elif args.world_command == "products":
        from hfpc_reward.sample.annotators import write_world_products

        write_world_products(args.out, args.split, args.count, args.scenes_per_product)
    elif args.world_command == "train-generator":
        from hfpc_reward.config import load_config
        from hfpc_reward.sample.generator import GeneratorConfig, train_generator

        path = train_generator(load_config(GeneratorConfig, args.config, args.overrides), not args.restart)
        logger.info("mini generator: %s", path)
    elif args.world_command == "label":
        from hfpc_reward.sample.annotators import label_generations
        from hfpc_reward.sample.oracle import Oracle

        label_generations(
            args.pipeline,
            args.products,
            Oracle.load(args.oracle),
            args.out,
            args.samples,
            args.label_noise,
            args.seed,
            args.steps,
            args.guidance,
        )
    elif args.world_command == "blip":
        from hfpc_reward.sample.annotators import pretrain_world_blip, write_world_blip

        path = write_world_blip(args.out, args.seed)
        if args.pretrain_steps:
            pretrain_world_blip(path, path, args.pretrain_steps, seed=args.seed)
        logger.info("world BLIP backbone: %s", path)
    elif args.world_command == "summary":
        from hfpc_reward.sample.annotators import demo_summary

        print(demo_summary(args.demo))  # the command's output
    return 0
