"""Splits by original (never by row: one product's rows stay in one part), optionally stratified."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hfpc_reward.data.manifest import KNOWN_FIELDS, ManifestRow, group_by_original
from hfpc_reward.errors import UsageError


class SplitError(UsageError):
    """Split fractions or strata that cannot split this manifest (the message says what to change)."""


DEFAULT_SPLIT_FRACTIONS = {"train": 0.8, "valid": 0.1, "test": 0.1}


def split_by_original(
    rows: Iterable[ManifestRow],
    fractions: dict[str, float] | None = None,
    seed: int = 0,
    stratify_by: str | dict[str, str] | None = None,
) -> dict[str, list[ManifestRow]]:
    """Split rows into named parts by original: all rows of one original land in the same part.

    `fractions` are shares of *originals* (they must sum to 1). `stratify_by` is None, a row field
    name (e.g. "category", or a key of the row's extra fields) or a mapping original -> stratum (e.g. a
    cluster assignment from `hfpc data clusters`); each stratum is then spread over the parts in
    proportion. Method: originals are shuffled with `seed` inside each stratum, the strata are laid
    end to end, and each original in turn goes to the part furthest below its quota so far
    (largest deficit), so part sizes match the fractions to within one original overall and within
    about one original per stratum. Rows keep their input order inside each part.
    """
    import random

    fractions = dict(DEFAULT_SPLIT_FRACTIONS if fractions is None else fractions)
    _check_fractions(fractions)
    rows = list(rows)
    groups = group_by_original(rows)
    strata: dict[str, list[str]] = {}
    for origin, group in groups.items():
        strata.setdefault(_stratum_of(origin, group, stratify_by), []).append(origin)
    rng = random.Random(seed)
    ordered: list[str] = []
    for name in sorted(strata):
        members = strata[name]
        rng.shuffle(members)
        ordered.extend(members)

    assigned = {name: 0 for name in fractions}
    part_of: dict[str, str] = {}
    for position, origin in enumerate(ordered, start=1):
        part = max(fractions, key=lambda name: fractions[name] * position - assigned[name])
        assigned[part] += 1
        part_of[origin] = part
    parts: dict[str, list[ManifestRow]] = {name: [] for name in fractions}
    for row in rows:
        parts[part_of[row.origin]].append(row)
    return parts


def _check_fractions(fractions: dict[str, float]) -> None:
    if not fractions:
        raise SplitError("split fractions are empty; pass e.g. {'train': 0.8, 'valid': 0.1, 'test': 0.1}")
    if not all(value >= 0 for value in fractions.values()):  # NaN too: it compares False
        raise SplitError(f"split fractions must be numbers >= 0, got {fractions}")
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise SplitError(f"split fractions must sum to 1, got {fractions} (sum {sum(fractions.values()):g})")


def _stratum_of(origin: str, group: list[ManifestRow], stratify_by: str | dict[str, str] | None) -> str:
    if stratify_by is None:
        return ""
    if isinstance(stratify_by, dict):
        if origin not in stratify_by:
            raise SplitError(
                f"original {origin} has no stratum in the given assignment; recompute it for this manifest"
            )
        return str(stratify_by[origin])
    values = {_field_value(row, stratify_by) for row in group}
    if None in values:
        line = next(row.line for row in group if _field_value(row, stratify_by) is None)
        raise SplitError(
            f"manifest line {line}: row has no {stratify_by!r} value to stratify by; fill it or split "
            "without stratification"
        )
    if len(values) > 1:
        raise SplitError(
            f"original {origin} has several {stratify_by!r} values {sorted(map(str, values))}; a stratum "
            "must be one value per original"
        )
    return str(values.pop())


def _field_value(row: ManifestRow, name: str) -> Any:
    return getattr(row, name) if name in KNOWN_FIELDS else row.extra.get(name)
