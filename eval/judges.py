"""`eval judges`: the reward-model table in the HFPC paper's style, on a labelled manifest.

Judges compared on the same rows (label 1 = accepted by human review):
- "HFPC (combined)": the scorer's reward (its policy fuses both judges);
- "consistency only": the product-consistency score;
- "background only": the reward model's background score (omitted without a reward model);
- "BLIP ITM (zero-shot)": P(generated image matches its prompt) from BlipForImageTextRetrieval.
Every judge is thresholded by the same calibration: originals are split (by original, seeded) into a
calibration part, where `pick_threshold` picks each judge's threshold with the same rule, and a test part,
where precision / recall / F1 at that threshold and PR-AUC are reported with bootstrap intervals over
originals. Rows that any judge could not score are left out for all, so every judge sees the same rows.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hfpc_eval.config import StatsConfig
from hfpc_eval.report import format_number
from hfpc_eval.results import write_json
from PIL import Image
from sklearn.metrics import average_precision_score
from tqdm import tqdm

from hfpc_reward.config import save_resolved_config
from hfpc_reward.data.manifest import ManifestRow, append_jsonl, group_by_original, read_manifest
from hfpc_reward.data.splits import split_by_original
from hfpc_reward.images import ImageLoadError, load_mask, load_rgb
from hfpc_reward.scorer import ScorerConfig
from hfpc_reward.stats import binary_metrics, grouped_bootstrap_ci, pick_threshold, precision_recall_f1

JUDGE_NAMES = ("HFPC (combined)", "consistency only", "background only", "BLIP ITM (zero-shot)")
REPORTED = ("precision", "recall", "f1", "pr_auc")

logger = logging.getLogger(__name__)


@dataclass
class JudgesConfig:
    manifest: str = (
        ""  # labelled JSON Lines: origin, generation, label (+ mask, prompt); HFPC schemas work too
    )
    out_dir: str = "outputs/judges"  # judges.json, judges.md and per-row scores.jsonl go here
    scorer: ScorerConfig = field(default_factory=ScorerConfig)  # the HFPC judges
    itm_model: str = ""  # BlipForImageTextRetrieval id/folder for the zero-shot baseline; "" = leave it out
    itm_device: str = "auto"  # torch device of the ITM model ("auto": CUDA when present, else CPU)
    default_prompt: str = "a product photo on a clean, tasteful background"  # prompt of rows without one
    calibration_fraction: float = 0.5  # share of originals used to pick thresholds; the rest is reported
    target_precision: float | None = (
        None  # threshold rule for every judge: None = best F1, else best recall at it
    )
    split_seed: int = 0  # seed of the calibration / test split of originals
    batch_size: int = 16  # pairs per scorer call
    stats: StatsConfig = field(default_factory=StatsConfig)  # bootstrap intervals over originals

    def __post_init__(self):
        if not self.manifest:
            raise ValueError("manifest is empty: pass --manifest path/to/labelled.jsonl")
        if not 0.0 < self.calibration_fraction < 1.0:
            raise ValueError(f"calibration_fraction must be in (0, 1), got {self.calibration_fraction}")


def score_rows(config: JudgesConfig, rows: list[ManifestRow], scorer: Any, itm_judge: Any) -> list[dict]:
    """Every judge's score for each labelled row (None where a judge could not score it)."""
    records = []
    for group in tqdm(list(group_by_original(rows).values()), desc="judges", unit="original"):
        for start in range(0, len(group), config.batch_size):
            records.extend(_score_batch(config, group[start : start + config.batch_size], scorer, itm_judge))
    return records


def _score_batch(config: JudgesConfig, batch: list[ManifestRow], scorer: Any, itm_judge: Any) -> list[dict]:
    """Scores of one original's rows; an unreadable original errors its rows, an unreadable generation only its own."""
    base = [{"origin": row.origin, "generation": row.generation, "label": row.label} for row in batch]
    try:
        original = load_rgb(batch[0].origin)
        mask = load_mask(batch[0].mask, size=original.size) if batch[0].mask else None
    except ImageLoadError as exc:
        logger.warning("skipping %d rows of %s: %s", len(batch), batch[0].origin, exc)
        return [{**record, "error": str(exc)} for record in base]
    generated: list[Image.Image | None] = []
    for record, row in zip(base, batch):
        try:
            generated.append(load_rgb(row.generation))
        except ImageLoadError as exc:
            record["error"] = str(exc)
            generated.append(None)
    readable = [i for i, image in enumerate(generated) if image is not None]
    if not readable:
        return base
    rows = [batch[i] for i in readable]
    images = [generated[i] for i in readable]
    prompts = [row.prompt or config.default_prompt for row in rows]
    results = scorer.score(
        [original] * len(rows),
        images,
        masks=None if mask is None else [mask] * len(rows),
        prompts=prompts,
        categories=[row.category for row in rows],
    )
    itm = itm_judge.score(images, prompts) if itm_judge is not None else [None] * len(rows)
    for i, result, match in zip(readable, results, itm):
        report = result.consistency
        base[i].update(
            {
                JUDGE_NAMES[0]: result.reward,
                JUDGE_NAMES[1]: None if report is None or result.error else float(report.score),
                JUDGE_NAMES[2]: result.background_score,
                JUDGE_NAMES[3]: None if match is None else float(match),
                "error": result.error,
            }
        )
    return base


def judges_table(config: JudgesConfig, records: list[dict]) -> dict[str, Any]:
    """Thresholds picked on the calibration originals, metrics with intervals on the test originals."""
    judges = [name for name in JUDGE_NAMES if any(record.get(name) is not None for record in records)]
    usable = [
        r for r in records if r.get("label") is not None and all(r.get(name) is not None for name in judges)
    ]
    rows = [ManifestRow(origin=r["origin"], label=r["label"], line=i) for i, r in enumerate(usable)]
    parts = split_by_original(
        rows,
        {"calibration": config.calibration_fraction, "test": 1.0 - config.calibration_fraction},
        seed=config.split_seed,
    )
    calibration = [usable[row.line] for row in parts["calibration"]]
    test = [usable[row.line] for row in parts["test"]]
    if not calibration or not test:
        raise ValueError(f"only {len(usable)} usable rows: too few originals for a calibration / test split")
    labels = np.array([r["label"] for r in test])
    groups = [r["origin"] for r in test]
    table = {}
    for name in judges:
        threshold = pick_threshold(
            [r[name] for r in calibration], [r["label"] for r in calibration], config.target_precision
        )
        scores = np.array([r[name] for r in test], dtype=float)
        cis = grouped_bootstrap_ci(
            lambda idx, scores=scores, threshold=threshold: _reported_metrics(
                scores[idx], labels[idx], threshold
            ),
            groups,
            config.stats.n_resamples,
            config.stats.confidence,
            config.stats.seed,
        )
        table[name] = {"threshold": threshold, **binary_metrics(scores, labels, threshold), "intervals": cis}
    return {
        "rows_scored": len(records),
        "rows_used": len(usable),
        "calibration_rows": len(calibration),
        "test_rows": len(test),
        "test_originals": len(set(groups)),
        "threshold_rule": "best F1"
        if config.target_precision is None
        else f"recall at precision {config.target_precision}",
        "judges": table,
    }


def _reported_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """The REPORTED metrics of one bootstrap resample, fast (binary_metrics' conventions: 0 when undefined,
    PR-AUC NaN with one class); `binary_metrics` gives the point estimates."""
    both = 0 < labels.sum() < labels.size
    pr_auc = float(average_precision_score(labels, scores)) if both else math.nan
    return {**precision_recall_f1(labels == 1, scores >= threshold), "pr_auc": pr_auc}


def markdown_table(table: dict) -> str:
    """The table as markdown: one row per judge, metrics with their intervals."""
    lines = [
        (
            f"Test part: {table['test_rows']} rows, {table['test_originals']} originals; thresholds: "
            f"{table['threshold_rule']} on {table['calibration_rows']} calibration rows."
        ),
        "",
        "| judge | threshold | precision | recall | F1 | PR-AUC |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, metrics in table["judges"].items():
        cells = [
            f"{format_number(metrics[key])} [{format_number(metrics['intervals'][key]['low'], 2)}, "
            f"{format_number(metrics['intervals'][key]['high'], 2)}]"
            for key in REPORTED
        ]
        lines.append(f"| {name} | {format_number(metrics['threshold'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_judges(config: JudgesConfig, scorer: Any = None, itm_judge: Any = None) -> dict[str, Any]:
    """Score the labelled manifest with every judge and write judges.json / judges.md / scores.jsonl."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved_config(config, out)
    rows = [row for row in read_manifest(config.manifest) if row.generation and row.label is not None]
    if not rows:
        raise ValueError(f"{config.manifest} has no labelled (origin, generation, label) rows")
    if scorer is None:
        from hfpc_reward.scorer import HFPCScorer

        scorer = HFPCScorer.from_config(config.scorer)
    if itm_judge is None and config.itm_model:
        from hfpc_eval.itm import BlipITMJudge

        itm_judge = BlipITMJudge(config.itm_model, config.itm_device)
    records = score_rows(config, rows, scorer, itm_judge)
    scores_path = out / "scores.jsonl"
    scores_path.unlink(missing_ok=True)
    append_jsonl(scores_path, records)
    table = judges_table(config, records)
    write_json(out / "judges.json", table)
    (out / "judges.md").write_text(markdown_table(table) + "\n")
    return table
