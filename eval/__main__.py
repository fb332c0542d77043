"""`hfpc eval {run,rejudge,compare,judges,screenshot}`: the eval harness.

hfpc eval run --config configs/eval/tiny.yaml [--resume | --overwrite] [section.field=value ...]
torchrun --nproc_per_node 8 -m hfpc_eval run --config configs/eval/real.yaml   (same numbers as 1 process)
hfpc eval rejudge --from RUN_DIR --out NEW_DIR [--scorer configs/scorer/X.yaml] [scorer.field=value ...]
hfpc eval compare A/results.json B/results.json [--pair a:b] [--out comparison.json]
hfpc eval judges --config configs/eval/judges_tiny.yaml [--manifest labelled.jsonl] [overrides]
hfpc eval screenshot outputs/demo/eval/report.html docs/report.png   (needs Chromium)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    from hfpc_eval.config import EvalConfig

    from hfpc_reward.config import add_config_arguments
    from hfpc_reward.runs import add_run_arguments

    parser = argparse.ArgumentParser(prog="hfpc eval", description="pass rates of generator versions")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="sample, judge and report generator versions")
    add_config_arguments(run, EvalConfig, example="configs/eval/tiny.yaml")  # fields listed in --help
    add_run_arguments(run)
    rejudge = sub.add_parser("rejudge", help="judge a finished run's images again with another scorer")
    rejudge.add_argument(
        "--from", dest="source", required=True, help="out_dir of a finished `eval run` (left as it is)"
    )
    rejudge.add_argument("--out", required=True, help="new run folder for the re-judged samples and report")
    rejudge.add_argument("--scorer", help="scorer YAML (as `hfpc score --config`) replacing the run's scorer")
    rejudge.add_argument("overrides", nargs="*", help="dotted overrides, e.g. scorer.policy.threshold=0.5")
    add_run_arguments(rejudge)
    compare = sub.add_parser("compare", help="compare the versions of two runs, paired by product")
    compare.add_argument("a", help="results.json of run A (the reference)")
    compare.add_argument("b", help="results.json of run B")
    compare.add_argument("--pair", action="append", default=[], help="a_version:b_version (repeatable)")
    compare.add_argument(
        "--out", help="where to write the comparison JSON (default: next to B, comparison.json)"
    )
    judges = sub.add_parser("judges", help="precision/recall/F1/PR-AUC of each judge on a labelled manifest")
    judges.add_argument("--config", required=True, help="YAML (deltas over JudgesConfig)")
    judges.add_argument("--manifest", help="labelled manifest (overrides the config's)")
    judges.add_argument("overrides", nargs="*", help="dotted overrides")
    shot = sub.add_parser("screenshot", help="check a report.html in headless Chromium and save a PNG of it")
    shot.add_argument("report", help="report.html of a run")
    shot.add_argument("png", help="where to write the screenshot")
    shot.add_argument("--height", type=int, default=1800, help="pixels of the page to capture (width 1280)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from hfpc_reward.cli import run_reporting_user_errors

    return run_reporting_user_errors(_run, args)


def _run(args: argparse.Namespace) -> int:
    from hfpc_reward.config import load_config, print_config_if_asked

    if print_config_if_asked(args):  # `run --print-config`: the resolved config, nothing run
        return 0
    if args.command == "run":
        from hfpc_eval.config import EvalConfig
        from hfpc_eval.harness import run_eval
        from hfpc_eval.report import REPORT_NAME, terminal_table

        config = load_config(EvalConfig, args.config, args.overrides)
        results = run_eval(config, resume=args.resume, overwrite=args.overwrite)
        if results is not None:  # the main process
            print(terminal_table(results))
            print(f"report: {Path(config.out_dir).resolve() / REPORT_NAME}")
    elif args.command == "rejudge":
        from hfpc_eval.rejudge import rejudge_config, rejudge_run, rejudged_summary
        from hfpc_eval.report import REPORT_NAME, terminal_table

        config = rejudge_config(args.source, args.out, args.scorer, args.overrides)
        results = rejudge_run(args.source, config, resume=args.resume, overwrite=args.overwrite)
        if results is not None:
            print(terminal_table(results))
            print(rejudged_summary(results))
            print(f"report: {Path(config.out_dir).resolve() / REPORT_NAME}")
    elif args.command == "compare":
        from hfpc_eval.compare import compare_runs, comparison_table
        from hfpc_eval.results import write_json

        pairs = [tuple(item.split(":", 1)) for item in args.pair]
        if any(len(pair) != 2 for pair in pairs):
            raise SystemExit("--pair must look like a_version:b_version")
        comparison = compare_runs(args.a, args.b, pairs or None)
        out = Path(args.out) if args.out else Path(args.b).parent / "comparison.json"
        write_json(out, comparison)
        print(comparison_table(comparison))
        print(f"written: {out}")
    elif args.command == "screenshot":
        from hfpc_eval.browser import check_page, screenshot

        check, console = check_page(args.report)
        if check["errors"] or check["broken"] or console:
            raise SystemExit(
                f"{args.report} does not render cleanly: {check['errors'] + check['broken'] + console}"
            )
        print(f"written: {screenshot(args.report, args.png, height=args.height)}")
    else:
        from hfpc_eval.judges import JudgesConfig, markdown_table, run_judges

        overrides = list(args.overrides) + ([f"manifest={args.manifest}"] if args.manifest else [])
        config = load_config(JudgesConfig, args.config, overrides)
        print(markdown_table(run_judges(config)))
        print(f"written: {Path(config.out_dir).resolve() / 'judges.json'}")
    return 0


if __name__ == "__main__":  # python -m hfpc_eval: the same as `hfpc eval`
    from hfpc_reward.cli import main as hfpc_main

    sys.exit(hfpc_main(["eval", *sys.argv[1:]]))
