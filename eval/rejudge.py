"""`hfpc eval rejudge --from RUN --out NEW`: judge a finished run's images again with another scorer, no regeneration.

    hfpc eval rejudge --from outputs/eval/run --out outputs/eval/run-rm2 scorer.reward_model.path=outputs/reward/v2
    hfpc eval rejudge --from outputs/eval/run --out outputs/eval/run-strict --scorer configs/scorer/hfpc.yaml

NEW is a complete eval run folder: the source run's config with the new judge (`--scorer` replaces the
scorer section with a scorer YAML over its defaults, as `hfpc score --config`; dotted overrides of the eval
config follow), its images and thumbnails (hard links where the file system allows, else copies), and its
rows with only the judged fields made again (`JUDGED_FIELDS`, the scorer-made held-out fields, and the rows'
settings hash). Every version is judged by the same new judge, so versions stay comparable, and the samples
are batched as `eval run` batches them, so NEW equals what `eval run` with that judge would have written.
results.json says which judge (`meta.judge`), which run the images came from (`meta.judge.images_from`), that
run's judge and how many rows changed in each field (`meta.judge.rejudged`). Runs on several processes and resumes like `eval run`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hfpc_eval.config import EvalConfig
from hfpc_eval.distributed import EvalProcesses
from hfpc_eval.harness import IMAGE_FOLDERS, RunSteps, Share, fill_run_folder, run_settings
from hfpc_eval.judging import (
    JUDGED_FIELDS,
    SCORER_HELD_OUT_FIELDS,
    build_scorer,
    close_judges,
    judge_samples,
    judge_stamp,
)
from hfpc_eval.results import RESULTS_NAME
from hfpc_eval.samples import SAMPLES_NAME, SHARD_GLOB, latest_samples, row_key

from hfpc_reward.config import RESOLVED_CONFIG_NAME, config_to_dict, load_config
from hfpc_reward.data.manifest import append_jsonl
from hfpc_reward.errors import UsageError
from hfpc_reward.images import ImageLoadError, load_rgb
from hfpc_reward.runs import FOLDER_STAMP_NAME, changed_settings, is_safe_key

logger = logging.getLogger(__name__)

# what a re-judge may change: the judges and what does not change a verdict (devices, workers, numbers' display)
JUDGE_KEYS = (
    "scorer",
    "consistency_workers",
    "stats",
    "report",
    "generation.device",
    "generation.batch_size",
    "held_out.itm_device",
)


class RejudgeError(UsageError):
    """The source run or the requested change cannot be re-judged; the message says why and what to do."""


def rejudge_config(
    source: str | Path, out: str | Path, scorer_file: str | None = None, overrides: Sequence[str] = ()
) -> EvalConfig:
    """The source run's config with another judge: `scorer_file` (a ScorerConfig YAML) replaces its scorer,
    then `overrides` (dotted keys of the eval config) apply. Changing anything else is refused."""
    source = Path(source)
    resolved = source / RESOLVED_CONFIG_NAME
    if not resolved.is_file() or not (source / SAMPLES_NAME).is_file():
        raise RejudgeError(f"{source} is not an eval run folder (no {RESOLVED_CONFIG_NAME} / {SAMPLES_NAME})")
    if list(source.glob(SHARD_GLOB)):
        raise RejudgeError(
            f"{source} holds an unfinished run (sample shards): finish it with `eval run --resume`"
        )
    items = []
    if scorer_file:
        from hfpc_reward.scorer import ScorerConfig

        items.append(f"scorer={json.dumps(config_to_dict(load_config(ScorerConfig, scorer_file)))}")
    original = load_config(EvalConfig, resolved)
    config = load_config(EvalConfig, resolved, [*items, *overrides, f"out_dir={out}"])
    changed = changed_settings(run_settings(original), run_settings(config))
    refused = [key for key in changed if not is_safe_key(key, JUDGE_KEYS)]
    if refused:
        raise RejudgeError(
            f"rejudge changes only the judges (scorer.*), not {', '.join(refused)}: run `eval run` for that"
        )
    if Path(out).resolve() == source.resolve():
        raise RejudgeError(
            f"--out {out} is the source run: choose a new folder (the source run stays as it is)"
        )
    return config


def rejudge_run(
    source: str | Path,
    config: EvalConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    scorer: Any = None,
    processes: EvalProcesses | None = None,
) -> dict[str, Any] | None:
    """Judge the images of run `source` with `config.scorer` into `config.out_dir` (see the module docstring);
    returns the results (None on processes other than the main one)."""
    source = Path(source)
    source_rows = {row_key(row): row for row in latest_samples(source / SAMPLES_NAME)}
    stamp = source / FOLDER_STAMP_NAME
    if stamp.is_file() and not json.loads(stamp.read_text()).get("finished"):
        logger.warning("%s is an unfinished run: only its samples made so far are judged", source)
    steps = RunSteps(
        make=lambda share: _judge_units(share, source_rows, scorer),
        judge=lambda samples: {
            **judge_stamp(config.scorer),
            "images_from": str(source),
            "rejudged": _changes(source, source_rows, samples),
        },
        prepare=lambda products: _link_folders(source, Path(config.out_dir)),
        can_make=lambda unit: all((unit.version, unit.product_id, k) in source_rows for k in unit.ks),
        inputs=[source],
        generates=False,
        stamp={"rejudged_from": str(source)},
    )
    return fill_run_folder(config, steps, resume=resume, overwrite=overwrite, processes=processes)


def _judge_units(share: Share, source_rows: dict, scorer: Any) -> None:
    """Judge each unit's images (the final ones; the pre-paste ones too when the source kept them). The ITM
    check is held out, not a judge: its values stay those of the source rows."""
    if not share.units:
        return
    config = share.config
    owned = scorer is None
    if owned:
        scorer = build_scorer(config.scorer, config.consistency_workers)
    out = Path(config.out_dir)
    try:
        for unit in share.units:
            rows = [
                _unjudged(source_rows[(unit.version, unit.product_id, k)], share.settings[unit.version])
                for k in unit.ks
            ]
            judged = [item for item in (_images(out, row) for row in rows if "image" in row) if item]
            if judged:
                raw_check = config.held_out.raw_consistency and all(raw is not None for _, raw, _ in judged)
                judge_samples(scorer, None, share.products[unit.product_id], judged, raw_check=raw_check)
            append_jsonl(share.shard, rows)
    finally:
        if owned:
            close_judges(scorer)


def _images(out: Path, row: dict) -> tuple | None:
    """(row, pre-paste image or None, final image), or None when an image of the source run cannot be read:
    the row then says why, drops the image and is marked for a retry (the others are judged all the same)."""
    try:
        raw = load_rgb(out / row["raw_image"]) if "raw_image" in row else None
        return row, raw, load_rgb(out / row["image"])
    except ImageLoadError as exc:
        for key in ("image", "raw_image"):
            row.pop(key, None)
        row.update(passed=False, reward=None, reasons=[], error=f"image of the source run: {exc}", retry=True)
        return None


def _unjudged(row: dict, settings: str) -> dict:
    """A copy of a source row without its judged fields (a row without an image keeps its error)."""
    if "image" not in row:
        return {**row, "settings": settings}
    fresh = {key: value for key, value in row.items() if key not in JUDGED_FIELDS}
    held_out = {
        key: value for key, value in row.get("held_out", {}).items() if key not in SCORER_HELD_OUT_FIELDS
    }
    return {**fresh, "held_out": held_out, "settings": settings}


def _changes(source: Path, source_rows: dict, samples: list[dict]) -> dict[str, Any]:
    """The source run's judge, and how many rows each field changed in."""
    source_results = source / RESULTS_NAME
    source_judge = (
        json.loads(source_results.read_text())["meta"].get("judge") if source_results.is_file() else None
    )
    changed: Counter[str] = Counter()
    for row in samples:
        before = source_rows[row_key(row)]
        for key in sorted(before.keys() | row.keys()):
            if key == "held_out":
                inner = before.get(key, {}), row.get(key, {})
                for name in sorted(inner[0].keys() | inner[1].keys()):
                    if inner[0].get(name) != inner[1].get(name):
                        changed[f"held_out.{name}"] += 1
            elif before.get(key) != row.get(key):
                changed[key] += 1
    return {"source_judge": source_judge, "rows": len(samples), "changed_rows": dict(changed)}


def rejudged_summary(results: dict[str, Any]) -> str:
    """One line for people: which judge, from which run, what changed."""
    judge = results["meta"]["judge"]
    rejudged = judge["rejudged"]
    changed = ", ".join(f"{key} {count}" for key, count in rejudged["changed_rows"].items()) or "nothing"
    return (
        f"re-judged {rejudged['rows']} samples of {judge['images_from']} with reward model "
        f"{judge['reward_model'] or '(none)'}, threshold {judge['threshold']}, scorer {judge['scorer_hash']}; "
        f"rows changed per field: {changed}"
    )


def _link_folders(source: Path, out: Path) -> None:
    """The source run's images and thumbnails, into the new run folder."""
    for folder in IMAGE_FOLDERS:
        _link_tree(source / folder, out / folder)


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link (else copy) every file under `source` into `target`, skipping files already there."""
    for path in source.rglob("*"):
        if not path.is_file() or path.name.endswith(".tmp"):
            continue
        destination = target / path.relative_to(source)
        if destination.exists():
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, destination)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(path, destination)
