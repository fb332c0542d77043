"""`hfpc check`: product consistency of one pair, or of every row of a manifest.

    hfpc check ORIGINAL GENERATED [--mask MASK] [--backend classic] [--config F] [section.field=value ...] [--json]
    hfpc check --manifest M.jsonl --out RESULTS.jsonl [--overlays DIR] [--workers N]

One pair: prints the verdict, score, reasons and metrics (or JSON with --json); exit code 0 = consistent,
1 = inconsistent, 2 = the pair could not be checked.

Manifest mode: every input row is written back to RESULTS (JSON Lines, one record per row in manifest
order; see `hfpc_reward.data.results`) with `manifest_index` (0-based row of the manifest), `consistent`,
`consistency_score`, `metrics`, `failed_checks`, `primary_reason`, `reasons` and `error` (null, or why the
row could not be checked, with `consistent` null: a bad row never stops the run); an input field
`consistent` (ground truth) is kept as `consistent_truth`. The run contract applies (`hfpc_reward.runs`):
RESULTS is locked while a run writes it, its settings (consistency config, manifest path and content hash)
are stamped in RESULTS.run.json, `--resume` continues an interrupted run and refuses changed settings
(safe to change: CHECK_SAFE_KEYS, e.g. --workers, --overlays), and an existing RESULTS needs --resume or
--overwrite. Rows of one original (same origin, mask and category) are checked together so its original-side work is done once;
a row's `category` (e.g. "bottle") is the product phrase given to detection backends (its `prompt`
describes the background, so it is not used to find the product). `--overlays DIR` writes
DIR/<manifest_index>.png per checked pair. A summary table ends the run (failure kinds from
`failed_checks`), with precision / recall / F1 of detecting inconsistent products when the rows carry
ground truth (`consistent`, else HFPC `label`); exit 2 when no row could be checked.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from hfpc_reward.config import add_config_arguments, config_to_dict, load_config
from hfpc_reward.consistency.calibrate import (
    TRUTH_FIELD,
    detection_metrics,
    fit_thresholds,
    ground_truth,
    split_for_calibration,
)
from hfpc_reward.consistency.config import BACKEND_NAMES, ConsistencyConfig
from hfpc_reward.data.manifest import ManifestRow, is_url, read_manifest, remote_source_problem
from hfpc_reward.data.results import (
    ManifestResults,
    indexed_record,
    manifest_run,
    require_some_rows_judged,
)
from hfpc_reward.errors import CommandLineError, UsageError
from hfpc_reward.runs import add_run_arguments, refuse_output_over_inputs

logger = logging.getLogger(__name__)

# --resume may change these: where overlays go, how many processes, batch size and device of the models
CHECK_SAFE_KEYS = ("workers", "overlays", "consistency.grounded.batch_size", "consistency.grounded.device")
CALIBRATION_CACHE_SAFE_KEYS = ("consistency.thresholds", *CHECK_SAFE_KEYS[2:])  # calibration reads metrics


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "items",
        nargs="*",
        metavar="ORIGINAL GENERATED [section.field=value ...]",
        help="one pair to check, then config overrides such as thresholds.max_expansion=0.1",
    )
    parser.add_argument(
        "--mask", help="product mask of the original (white = product); default: alpha or studio extraction"
    )
    parser.add_argument("--backend", choices=BACKEND_NAMES, help="consistency backend (overrides the config)")
    parser.add_argument(
        "--config", type=Path, help="YAML config delta (e.g. configs/consistency/classic.yaml)"
    )
    parser.add_argument("--json", action="store_true", help="one pair: print the report as JSON")
    parser.add_argument("--manifest", type=Path, help="JSON Lines manifest of pairs (HFPC schemas or ours)")
    parser.add_argument("--out", type=Path, help="manifest mode: results JSON Lines")
    parser.add_argument("--overlays", type=Path, help="manifest mode: folder for one overlay PNG per pair")
    parser.add_argument("--workers", type=int, default=1, help="manifest mode: worker processes")
    add_run_arguments(parser)


def run_check(args: argparse.Namespace) -> int:
    paths = [item for item in args.items if "=" not in item or Path(item).exists()]
    overrides = [item for item in args.items if item not in paths]
    if args.backend:
        overrides.append(f"backend={args.backend}")
    config = load_config(ConsistencyConfig, args.config, overrides)
    if args.manifest is not None:
        if paths or args.out is None:
            raise CommandLineError("manifest mode takes --manifest M --out RESULTS and no image paths")
        return _check_manifest_run(args, config)
    if len(paths) != 2:
        raise CommandLineError(
            f"give ORIGINAL and GENERATED (or --manifest M --out RESULTS); got {len(paths)} paths"
        )
    return _check_pair(paths[0], paths[1], args.mask, config, args.json)


def _check_manifest_run(args: argparse.Namespace, config: ConsistencyConfig) -> int:
    if args.workers < 1:
        raise CommandLineError(f"--workers must be >= 1, got {args.workers}")
    rows = read_manifest(args.manifest)
    if args.overlays:  # overlays are named by row index: a folder holding inputs would have them overwritten
        local = [
            path
            for row in rows
            for path in (row.origin, row.generation, row.mask)
            if path and not is_url(path)
        ]
        refuse_output_over_inputs(args.overlays, [args.manifest, *local], "hfpc check --overlays")
    settings = {
        "consistency": config_to_dict(config),
        "workers": args.workers,
        "overlays": str(args.overlays) if args.overlays else None,
    }
    with manifest_run(
        args.manifest,
        args.out,
        settings,
        resume=args.resume,
        overwrite=args.overwrite,
        safe_keys=CHECK_SAFE_KEYS,
        name="hfpc check",
    ) as run:
        records = check_manifest(rows, config, args.out, args.overlays, args.workers, resuming=run.resuming)
        run.update_stamp(rows=len(records))
    print(summary_table(records))
    require_some_rows_judged(records, args.manifest)
    return 0


def _check_pair(
    original: str, generated: str, mask: str | None, config: ConsistencyConfig, as_json: bool
) -> int:
    from hfpc_reward.consistency.checker import ConsistencyInputError, ProductConsistencyChecker

    checker = ProductConsistencyChecker.from_config(config)
    report = checker.check([original], [generated], masks=[mask], errors="report")[0]
    if as_json:  # the error is in the record for scripts; exit 2 below
        print(json.dumps(report.to_record(), indent=2, ensure_ascii=False))
    elif report.error:
        raise ConsistencyInputError(f"cannot check {generated} against {original}: {report.error}")
    else:
        print(f"{'consistent' if report.consistent else 'INCONSISTENT'}  score {report.score:.3f}")
        for reason in report.reasons:
            print(f"  - {reason}")
        for name, value in report.metrics.items():
            print(f"  {name:16s} {value:.4f}")
    return 2 if report.error else (0 if report.consistent else 1)


def check_manifest(
    rows: list[ManifestRow],
    config: ConsistencyConfig,
    out: Path,
    overlays: Path | None = None,
    workers: int = 1,
    *,
    resuming: bool = True,
) -> list[dict[str, Any]]:
    """Check every row without a record in `out` (all rows when not `resuming`); returns one record per row,
    in manifest order. The caller owns the run contract (`run_check` wraps this in a RunOutput)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if overlays is not None:
        Path(overlays).mkdir(parents=True, exist_ok=True)
    results = ManifestResults(out, rows, resuming=resuming)
    groups: dict[tuple, list[tuple[int, ManifestRow]]] = {}
    for index, row in results.pending():
        groups.setdefault((row.origin, row.mask, row.category), []).append((index, row))
    pending = sum(len(group) for group in groups.values())
    if pending < len(rows):
        logger.info("resuming: %d rows already in %s, %d to check", len(rows) - pending, out, pending)
    jobs = [(group, str(overlays) if overlays else None) for group in groups.values()]
    with tqdm(total=pending, desc="check", unit="pair") as progress:
        for records in _run_jobs(jobs, config, workers):
            results.append(records)
            progress.update(len(records))
    return results.finish()


def _run_jobs(jobs: list, config: ConsistencyConfig, workers: int) -> Iterator[list[dict]]:
    if workers == 1 or len(jobs) <= 1:
        _init_worker(config)
        yield from map(_check_group, jobs)
        return
    context = multiprocessing.get_context("spawn")  # safe with torch-based backends
    with context.Pool(workers, initializer=_init_worker, initargs=(config,)) as pool:
        yield from pool.imap_unordered(_check_group, jobs)


_WORKER: dict[str, Any] = {}  # the checker of this process (built once per worker)


def _init_worker(config: ConsistencyConfig) -> None:
    from hfpc_reward.consistency.checker import ProductConsistencyChecker

    if _WORKER.get("config") != config:
        _WORKER.update(config=config, checker=ProductConsistencyChecker.from_config(config))


def _check_group(job: tuple[list[tuple[int, ManifestRow]], str | None]) -> list[dict]:
    """Results of all rows of one original; every failure becomes that row's `error`."""
    from hfpc_reward.consistency.verdict import error_report

    group, overlays = job
    checker = _WORKER["checker"]
    first = group[0][1]
    reports: dict[int, Any] = {}
    try:
        problem = remote_source_problem(ManifestRow(origin=first.origin, mask=first.mask))
        if problem:
            raise ValueError(problem)
        product = checker.prepare_originals([first.origin], [first.mask], [first.category], errors="report")[
            0
        ]
        checkable = []
        for index, row in group:
            problem = "row has no generation" if not row.generation else remote_source_problem(row)
            if problem:
                reports[index] = error_report(problem)
            else:
                checkable.append((index, row))
        outcomes = checker.inspect_prepared(
            [product] * len(checkable), [row.generation for _, row in checkable], errors="report"
        )
        for (index, _), (report, details) in zip(checkable, outcomes):
            reports[index] = report
            if overlays and details is not None:
                _write_overlay(Path(overlays), index, details, report, checker.config.thresholds.max_delta_e)
    except Exception as exc:  # noqa: BLE001 - never fatal: the rows of this original are reported as errors
        logger.warning("rows of %s failed: %s", first.origin, exc)
        for index, _ in group:
            reports.setdefault(
                index,
                error_report(f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)),
            )
    return [_result_record(index, row, reports[index]) for index, row in group]


def _result_record(index: int, row: ManifestRow, report) -> dict[str, Any]:
    record = indexed_record(index, row)
    if "consistent" in record:  # the input's ground truth; `consistent` becomes the checker's verdict
        record[TRUTH_FIELD] = record.pop("consistent")
    return {**record, **report.to_record()}


def _write_overlay(folder: Path, index: int, details, report, max_delta_e: float) -> None:
    from hfpc_reward.consistency.overlays import write_overlay

    try:
        write_overlay(folder / f"{index:06d}.png", details, report, max_delta_e)  # name from the index only
    except OSError as exc:
        logger.warning("could not write the overlay of row %d: %s", index, exc)


def summary_table(records: list[dict[str, Any]]) -> str:
    """A plain-text summary of result records (counts, top reasons, detection metrics with ground truth)."""
    errors = [r for r in records if r.get("error")]
    checked = [r for r in records if not r.get("error")]
    consistent = sum(bool(r.get("consistent")) for r in checked)
    lines = [
        (
            f"rows {len(records)}  checked {len(checked)}  consistent {consistent}  "
            f"inconsistent {len(checked) - consistent}  errors {len(errors)}"
        )
    ]
    primary = Counter(r.get("primary_reason") for r in checked if r.get("primary_reason"))
    failed = Counter(kind for r in checked for kind in r.get("failed_checks") or [])
    for kind, count in primary.most_common():
        lines.append(f"  {count:6d}  {kind} (primary reason; failing that check at all: {failed[kind]})")
    for message, count in Counter(str(r["error"]).split(": ", 1)[-1] for r in errors).most_common(5):
        lines.append(f"  {count:6d}  error: {message}")
    labelled = [(ground_truth(r), bool(r.get("consistent"))) for r in checked]
    labelled = [(truth, predicted) for truth, predicted in labelled if truth is not None]
    if labelled:
        m = detection_metrics([t for t, _ in labelled], [p for _, p in labelled])
        lines.append(
            f"detecting inconsistent products on {m['n']} labelled rows ({m['n_inconsistent']} inconsistent): "
            f"precision {m['precision']:.3f}  recall {m['recall']:.3f}  F1 {m['f1']:.3f}  "
            f"consistent rejected {m['false_rejection']:.1%}"
        )
    return "\n".join(lines)


def add_calibrate_consistency_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--manifest", type=Path, required=True, help="labelled manifest (consistent or label field)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="config YAML to write (loadable with --config)"
    )
    goal = parser.add_mutually_exclusive_group()
    goal.add_argument(
        "--best-f1", action="store_true", help="maximise F1 of detecting inconsistent pairs (default)"
    )
    goal.add_argument("--target-precision", type=float, help="maximise recall with at least this precision")
    goal.add_argument(
        "--max-rejection", type=float, help="maximise recall rejecting at most this share of consistent pairs"
    )
    parser.add_argument(
        "--holdout", type=float, default=0.3, help="share of originals held out to report on (0 = none)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split by original")
    add_config_arguments(parser, ConsistencyConfig, example="configs/consistency/classic.yaml")
    parser.add_argument(
        "--results", type=Path, help="where the checked rows are cached (default <out>.results.jsonl)"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes for checking")


class CalibrationError(UsageError):
    """The labelled rows cannot give the thresholds asked for; the message says what to change."""


def run_calibrate_consistency(args: argparse.Namespace) -> int:
    from hfpc_reward.consistency.verdict import verdict

    if not 0.0 <= args.holdout < 1.0:
        raise CommandLineError(f"--holdout must be in [0, 1), got {args.holdout}")
    if args.target_precision is not None and not 0.0 < args.target_precision <= 1.0:
        raise CommandLineError(f"--target-precision must be in (0, 1], got {args.target_precision}")
    if args.max_rejection is not None and not 0.0 <= args.max_rejection < 1.0:
        raise CommandLineError(f"--max-rejection must be in [0, 1), got {args.max_rejection}")
    config = load_config(ConsistencyConfig, args.config, args.overrides)
    results = args.results or args.out.with_name(args.out.name + ".results.jsonl")
    refuse_output_over_inputs(args.out, [args.manifest, args.config], "hfpc calibrate-consistency")
    rows = read_manifest(args.manifest)
    # the checked rows are cached in `results` for this manifest and check config (thresholds aside: only
    # the metrics are used); another manifest or config is refused, naming what changed
    cache_settings = {"consistency": config_to_dict(config)}
    with manifest_run(
        args.manifest,
        results,
        cache_settings,
        resume=True,
        safe_keys=CALIBRATION_CACHE_SAFE_KEYS,
        name="calibrate-consistency",
        advice="it caches the checked rows of another manifest or check config: delete it or give another --results",
    ) as cache:
        records = check_manifest(rows, config, results, workers=args.workers, resuming=cache.resuming)
    labelled = [
        (row, r) for row, r in zip(rows, records) if not r.get("error") and ground_truth(r) is not None
    ]
    if not labelled:
        logger.error("no checked row of %s has ground truth (a 'consistent' or 'label' field)", args.manifest)
        return 2
    fit_part, held_out = split_for_calibration(
        [row for row, _ in labelled], [r for _, r in labelled], args.holdout, args.seed
    )
    metrics, truth = [r["metrics"] for r in fit_part], [ground_truth(r) for r in fit_part]
    if all(truth) or not any(truth):
        raise CalibrationError(
            f"the rows to fit on are all {'consistent' if all(truth) else 'inconsistent'}: calibration needs "
            "both (label more rows, or lower --holdout so more originals are fitted on)"
        )
    thresholds = fit_thresholds(
        metrics, truth, config.thresholds, args.target_precision, max_rejection=args.max_rejection
    )
    reached = detection_metrics(truth, [verdict(m, thresholds).consistent for m in metrics])
    if args.target_precision is not None and reached["precision"] < args.target_precision:
        raise CalibrationError(
            f"no thresholds reach precision {args.target_precision:.3f} on the fitted rows (best found "
            f"{reached['precision']:.3f}): lower --target-precision"
        )
    if args.max_rejection is not None and reached["false_rejection"] > args.max_rejection:
        raise CalibrationError(
            f"no thresholds reject at most {args.max_rejection:.1%} of the consistent fitted rows (best found "
            f"{reached['false_rejection']:.1%}): raise --max-rejection"
        )
    fitted = replace(config, thresholds=thresholds)
    delta = (yaml.safe_load(args.config.read_text()) if args.config else None) or {}
    delta["thresholds"] = config_to_dict(fitted)["thresholds"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(yaml.safe_dump(delta, sort_keys=False))
    parts = [("fitted on (chose the thresholds: not a result)", fit_part), ("held out", held_out)]
    for title, part in parts:
        if not part:
            print(f"{title}: no rows (need labelled rows of at least two originals and --holdout > 0)")
            continue
        originals = len({r.get("origin") for r in part})
        print(f"{title}: {len(part)} rows of {originals} originals")
        part_truth = [ground_truth(r) for r in part]
        for name, limits in (("before", config.thresholds), ("after", thresholds)):
            m = detection_metrics(part_truth, [verdict(r["metrics"], limits).consistent for r in part])
            print(
                f"{name:6s} precision {m['precision']:.3f}  recall {m['recall']:.3f}  F1 {m['f1']:.3f}  "
                f"consistent rejected {m['false_rejection']:.1%}  (n={m['n']})"
            )
    print(f"wrote {args.out}")
    return 0


def add_finetune_segmenter_arguments(parser: argparse.ArgumentParser) -> None:
    from hfpc_reward.consistency.segmenter_config import SegmenterFinetuneConfig  # imports torch

    add_config_arguments(parser, SegmenterFinetuneConfig, example="configs/segmenter/efficientsam_ti.yaml")
    add_run_arguments(parser)  # --resume: from out_dir/state


def run_finetune_segmenter(args: argparse.Namespace) -> int:
    from hfpc_reward.consistency.segmenter_config import SegmenterFinetuneConfig
    from hfpc_reward.consistency.segmenter_train import finetune_segmenter

    config = load_config(SegmenterFinetuneConfig, args.config, args.overrides)
    # logs before / best metrics and writes summary.json
    finetune_segmenter(config, resume=args.resume, overwrite=args.overwrite)
    return 0
