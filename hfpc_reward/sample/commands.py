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
