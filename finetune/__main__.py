"""`python -m finetune --config X.yaml [section.field=value ...] [--resume]` (also under `accelerate launch -m`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from finetune.config import FinetuneConfig
from hfpc_reward.cli import run_reporting_user_errors
from hfpc_reward.config import load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune", description=__doc__)
    parser.add_argument("--config", help="YAML delta over finetune.config.FinetuneConfig defaults")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=10 run.out_dir=out")
    parser.add_argument("--resume", action="store_true", help="continue from run.out_dir/state if present")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_reporting_user_errors(_run, args)


def _run(args: argparse.Namespace) -> int:
    config = load_config(FinetuneConfig, args.config, args.overrides)
    from finetune.trainer import train

    summary = train(config, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:  # one summary line per run, not per process
        print(json.dumps({"out_dir": summary.out_dir, "epochs": summary.epochs, "first_reward": summary.first_reward,
                          "last_reward": summary.last_reward, "reward_gain": summary.reward_gain,
                          "lora_dir": summary.lora_dir}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
