"""`hfpc tiny-models DIR`: write the offline tiny-model kit."""

from __future__ import annotations

import argparse
import logging

from hfpc_reward.testing import TINY_BUILDERS, write_tiny_models

logger = logging.getLogger(__name__)


def add_tiny_models_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", help="folder to write checkpoints and YAML configs into")
    parser.add_argument("--only", nargs="*", choices=sorted(TINY_BUILDERS), help="write only these kits")


def run_tiny_models(args: argparse.Namespace) -> int:
    written = write_tiny_models(args.out_dir, only=args.only)
    for name, path in written.items():
        logger.info("wrote config %s -> %s", name, path)
    return 0
