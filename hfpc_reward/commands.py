"""`hfpc score`: judge every (origin, generation) row of a manifest with both HFPC judges.

    hfpc score --manifest M.jsonl --out RESULTS.jsonl [--config configs/scorer/X.yaml] [section.field=value ...]
    accelerate launch --num_processes 4 -m hfpc_reward.cli score --manifest M.jsonl --out RESULTS.jsonl ...

Every input row is written back with `manifest_index` and the HFPCResult fields (`passed`, `reward`,
`background_score`, `consistent`, `consistency_score`, `metrics`, `reasons`, `error`). A bad row gets an
`error` and never stops the run. Rows already in RESULTS are skipped, so an interrupted run resumes.
Rows are scored in batches ordered by original, so each original is encoded once.

Data parallel: under `accelerate launch`, process r of W scores rows r, r+W, ... into
`RESULTS.part-r-of-W.jsonl`; the main process merges all parts into RESULTS in manifest order.
The summary gives the pass rate with a 95% bootstrap interval over originals, and precision / recall / F1
of `passed` against human `label` when rows carry one.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hfpc_reward.config import load_config, save_resolved_config
from hfpc_reward.consistency.commands import INDEX_FIELD
from hfpc_reward.data.manifest import (
    ManifestRow,
    append_jsonl,
    is_url,
    read_jsonl,
    read_manifest,
    write_jsonl,
)
from hfpc_reward.scorer import HFPCResult, HFPCScorer, ScorerConfig

logger = logging.getLogger(__name__)


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="section.field=value", help="config overrides")
    parser.add_argument(
        "--manifest", type=Path, required=True, help="JSON Lines manifest (HFPC schemas or ours)"
    )
    parser.add_argument("--out", type=Path, required=True, help="results JSON Lines (resumed when it exists)")
    parser.add_argument(
        "--config", type=Path, help="scorer YAML config delta (reward model, consistency, policy)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per scorer call")


def run_score(args: argparse.Namespace) -> int:
    config = load_config(ScorerConfig, args.config, args.overrides)
    if args.batch_size < 1:
        logger.error("--batch-size must be >= 1, got %d", args.batch_size)
        return 2
    rank, world = _process_rank()
    records = score_manifest(
        read_manifest(args.manifest), HFPCScorer.from_config(config), args.out, args.batch_size, rank, world
    )
    if rank == 0:
        save_resolved_config(config, args.out.parent)
        print(summary_table(records))
    return 0


def score_manifest(
    rows: list[ManifestRow],
    scorer: HFPCScorer,
    out: Path,
    batch_size: int = 16,
    rank: int = 0,
    world: int = 1,
) -> list[dict[str, Any]]:
    """Score this process's share of the rows not yet in `out`; returns all records of `out` (main process)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out if world == 1 else out.with_name(f"{out.stem}.part-{rank}-of-{world}.jsonl")
    done = {record.get(INDEX_FIELD) for record in read_jsonl(out) + (read_jsonl(part) if part != out else [])}
    pending = [(i, row) for i, row in enumerate(rows) if i % world == rank and i not in done]
    pending.sort(key=lambda item: (item[1].origin, item[0]))  # rows of one original together: cache hits
    with tqdm(total=len(pending), desc="score", unit="pair", disable=rank != 0) as progress:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            append_jsonl(
                part, [_record(i, row, result) for (i, row), result in zip(batch, _score_rows(scorer, batch))]
            )
            progress.update(len(batch))
    if world > 1:
        _merge_parts(out, world)
    return read_jsonl(out) if rank == 0 else []


def _score_rows(scorer: HFPCScorer, batch: list[tuple[int, ManifestRow]]) -> list[HFPCResult]:
    results: list[HFPCResult | None] = [None] * len(batch)
    scorable = []
    for k, (_, row) in enumerate(batch):
        problem = _row_problem(row)
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


def _row_problem(row: ManifestRow) -> str | None:
    if not row.generation:
        return "row has no generation to score"
    for source in (row.origin, row.generation, row.mask):
        if source and is_url(source):
            return f"{source} is a URL: download the manifest's images first (hfpc data fetch)"
    return None


def _record(index: int, row: ManifestRow, result: HFPCResult) -> dict[str, Any]:
    return {INDEX_FIELD: index, **row.to_record(), **result.to_record()}


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


def _merge_parts(out: Path, world: int) -> None:
    from accelerate import PartialState

    state = PartialState()
    state.wait_for_everyone()
    if state.is_main_process:
        parts = [out.with_name(f"{out.stem}.part-{r}-of-{world}.jsonl") for r in range(world)]
        merged = {record[INDEX_FIELD]: record for path in [out, *parts] for record in read_jsonl(path)}
        write_jsonl(out, [merged[i] for i in sorted(merged)])
        for path in parts:
            path.unlink(missing_ok=True)
    state.wait_for_everyone()


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Pass rate (bootstrap CI over originals), error count, and agreement with human labels if present."""
    from hfpc_reward.stats import binary_metrics, grouped_bootstrap_ci

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
        metrics = binary_metrics(
            [float(r["passed"]) for r in labelled], [int(r["label"]) for r in labelled], 0.5
        )
        result["vs_labels"] = {key: metrics[key] for key in ("n", "precision", "recall", "f1")}
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
    reasons: dict[str, int] = {}
    for record in records:
        for reason in record.get("reasons") or []:
            kind = reason.split(" (")[0].split(" ")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
    if reasons:
        lines.append(
            "fail reasons: "
            + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
        )
    return "\n".join(lines)
