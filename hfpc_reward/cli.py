"""`hfpc` command line: one subcommand per job, each implemented next to the code it drives.

Every command module exposes `add_arguments(parser)` and `run(args) -> int`. Only the chosen command's
module is imported, so `hfpc --help` and light commands stay fast (no torch import unless needed).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# command name -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "sample-data": ("hfpc_reward.sample_data", "generate sample product pairs with known ground truth"),
    "tiny-models": ("hfpc_reward.testing.commands", "write tiny random offline checkpoints and configs"),
    "check": ("hfpc_reward.consistency.commands", "check product consistency of generated images"),
    "calibrate-consistency": ("hfpc_reward.consistency.calibrate", "fit consistency thresholds on a manifest"),
    "finetune-segmenter": ("hfpc_reward.consistency.segmenter_finetune", "fine-tune a segmenter on product masks"),
    "data": ("hfpc_reward.data_commands", "manifest statistics, fetching, splits and category clusters"),
    "train-reward": ("hfpc_reward.train_reward", "train the image-referenced reward model"),
    "eval-reward": ("hfpc_reward.reward_eval", "evaluate a reward model on a labelled manifest"),
    "calibrate-reward": ("hfpc_reward.reward_calibrate", "pick the reward model's pass threshold"),
    "score": ("hfpc_reward.score_commands", "score a manifest with both HFPC judges"),
}


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, str | None]:
    parser = argparse.ArgumentParser(prog="hfpc", description="HFPC reward toolkit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module_name).add_arguments(command_parser)
    return parser, chosen if chosen in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, chosen = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if chosen is None:
        parser.print_help()
        return 2
    return int(importlib.import_module(COMMANDS[chosen][0]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
