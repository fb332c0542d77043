"""Manifests: the two HFPC-44k schemas and ours, read into one row type.

Schemas (see DESIGN.md):
- HFPC test / ours: JSON Lines, one object per (original, generation): `{"origin", "generation",
  "label"?}`; ours may add `mask`, `prompt`, `category`, `product_id` and any other fields (kept).
- HFPC valid: JSON Lines `{origin_url: {"generations": [...], "labels": [...]}}`, expanded to one row
  per generation.
Relative paths resolve against the manifest's folder; `http(s)://` values stay URLs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

KNOWN_FIELDS = ("origin", "generation", "label", "mask", "prompt", "category", "product_id")


class ManifestError(ValueError):
    """A manifest is malformed; the message names the file, the line and the problem."""


@dataclass
class ManifestRow:
    """One (original, generation) pair of a manifest. Paths are resolved; URLs are kept as is."""

    origin: str
    generation: str | None = None
    label: int | None = None
    mask: str | None = None
    prompt: str | None = None
    category: str | None = None
    product_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # every other field of the input row, kept for output
    line: int = 0  # 1-based line of the manifest this row came from

    def to_record(self) -> dict[str, Any]:
        """The row as a JSON-ready dict, in the user's field order (known fields first)."""
        record = {name: getattr(self, name) for name in KNOWN_FIELDS if getattr(self, name) is not None}
        record.update(self.extra)
        return record


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def resolve_source(value: str, base_dir: Path) -> str:
    """A manifest path made absolute against the manifest's folder; URLs unchanged."""
    if is_url(value):
        return value
    path = Path(os.path.expanduser(value))
    return str(path if path.is_absolute() else (base_dir / path))


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Read any supported manifest schema into rows, in file order (HFPC valid rows expanded)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    base_dir = path.resolve().parent
    rows: list[ManifestRow] = []
    for line_no, obj in _iter_json_lines(path):
        if "origin" in obj:
            rows.append(_row_from_record(obj, base_dir, path, line_no))
        elif len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
            rows.extend(_rows_from_grouped(obj, base_dir, path, line_no))
        else:
            raise ManifestError(
                f"{path}:{line_no}: unknown row schema with keys {sorted(obj)[:5]}; expected "
                "{'origin', 'generation', 'label'} or {origin_url: {'generations': [...], 'labels': [...]}}"
            )
    return rows


def _iter_json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ManifestError(f"{path}:{line_no}: each line must be a JSON object")
            yield line_no, obj


def _row_from_record(obj: dict, base_dir: Path, path: Path, line_no: int) -> ManifestRow:
    if not isinstance(obj["origin"], str) or not obj["origin"]:
        raise ManifestError(f"{path}:{line_no}: 'origin' must be a non-empty string")
    values: dict[str, Any] = {}
    for name in ("generation", "mask"):
        if obj.get(name) is not None:
            if not isinstance(obj[name], str):
                raise ManifestError(f"{path}:{line_no}: {name!r} must be a string path or URL")
            values[name] = resolve_source(obj[name], base_dir)
    for name in ("prompt", "category", "product_id"):
        if obj.get(name) is not None:
            values[name] = str(obj[name])
    extra = {key: value for key, value in obj.items() if key not in KNOWN_FIELDS}
    return ManifestRow(
        origin=resolve_source(obj["origin"], base_dir),
        label=_parse_label(obj.get("label"), path, line_no),
        extra=extra,
        line=line_no,
        **values,
    )


def _rows_from_grouped(obj: dict, base_dir: Path, path: Path, line_no: int) -> Iterable[ManifestRow]:
    origin, group = next(iter(obj.items()))
    generations, labels = group.get("generations"), group.get("labels")
    if not isinstance(generations, list) or not isinstance(labels, list) or len(generations) != len(labels):
        raise ManifestError(f"{path}:{line_no}: 'generations' and 'labels' must be lists of equal length")
    for generation, label in zip(generations, labels):
        yield ManifestRow(
            origin=resolve_source(origin, base_dir),
            generation=resolve_source(generation, base_dir),
            label=_parse_label(label, path, line_no),
            line=line_no,
        )


def _parse_label(value: Any, path: Path, line_no: int) -> int | None:
    if value is None:
        return None
    if value in (0, 1) and not isinstance(value, float | str):
        return int(value)
    raise ManifestError(f"{path}:{line_no}: 'label' must be 0 or 1, got {value!r}")


def read_jsonl(path: str | Path) -> list[dict]:
    """All objects of a JSON Lines file; a truncated last line (interrupted write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Append records to a JSON Lines file and flush to disk, so an interrupted run loses nothing done."""
    with Path(path).open("a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
