"""`hfpc score`: judge every (origin, generation) row of a manifest with both HFPC judges.

    hfpc score --manifest M.jsonl --out RESULTS.jsonl [--config configs/scorer/X.yaml] [section.field=value ...]
    accelerate launch --num_processes 4 -m hfpc_reward.cli score --manifest M.jsonl --out RESULTS.jsonl ...

Every input row is written back with `manifest_index` and the HFPCResult fields (`passed`, `reward`,
`background_score`, `consistent`, `consistency_score`, `metrics`, `failed_checks`, `primary_reason`,
`reasons`, `error`), one record per row in manifest order (`hfpc_reward.data.results`). A bad row gets an
`error` (and `passed`/`consistent` null) and never stops the run; a run in which every row failed exits 2.
Rows are scored in batches ordered by original, so each original is encoded once.

The run contract applies (`hfpc_reward.runs`): RESULTS is locked while a run writes it, the settings
(scorer config, manifest path and content hash, batch size) are stamped in RESULTS.run.json, `--resume`
continues an interrupted run and refuses changed settings, naming them (safe to change: SCORE_SAFE_KEYS),
and an existing RESULTS needs --resume or --overwrite.

Data parallel: under `accelerate launch`, process r of W scores rows r, r+W, ... into
`RESULTS.part-r-of-W.jsonl`; the main process merges all parts into RESULTS in manifest order.
The summary gives the pass rate with a 95% bootstrap interval over originals, precision / recall / F1
of `passed` against human `label` when rows carry one, and the failed rows by kind.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hfpc_reward.config import add_config_arguments, config_to_dict, load_config
from hfpc_reward.data.manifest import ManifestRow, read_manifest, remote_source_problem
from hfpc_reward.data.results import (
    ManifestResults,
    failure_kinds,
    indexed_record,
    input_hashes,
    manifest_run,
    require_some_rows_judged,
)
from hfpc_reward.errors import CommandLineError
from hfpc_reward.runs import add_run_arguments
from hfpc_reward.scorer import HFPCResult, HFPCScorer, ScorerConfig

logger = logging.getLogger(__name__)

# --resume may change these: they decide speed and placement, not any result
SCORE_SAFE_KEYS = (
    "batch_size",
    "scorer.cache_size",
    "scorer.reward_model.batch_size",
    "scorer.reward_model.device",
    "scorer.consistency.grounded.batch_size",
    "scorer.consistency.grounded.device",
)


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, ScorerConfig, example="configs/scorer/hfpc.yaml")
    parser.add_argument(
        "--manifest", type=Path, required=True, help="JSON Lines manifest (HFPC schemas or ours)"
    )
    parser.add_argument("--out", type=Path, required=True, help="results JSON Lines")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per scorer call")
    add_run_arguments(parser)


def run_score(args: argparse.Namespace) -> int:
    config = load_config(ScorerConfig, args.config, args.overrides)
    if args.batch_size < 1:
        raise CommandLineError(f"--batch-size must be >= 1, got {args.batch_size}")
    rows = read_manifest(args.manifest)
    rank, world = _process_rank()
    settings = {"scorer": config_to_dict(config), "batch_size": args.batch_size}
    # a reward model folder rewritten in place (calibrate-reward, training into it) changes its config.json
    model = config.reward_model.path
    settings["input_sha256"] = input_hashes({"reward_model": model and Path(model) / "config.json"})
    with manifest_run(
        args.manifest,
        args.out,
        settings,
        resume=args.resume,
        overwrite=args.overwrite,
        safe_keys=SCORE_SAFE_KEYS,
        name="hfpc score",
        inputs=[config.reward_model.path],
        is_main_process=rank == 0,
    ) as run:
        scorer = HFPCScorer.from_config(config)
        records = score_manifest(rows, scorer, args.out, args.batch_size, rank, world, resuming=run.resuming)
        run.update_stamp(rows=len(records))
    if rank == 0:
        print(summary_table(records))
        if not config.reward_model.path:  # say so: a consistency-only pass rate is not HFPC's
            print(
                "background judge off (reward_model.path is empty): the pass rate is product consistency alone"
            )
        require_some_rows_judged(records, args.manifest)
    return 0


def score_manifest(
    rows: list[ManifestRow],
    scorer: HFPCScorer,
    out: Path,
    batch_size: int = 16,
    rank: int = 0,
    world: int = 1,
    *,
    resuming: bool = True,
) -> list[dict[str, Any]]:
    """Score this process's share of the rows without a record in `out` (all when not `resuming`); returns
    one record per row in manifest order on the main process ([] elsewhere). The caller owns the run
    contract (`run_score` wraps this in a RunOutput)."""
    results = ManifestResults(out, rows, resuming=resuming, rank=rank, world=world)
    pending = results.pending()
    pending.sort(key=lambda item: (item[1].origin, item[0]))  # rows of one original together: cache hits
    with tqdm(total=len(pending), desc="score", unit="pair", disable=rank != 0) as progress:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            results.append(
                [_record(i, row, result) for (i, row), result in zip(batch, _score_rows(scorer, batch))]
            )
            progress.update(len(batch))
    return results.finish()


def _score_rows(scorer: HFPCScorer, batch: list[tuple[int, ManifestRow]]) -> list[HFPCResult]:
    results: list[HFPCResult | None] = [None] * len(batch)
    scorable = []
    for k, (_, row) in enumerate(batch):
        problem = "row has no generation to score" if not row.generation else remote_source_problem(row)
        if problem:
            results[k] = HFPCResult(error=problem)
        else:
            scorable.append(k)
    rows = [batch[k][1] for k in scorable]
    scored = scorer.score(
        [r.origin for r in rows],
        [r.generation for r in rows],
        [r.mask for r in rows],
        [r.prompt for r in rows],
        [r.category for r in rows],  # the product's name, for detecting consistency backends
    )
    for k, result in zip(scorable, scored):
        results[k] = result
    return results


def _record(index: int, row: ManifestRow, result: HFPCResult) -> dict[str, Any]:
    return {**indexed_record(index, row), **result.to_record()}


def _process_rank() -> tuple[int, int]:
    """(rank, world size) under `accelerate launch` / torchrun, else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch
    from accelerate import PartialState

    state = PartialState(
        cpu=not torch.cuda.is_available()
    )  # without cpu=True, CPU processes each think they are alone
    return state.process_index, state.num_processes


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Pass rate (bootstrap CI over originals), error count, and agreement with human labels if present."""
    from hfpc_reward.stats import grouped_bootstrap_ci, precision_recall_f1

    judged = [r for r in records if r.get("error") is None]
    result: dict[str, Any] = {
        "rows": len(records),
        "judged": len(judged),
        "errors": len(records) - len(judged),
    }
    if not judged:
        return result
    passed = np.array([bool(r["passed"]) for r in judged], dtype=float)
    result["pass_rate"] = grouped_bootstrap_ci(
        lambda idx: float(passed[idx].mean()), [r["origin"] for r in judged]
    )
    result["mean_reward"] = float(np.mean([r["reward"] for r in judged]))
    labelled = [r for r in judged if r.get("label") is not None]
    if labelled:
        truth, predicted = [r["label"] == 1 for r in labelled], [bool(r["passed"]) for r in labelled]
        result["vs_labels"] = {"n": len(labelled), **precision_recall_f1(truth, predicted)}
    return result


def summary_table(records: list[dict[str, Any]]) -> str:
    stats = summary(records)
    lines = [f"rows {stats['rows']}   judged {stats['judged']}   errors {stats['errors']}"]
    if "pass_rate" in stats:
        rate = stats["pass_rate"]
        lines.append(
            f"pass rate {rate['estimate']:.1%}  (95% CI {rate['low']:.1%} - {rate['high']:.1%}, over originals)"
        )
        lines.append(f"mean reward {stats['mean_reward']:.3f}")
    if "vs_labels" in stats:
        agree = stats["vs_labels"]
        lines.append(
            f"vs human labels (n={agree['n']}): precision {agree['precision']:.3f}  recall {agree['recall']:.3f}  "
            f"F1 {agree['f1']:.3f}"
        )
    fails = failure_breakdown(records)
    if fails:
        lines.append("fail reasons: " + ", ".join(f"{kind} {count}" for kind, count in fails.most_common()))
    return "\n".join(lines)


def failure_breakdown(records: list[dict[str, Any]]) -> Counter:
    """Rows that did not pass, by their primary failure kind (`data.results.failure_kinds`)."""
    return Counter(kinds[0] for kinds in map(failure_kinds, records) if kinds)
