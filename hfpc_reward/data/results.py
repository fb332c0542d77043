"""The results of a manifest run (`hfpc check`, `hfpc score`): one JSON Lines record per manifest row.

Every record carries `manifest_index` (the row's 0-based position in the manifest) and the input row's
fields. Records are appended as work finishes (an interrupted run loses nothing done), then `finish()`
rewrites the file with one record per row, in manifest order. A row that could not be judged has an
`error` and `consistent`/`passed` null (never false: it was not judged inconsistent). A run in which
every row failed raises `AllRowsFailedError` (exit 2) after its summary, naming the most common error.
Under data parallelism process r of W writes `<stem>.part-r-of-W.jsonl`; the main process merges.
Ownership, settings stamp and the resume policy are the run contract's (`hfpc_reward.runs.RunOutput`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hfpc_reward.data.manifest import ManifestRow, append_jsonl, read_jsonl, write_jsonl
from hfpc_reward.errors import UsageError
from hfpc_reward.runs import RESUME_ADVICE, RunOutput

INDEX_FIELD = "manifest_index"
VERDICT_FIELDS = ("consistent", "passed")  # null in error rows
ERROR_KIND = "error"  # failure kind of a row that could not be judged (= consistency.verdict.ERROR)
BACKGROUND_KIND = "background"  # failure kind of a background score below the pass threshold
HASH_CHUNK_BYTES = 1 << 20


class AllRowsFailedError(UsageError):
    """No row of a manifest run could be judged."""


def file_sha256(path: str | Path) -> str:
    """The content hash of an input file (a manifest), so a resume notices it was edited in place."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def input_hashes(files: dict[str, str | Path | None]) -> dict[str, str]:
    """{name: sha256} of the named input files that exist: what a run stamp records besides their paths,
    so that a resume notices an input (a manifest, a config file it names) edited in place."""
    return {name: file_sha256(path) for name, path in files.items() if path and Path(path).is_file()}


def manifest_run(
    manifest: str | Path,
    out: str | Path,
    settings: dict[str, Any],
    *,
    resume: bool,
    overwrite: bool = False,
    safe_keys: Sequence[str],
    name: str,
    inputs: Sequence[str | Path | None] = (),
    is_main_process: bool = True,
    advice: str = RESUME_ADVICE,
) -> RunOutput:
    """The run contract of a manifest command (`--manifest M --out RESULTS [--resume] [--overwrite]`): the
    stamped settings gain the manifest's path and content hash (a resume notices an edit in place), and the
    manifest is an input that RESULTS may not overwrite."""
    manifest = Path(manifest)
    stamped = {"manifest": {"path": str(manifest.resolve()), "sha256": file_sha256(manifest)}, **settings}
    return RunOutput(
        out,
        stamped,
        resume=resume,
        overwrite=overwrite,
        safe_keys=safe_keys,
        inputs=[manifest, *inputs],
        is_main_process=is_main_process,
        name=name,
        folder=False,  # RESULTS is a file, with or without an extension
        advice=advice,
    )


class ManifestResults:
    """The results file `out` of `rows`; `resuming=False` starts it empty (the run contract decided).

    Under W processes each appends to its part file (`<stem>.part-R-of-W.jsonl`); a resume counts the records
    of every part file there, whatever number of processes wrote it, and `finish` merges them all."""

    def __init__(
        self, out: Path, rows: Sequence[ManifestRow], *, resuming: bool, rank: int = 0, world: int = 1
    ):
        self.out = Path(out)
        self.rows = rows
        self.rank, self.world = rank, world
        self.part = (
            self.out if world == 1 else self.out.with_name(f"{self.out.stem}.part-{rank}-of-{world}.jsonl")
        )
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if not resuming:  # every process removes its own part; the main one the rest (of other runs)
            self.part.unlink(missing_ok=True)
            if rank == 0:
                self.out.unlink(missing_ok=True)
                for path in self._parts():
                    if not path.name.endswith(f"-of-{world}.jsonl"):
                        path.unlink(missing_ok=True)

    def _parts(self) -> list[Path]:
        return sorted(self.out.parent.glob(f"{self.out.stem}.part-*-of-*.jsonl"))

    def pending(self) -> list[tuple[int, ManifestRow]]:
        """(manifest index, row) of this process's share of the rows that have no record yet."""
        done = {record.get(INDEX_FIELD) for path in [self.out, *self._parts()] for record in read_jsonl(path)}
        return [
            (index, row)
            for index, row in enumerate(self.rows)
            if index % self.world == self.rank and index not in done
        ]

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        append_jsonl(self.part, [error_row_verdicts_null(record) for record in records])

    def finish(self) -> list[dict[str, Any]]:
        """Merge the parts (all processes call this) and rewrite `out` one record per row in manifest order;
        returns the records on the main process, [] elsewhere."""
        if self.world > 1:
            from accelerate import PartialState

            state = PartialState()
            state.wait_for_everyone()
        if self.rank == 0:
            parts = self._parts()
            by_index = {
                record[INDEX_FIELD]: record
                for path in [self.out, *parts]
                for record in read_jsonl(path)
                if INDEX_FIELD in record
            }
            write_jsonl(self.out, [by_index[i] for i in sorted(by_index)])
            for path in parts:
                path.unlink(missing_ok=True)
        if self.world > 1:
            state.wait_for_everyone()
        return read_jsonl(self.out) if self.rank == 0 else []


def indexed_record(index: int, row: ManifestRow) -> dict[str, Any]:
    """A results record's start: the row's manifest index, then its fields. A row read from an earlier results
    file carries a manifest_index of its own: the index is this run's (records are keyed by it)."""
    return {
        INDEX_FIELD: index,
        **{key: value for key, value in row.to_record().items() if key != INDEX_FIELD},
    }


def error_row_verdicts_null(record: dict[str, Any]) -> dict[str, Any]:
    """An error row's verdicts become null: it was not judged, so it must not count as a fail."""
    if record.get("error"):
        return {**record, **{name: None for name in VERDICT_FIELDS if name in record}}
    return record


def failure_kinds(record: dict[str, Any]) -> list[str]:
    """Why a result record (check, score or eval row) did not pass, as machine-readable kinds, the primary
    first: "error" when it could not be judged, else the consistency `failed_checks`, plus "background"
    when the background judge failed it; [] when it passed. Never parsed from the reason text."""
    if record.get("error"):
        return [ERROR_KIND]
    kinds = list(record.get("failed_checks") or [])
    if record.get("passed") is False and record.get("consistent") is not False:
        kinds.append(BACKGROUND_KIND)
    return kinds


def require_some_rows_judged(records: Sequence[dict[str, Any]], manifest: str | Path) -> None:
    """Raise AllRowsFailedError when no record was judged (every row has an error, or there are none)."""
    errors = [str(record["error"]) for record in records if record.get("error")]
    if records and len(errors) < len(records):
        return
    if not records:
        raise AllRowsFailedError(f"{manifest}: no row was judged; give a manifest with at least one pair")
    common, count = Counter(errors).most_common(1)[0]
    raise AllRowsFailedError(
        f"{manifest}: every one of the {len(records)} rows failed ({count} with: {common}); "
        "fix the manifest or its images and run again"
    )
