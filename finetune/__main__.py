"""`hfpc finetune --config X.yaml [section.field=value ...] [--resume | --overwrite]` (several processes:
`accelerate launch -m hfpc_finetune ...` or `torchrun -m hfpc_finetune ...`)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from hfpc_finetune.config import SAFE_RESUME_KEYS, FinetuneConfig

from hfpc_reward.cli import run_reporting_user_errors
from hfpc_reward.config import add_config_arguments, load_config, print_config_if_asked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hfpc finetune", description=__doc__)
    add_config_arguments(parser, FinetuneConfig, example="configs/finetune/ddpo_sd_inpaint.yaml")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in run.out_dir (= run.resume=latest); settings may differ only in: "
        + ", ".join(SAFE_RESUME_KEYS),
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="start over in a run.out_dir that holds a previous run"
    )
    args = parser.parse_intermixed_args(argv)  # --resume may follow the overrides
    return run_reporting_user_errors(_run, args)


def _run(args: argparse.Namespace) -> int:
    if print_config_if_asked(args):
        return 0
    config = load_config(FinetuneConfig, args.config, args.overrides)
    from hfpc_finetune.trainer import train

    summary = train(config, resume=args.resume, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:  # one summary line per run, not per process
        print(
            json.dumps(
                {
                    "out_dir": summary.out_dir,
                    "epochs": summary.epochs,
                    "first_reward": summary.first_reward,
                    "last_reward": summary.last_reward,
                    "reward_gain": summary.reward_gain,
                    "lora_dir": summary.lora_dir,
                },
                allow_nan=False,
            )
        )
    return 0


if __name__ == "__main__":  # python -m hfpc_finetune: the same as `hfpc finetune`
    from hfpc_reward.cli import main as hfpc_main

    sys.exit(hfpc_main(["finetune", *sys.argv[1:]]))
