"""`hfpc` command line: one subcommand per job, each implemented next to the code it drives.

Every command module exposes `add_arguments(parser)` and `run(args) -> int`. Only the chosen command's
module is imported, so `hfpc --help` and light commands stay fast (no torch import unless needed).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable
from typing import Any

from hfpc_reward.config import ConfigError
from hfpc_reward.data import ManifestError

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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(
        prog="hfpc",
        description="HFPC reward toolkit. Commands:\n"
        + "\n".join(f"  {name:22s} {help_text}" for name, (_, help_text) in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    top.add_argument("command", choices=COMMANDS, metavar="COMMAND", help="see the list above")
    top.add_argument("args", nargs=argparse.REMAINDER, help="the command's arguments (hfpc COMMAND --help)")
    if not argv:
        top.print_help()
        return 2
    parsed = top.parse_args(argv)
    module_name, help_text = COMMANDS[parsed.command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"hfpc {parsed.command}", description=help_text)
    module.add_arguments(parser)
    try:  # options may follow positional overrides (hfpc check A B --mask M thresholds.x=1)
        args = parser.parse_intermixed_args(parsed.args)
    except TypeError:  # a command with its own subcommands (hfpc data ...) cannot intermix
        args = parser.parse_args(parsed.args)
    logging.basicConfig(
        level=logging.DEBUG if parsed.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    return run_reporting_user_errors(module.run, args)


def run_reporting_user_errors(run: Callable[..., int | None], *args: Any) -> int:
    """run(*args) as an exit code; a wrong config or manifest is logged as one clear line and exits 2."""
    try:
        return int(run(*args) or 0)
    except (ConfigError, ManifestError) as exc:  # the user's input is wrong: say what, without a traceback
        logging.getLogger("hfpc").error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
