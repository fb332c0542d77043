"""Label Studio exports -> HFPC-schema labels (`hfpc feedback pull`): append-only, idempotent, per task.

A feedback folder holds:
- `labels.jsonl`: every annotation ever imported, one line each (pair, label, reasons, note, annotator,
  lead time, time). Append-only: an annotation is keyed by its Label Studio id and its last update, so
  the same export imported twice adds nothing and an edited annotation adds its new version.
- `manifest.jsonl`: one HFPC row per pair (origin, generation, label = majority of the annotators' latest
  votes, plus prompt, category, mask, reasons, votes), rewritten from labels.jsonl; ready for
  `hfpc train-reward`. A tie has no majority: the pair waits in `contested.jsonl`.
- `contested.jsonl`: pairs whose annotators disagree (votes and reasons), to re-review.
- `agreement.json`: see `agreement.py`.
- `problems.jsonl`: what the last pull could not import, one line per task and problem (an annotator who
  skipped, an unknown choice, a missing image, a task deleted in Label Studio, ...). Nothing else is lost:
  the other tasks and annotations of the export are imported.
A half-finished project imports what is finished: tasks without annotations just wait.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hfpc_reward.data.manifest import append_jsonl, read_jsonl, write_jsonl
from hfpc_reward.errors import UsageError
from hfpc_reward.feedback.labelstudio import NOTE_FIELD, REASONS, REASONS_FIELD, VERDICT_FIELD, VERDICTS

logger = logging.getLogger(__name__)

LABELS_NAME, MANIFEST_NAME, CONTESTED_NAME, PROBLEMS_NAME = (
    "labels.jsonl",
    "manifest.jsonl",
    "contested.jsonl",
    "problems.jsonl",
)
MANIFEST_FIELDS = ("origin", "generation", "mask", "prompt", "category", "product_id")  # from the pick


def read_export(path: str | os.PathLike) -> list[dict]:
    """A Label Studio JSON export (a list of tasks) from a file."""
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read the Label Studio export {path}: {exc}") from None
    if not isinstance(tasks, list) or not all(
        isinstance(task, dict) and isinstance(task.get("data") or {}, dict) for task in tasks
    ):
        raise UsageError(f"{path} is not a Label Studio JSON export (expected a list of task objects)")
    return tasks


def annotations_of(tasks: Iterable[dict], pushed: Iterable[str] = ()) -> tuple[list[dict], list[dict]]:
    """(label rows, problems) of an export; `pushed`: pair ids sent to the project (missing = deleted)."""
    rows: list[dict] = []
    problems: list[dict] = []
    seen: set[str] = set()
    for task in tasks:
        task_rows, task_problems = _task_annotations(task)
        rows.extend(task_rows)
        problems.extend(task_problems)
        seen.add(((task.get("data") or {}).get("pair_id")) or "")
    for pair in pushed:
        if pair not in seen:
            problems.append(
                {"pair_id": pair, "problem": "task deleted in Label Studio (pushed, not exported)"}
            )
    return rows, problems


def _task_annotations(task: dict) -> tuple[list[dict], list[dict]]:
    data = task.get("data") or {}
    pick = data.get("hfpc_pick")
    where = {"task_id": task.get("id"), "pair_id": data.get("pair_id")}
    if not isinstance(pick, dict) or not data.get("pair_id"):
        return [], [{**where, "problem": "not an hfpc task (its data has no hfpc_pick / pair_id)"}]
    missing = [pick.get(name) for name in ("origin", "generation") if not Path(str(pick.get(name))).is_file()]
    if missing:
        return [], [{**where, "problem": f"image missing: {', '.join(map(str, missing))}"}]
    rows, problems = [], []
    for annotation in task.get("annotations") or []:
        annotator = _annotator(annotation.get("completed_by"))
        here = {**where, "annotation_id": annotation.get("id"), "annotator": annotator}
        if annotation.get("was_cancelled"):
            problems.append({**here, "problem": "annotator skipped the task"})
            continue
        choices, note = _choices_of(annotation.get("result") or [])
        verdicts = choices.get(VERDICT_FIELD, [])
        if len(verdicts) != 1 or verdicts[0] not in VERDICTS:
            shown = verdicts or "none"
            problems.append({**here, "problem": f"pass/fail choice {shown} is not one of {sorted(VERDICTS)}"})
            continue
        reasons = choices.get(REASONS_FIELD, [])
        unknown = [reason for reason in reasons if reason not in REASONS]
        if unknown:  # the label stands; only the unknown reasons are left out
            problems.append({**here, "problem": f"unknown reasons {unknown} left out (label kept)"})
        rows.append(
            {
                **{name: pick[name] for name in MANIFEST_FIELDS if pick.get(name) is not None},
                "pair_id": data["pair_id"],
                "label": VERDICTS[verdicts[0]],
                "reasons": [reason for reason in reasons if reason in REASONS],
                "note": note,
                "annotator": annotator,
                "lead_time_s": annotation.get("lead_time"),
                "annotated_at": annotation.get("updated_at") or annotation.get("created_at"),
                "annotation_id": annotation.get("id"),
                "task_id": task.get("id"),
            }
        )
    return rows, problems


def _annotator(completed_by: Any) -> str:
    """Label Studio writes the annotator as a user id, or as a user object with an email."""
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or completed_by.get("id"))
    return str(completed_by)


def _choices_of(result: list[dict]) -> tuple[dict[str, list[str]], str | None]:
    choices: dict[str, list[str]] = {}
    note = None
    for region in result:
        value = region.get("value") or {}
        if region.get("from_name") == NOTE_FIELD and value.get("text"):
            note = " ".join(value["text"])
        elif "choices" in value:
            choices.setdefault(region.get("from_name"), []).extend(value["choices"])
    return choices, note


def _key(row: dict) -> tuple:
    return (row.get("annotation_id"), row.get("annotated_at"))


def import_annotations(folder: str | os.PathLike, rows: list[dict], problems: list[dict]) -> dict[str, int]:
    """Append the new annotations to folder/labels.jsonl and rewrite the derived files; returns counts."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels_path = folder / LABELS_NAME
    known = {_key(row) for row in read_jsonl(labels_path)}
    new = [row for row in rows if _key(row) not in known]
    if new:
        append_jsonl(labels_path, new)
    write_jsonl(folder / PROBLEMS_NAME, problems)
    for problem in problems:
        logger.warning("task %s: %s", problem.get("task_id") or problem.get("pair_id"), problem["problem"])
    majority, contested = consolidate(read_jsonl(labels_path))
    write_jsonl(folder / MANIFEST_NAME, majority)
    write_jsonl(folder / CONTESTED_NAME, contested)
    return {
        "annotations_in_export": len(rows),
        "new_annotations": len(new),
        "labelled_pairs": len(majority),
        "contested_pairs": len(contested),
        "problems": len(problems),
    }


def latest_votes(labels: Iterable[dict]) -> dict[str, dict[str, dict]]:
    """pair id -> annotator -> that annotator's latest label row (edits replace earlier versions).

    An edit is a newer row of the same annotation id: it replaces the older one whatever name it came in
    under (an export names the annotator by user id, the server pull by email)."""
    latest: dict[Any, dict] = {}
    for row in sorted(labels, key=lambda r: str(r.get("annotated_at") or "")):
        identity = row.get("annotation_id")
        latest[("annotation", identity) if identity is not None else ("row", id(row))] = row
    votes: dict[str, dict[str, dict]] = {}
    for row in latest.values():
        votes.setdefault(row["pair_id"], {})[row["annotator"]] = row
    return votes


def consolidate(labels: Iterable[dict]) -> tuple[list[dict], list[dict]]:
    """(majority manifest rows, contested pairs): a pair's label is its annotators' majority vote."""
    majority, contested = [], []
    for pair, by_annotator in latest_votes(labels).items():
        rows = list(by_annotator.values())
        counts = Counter(row["label"] for row in rows)
        fail_reasons = Counter(reason for row in rows if row["label"] == 0 for reason in row["reasons"])
        summary = {
            **{name: rows[0][name] for name in MANIFEST_FIELDS if rows[0].get(name) is not None},
            "pair_id": pair,
            "votes": {"pass": counts[1], "fail": counts[0]},
            "annotators": sorted(by_annotator),
        }
        if len(counts) > 1:
            notes = [row["note"] for row in rows if row.get("note")]
            contested.append({**summary, "reasons": dict(fail_reasons), "notes": notes})
        if counts[1] != counts[0]:
            label = int(counts[1] > counts[0])
            shared = [reason for reason, n in fail_reasons.items() if 2 * n >= counts[0]]
            majority.append({**summary, "label": label, "reasons": shared if label == 0 else []})
    return majority, contested
