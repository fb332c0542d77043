"""samples.jsonl of an eval run: one row per (version, product, sample k), written as per-process shards.

Each process appends its rows (fsynced per batch) to its own shard, `samples.part-R-of-W.jsonl` (a
one-process run appends to samples.jsonl itself). When all are done the main process merges samples.jsonl
and every shard into samples.jsonl, in one fixed order, and deletes the shards. An interrupted run leaves
its shards behind; a resumed run, on any number of processes, reads them as done work.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hfpc_reward.data.manifest import read_jsonl, write_jsonl
from hfpc_reward.runs import ResumeMismatchError

SAMPLES_NAME = "samples.jsonl"
SHARD_NAME = "samples.part-{rank}-of-{world}.jsonl"  # rank and world size of the process that writes it
SHARD_GLOB = "samples.part-*-of-*.jsonl"


def row_key(row: dict) -> tuple[str, str, int]:
    return row["version"], row["product_id"], row["k"]


def shard_path(out: Path, rank: int, world: int) -> Path:
    """Where a process appends its rows (samples.jsonl itself when it is the only process)."""
    return out / SAMPLES_NAME if world == 1 else out / SHARD_NAME.format(rank=rank, world=world)


def stored_rows(out: Path) -> list[dict]:
    """Every row of samples.jsonl, then of the shards left by unfinished runs (in name order)."""
    paths = [out / SAMPLES_NAME, *sorted(out.glob(SHARD_GLOB))]
    return [row for path in paths for row in read_jsonl(path)]


def remove_samples(out: Path) -> None:
    """Delete samples.jsonl and every shard (a run that starts over)."""
    for path in [out / SAMPLES_NAME, *out.glob(SHARD_GLOB)]:
        path.unlink(missing_ok=True)


def finished_keys(out: Path, settings: dict[str, str]) -> set[tuple[str, str, int]]:
    """The (version, product, k) that have a row needing no retry.

    `settings` maps version names to the hash their rows must carry; a row of one of them with another hash
    raises ResumeMismatchError (mixing them would silently compare different generators or judges)."""
    done = set()
    for row in stored_rows(out):
        expected = settings.get(row["version"])
        if expected is not None and row.get("settings") != expected:
            raise ResumeMismatchError(
                f"eval: {out} holds samples of version {row['version']!r} made with another definition of "
                "it (or other generation / judge settings); use a new out_dir, or rename the version"
            )
        if not row.get("retry"):
            done.add(row_key(row))
    return done


def merge_samples(
    out: Path, version_names: Sequence[str], product_ids: Sequence[str], samples_per_product: int
) -> list[dict]:
    """Merge the shards into samples.jsonl and return the rows of these versions, products and k.

    One row per (version, product, k): a finished row beats a retry, a later row an earlier one. The order
    is fixed: versions as given, products as given, k ascending; rows of versions or products not given (an
    out_dir may keep those of a dropped version) follow in name order."""
    merged: dict[tuple[str, str, int], dict] = {}
    for row in stored_rows(out):
        key = row_key(row)
        if key not in merged or merged[key].get("retry") or not row.get("retry"):
            merged[key] = row
    version_rank = {name: i for i, name in enumerate(version_names)}
    product_rank = {product_id: i for i, product_id in enumerate(product_ids)}
    unknown = len(version_rank) + len(product_rank)

    def order(key: tuple[str, str, int]) -> tuple:
        version, product_id, k = key
        return (
            version_rank.get(version, unknown),
            version,
            product_rank.get(product_id, unknown),
            product_id,
            k,
        )

    rows = [merged[key] for key in sorted(merged, key=order)]
    write_jsonl(out / SAMPLES_NAME, rows)
    for path in out.glob(SHARD_GLOB):
        path.unlink()
    return [
        row
        for row in rows
        if row["version"] in version_rank
        and row["product_id"] in product_rank
        and row["k"] < samples_per_product
    ]


def latest_samples(samples_path: Path) -> list[dict]:
    """The last row of each (version, product, k) in samples.jsonl."""
    return list({row_key(row): row for row in read_jsonl(samples_path)}.values())
