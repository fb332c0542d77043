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
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hfpc_reward.errors import UsageError

KNOWN_FIELDS = ("origin", "generation", "label", "mask", "prompt", "category", "product_id")
OTHER_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")  # ftp://, file://, s3://, ...: refused


class ManifestError(UsageError):
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


FETCH_HINT = "download the manifest's images first (hfpc data fetch MANIFEST --cache DIR --out LOCAL.jsonl)"


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def remote_source_problem(row: ManifestRow) -> str | None:
    """Why a row cannot be judged from local files (its first http(s) image), or None when all are local."""
    for source in (row.origin, row.generation, row.mask):
        if source and is_url(source):
            return f"{source} is a URL: {FETCH_HINT}"
    return None


def resolve_source(value: str, base_dir: Path) -> str:
    """A manifest path made absolute against the manifest's folder; URLs unchanged.

    Only http(s) URLs are supported; any other scheme raises ManifestError rather than being
    mistaken for a relative path.
    """
    if is_url(value):
        return value
    if OTHER_SCHEME.match(value):
        raise ManifestError(
            f"{value}: unsupported URL scheme {value.split(':', 1)[0]!r}; use http(s):// URLs or local paths"
        )
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
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ManifestError(
                    f"{path}:{line_no}: not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1}); "
                    "save the manifest as UTF-8"
                ) from None
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
            values[name] = _resolve(obj[name], base_dir, path, line_no)
    for name in ("prompt", "category", "product_id"):
        if obj.get(name) is not None:
            values[name] = str(obj[name])
    extra = {key: value for key, value in obj.items() if key not in KNOWN_FIELDS}
    return ManifestRow(
        origin=_resolve(obj["origin"], base_dir, path, line_no),
        label=_parse_label(obj.get("label"), path, line_no),
        extra=extra,
        line=line_no,
        **values,
    )


def product_id_of(row: ManifestRow) -> str:
    """A row's product: its product_id, else its origin's file name without the extension."""
    return row.product_id or Path(row.origin).stem


def file_safe_product_id(row: ManifestRow, manifest: str | Path) -> str:
    """`product_id_of(row)` for a caller that names output files with it: refused (ManifestError naming the
    line) when it could leave the output folder or collide there ('/', '\\', NUL, '.' or '..')."""
    product_id = product_id_of(row)
    if product_id in (".", "..") or any(c in product_id for c in "/\\\0"):
        raise ManifestError(
            f"{manifest}:{row.line}: product_id {product_id!r} names output files: use no '/', '\\' or NUL, "
            "and not '.' or '..'"
        )
    return product_id


def _rows_from_grouped(obj: dict, base_dir: Path, path: Path, line_no: int) -> Iterable[ManifestRow]:
    origin, group = next(iter(obj.items()))
    generations, labels = group.get("generations"), group.get("labels")
    if not isinstance(generations, list) or not isinstance(labels, list) or len(generations) != len(labels):
        raise ManifestError(f"{path}:{line_no}: 'generations' and 'labels' must be lists of equal length")
    if not all(isinstance(generation, str) and generation for generation in generations):
        raise ManifestError(f"{path}:{line_no}: 'generations' must be non-empty path or URL strings")
    origin = _resolve(origin, base_dir, path, line_no)
    for generation, label in zip(generations, labels):
        yield ManifestRow(
            origin=origin,
            generation=_resolve(generation, base_dir, path, line_no),
            label=_parse_label(label, path, line_no),
            line=line_no,
        )


def _resolve(value: str, base_dir: Path, path: Path, line_no: int) -> str:
    try:
        return resolve_source(value, base_dir)
    except ManifestError as exc:
        raise ManifestError(f"{path}:{line_no}: {exc}") from None


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
    """Append records to a JSON Lines file and flush to disk, so an interrupted run loses nothing done.

    A last line cut short by an earlier interruption is closed first, so it does not swallow the
    first new record (read_jsonl then skips only the cut line).
    """
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")
    with Path(path).open("a+b") as handle:
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                lines = b"\n" + lines
        handle.write(lines)
        handle.flush()
        os.fsync(handle.fileno())


# --- grouping, comparison pairs, splits and statistics (everything is by original) -------------------


def group_by_original(rows: Iterable[ManifestRow]) -> dict[str, list[ManifestRow]]:
    """Rows grouped by their original, originals in order of first appearance, rows in file order."""
    groups: dict[str, list[ManifestRow]] = {}
    for row in rows:
        groups.setdefault(row.origin, []).append(row)
    return groups


def comparison_pairs(rows: Iterable[ManifestRow]) -> list[tuple[ManifestRow, ManifestRow]]:
    """Every (label 1, label 0) pair of generations of the same original, as (positive, negative).

    Unlabelled rows take part in no pair. Pairs come grouped by original, in manifest order.
    """
    pairs = []
    for group in group_by_original(rows).values():
        positives = [row for row in group if row.label == 1]
        negatives = [row for row in group if row.label == 0]
        pairs.extend((pos, neg) for pos in positives for neg in negatives)
    return pairs


def manifest_stats(rows: Iterable[ManifestRow]) -> dict[str, Any]:
    """Counts a user checks before training: rows, originals, labels, generations per original, pairs."""
    rows = list(rows)
    groups = group_by_original(rows)
    sizes = [len(group) for group in groups.values()]
    labels = [row.label for row in rows]
    positives_per_original = [sum(row.label == 1 for row in group) for group in groups.values()]
    negatives_per_original = [sum(row.label == 0 for row in group) for group in groups.values()]
    return {
        "rows": len(rows),
        "originals": len(groups),
        "labels": {"1": labels.count(1), "0": labels.count(0), "unlabelled": labels.count(None)},
        "generations_per_original": {
            "min": min(sizes, default=0),
            "mean": sum(sizes) / len(sizes) if sizes else 0.0,
            "max": max(sizes, default=0),
        },
        "comparative_pairs": sum(p * n for p, n in zip(positives_per_original, negatives_per_original)),
        "originals_with_pairs": sum(
            1 for p, n in zip(positives_per_original, negatives_per_original) if p and n
        ),
    }


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Write a whole JSON Lines file atomically (temp file + os.replace): readers never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    append_jsonl(tmp, records)
    os.replace(tmp, path)
