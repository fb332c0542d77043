"""`hfpc data ...`: manifest statistics, splits by original, image fetching and category clusters."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from hfpc_reward.data.manifest import (
    FETCH_HINT,
    ManifestError,
    group_by_original,
    is_url,
    manifest_stats,
    read_manifest,
    write_jsonl,
)
from hfpc_reward.data.splits import DEFAULT_SPLIT_FRACTIONS, split_by_original
from hfpc_reward.errors import CommandLineError
from hfpc_reward.runs import refuse_output_over_inputs

logger = logging.getLogger(__name__)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    stats = actions.add_parser("stats", help="rows, originals, labels and comparative pairs of a manifest")
    stats.add_argument("manifest", type=Path)
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")

    split = actions.add_parser("split", help="split a manifest by original into one JSONL per part")
    split.add_argument("manifest", type=Path)
    split.add_argument("--out", type=Path, required=True, help="folder for <part>.jsonl files")
    split.add_argument(
        "--fractions",
        type=_parse_fractions,
        default=DEFAULT_SPLIT_FRACTIONS,
        help="shares of originals per part, e.g. train=0.8,valid=0.1,test=0.1 (the default)",
    )
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--stratify", help="row field to stratify by, e.g. category")
    split.add_argument(
        "--stratify-clusters",
        type=Path,
        help="stratify by a cluster assignment JSON from `hfpc data clusters`",
    )

    fetch = actions.add_parser(
        "fetch",
        help="download a manifest's image URLs into a local cache",
        description="Exit status: 0 all rows fetched, 1 some rows failed (see the failures report), "
        "124 stopped by --max-time, 130 stopped by Ctrl-C; after a stop, rerun the same command to continue.",
    )
    fetch.add_argument("manifest", type=Path)
    fetch.add_argument("--cache", type=Path, required=True, help="content-addressed image cache folder")
    fetch.add_argument("--out", type=Path, required=True, help="local manifest to write (JSON Lines)")
    fetch.add_argument("--failures", type=Path, help="failures report (default: <out>.failures.jsonl)")
    fetch.add_argument("--workers", type=int, default=8)
    fetch.add_argument(
        "--timeout", type=float, default=30.0, help="connect timeout / longest silence, seconds"
    )
    fetch.add_argument(
        "--deadline", type=float, default=300.0, help="wall-clock limit of one attempt, seconds"
    )
    fetch.add_argument("--max-time", type=float, help="wall-clock limit of the whole run, seconds (no limit)")
    fetch.add_argument("--max-bytes", type=int, default=50_000_000, help="size cap per image")
    fetch.add_argument("--retries", type=int, default=3, help="extra attempts after a retryable failure")
    fetch.add_argument("--backoff", type=float, default=1.0, help="first retry wait in seconds (doubles)")
    fetch.add_argument("--max-redirects", type=int, default=5, help="redirect hops followed per URL")
    fetch.add_argument(
        "--redirects",
        choices=("same-host", "any"),
        default="same-host",
        help="where redirects may go: the URL's own host (default; http->https allowed) or any http(s) host",
    )
    fetch.add_argument(
        "--redirect-allow",
        action="append",
        default=[],
        metavar="HOST",
        help="a further host redirects may go to (repeatable); .example.com allows all its subdomains",
    )

    clusters = actions.add_parser(
        "clusters", help="cluster originals by BLIP image features (category balance)"
    )
    clusters.add_argument(
        "manifest", type=Path, help="a manifest with local originals (see `hfpc data fetch`)"
    )
    clusters.add_argument(
        "--out", type=Path, required=True, help="folder for clusters.json and contact sheets"
    )
    clusters.add_argument("--k", type=int, default=25, help="number of clusters (capped at the originals)")
    clusters.add_argument("--backbone", default=None, help="BLIP hub id or folder, or a reward-model folder")
    clusters.add_argument("--seed", type=int, default=0)
    clusters.add_argument("--device", default="cpu")
    clusters.add_argument("--batch-size", type=int, default=32)


def run_data(args: argparse.Namespace) -> int:
    actions = {"stats": _stats, "split": _split, "fetch": _fetch, "clusters": _clusters}
    return actions[args.data_command](args)


def _stats(args: argparse.Namespace) -> int:
    stats = manifest_stats(read_manifest(args.manifest))
    if args.json:
        sys.stdout.write(json.dumps(stats, indent=2) + "\n")
        return 0
    per_original = stats["generations_per_original"]
    labels = stats["labels"]
    sys.stdout.write(
        f"manifest            {args.manifest}\n"
        f"rows                {stats['rows']:,}\n"
        f"originals           {stats['originals']:,}\n"
        f"label 1 (pass)      {labels['1']:,}\n"
        f"label 0 (fail)      {labels['0']:,}\n"
        f"unlabelled          {labels['unlabelled']:,}\n"
        f"generations/orig.   min {per_original['min']}  mean {per_original['mean']:.2f}  max {per_original['max']}\n"
        f"comparative pairs   {stats['comparative_pairs']:,} "
        f"(from {stats['originals_with_pairs']:,} originals with both labels)\n"
    )
    return 0


def _split(args: argparse.Namespace) -> int:
    if args.stratify and args.stratify_clusters:
        raise CommandLineError("hfpc data split: give --stratify or --stratify-clusters, not both")
    stratify_by = args.stratify
    if args.stratify_clusters:
        from hfpc_reward.data.clusters import ClusterAssignment

        stratify_by = ClusterAssignment.load(args.stratify_clusters).assignment
    parts = split_by_original(read_manifest(args.manifest), args.fractions, args.seed, stratify_by)
    for name in parts:
        refuse_output_over_inputs(args.out / f"{name}.jsonl", [args.manifest], "hfpc data split")
    for name, rows in parts.items():
        path = args.out / f"{name}.jsonl"
        write_jsonl(path, (row.to_record() for row in rows))
        sys.stdout.write(
            f"{name:8s} {len(rows):7,} rows {len(group_by_original(rows)):6,} originals -> {path}\n"
        )
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from hfpc_reward.data.fetch import FetchConfig, FetchInterrupted, fetch_manifest

    config = FetchConfig(
        workers=args.workers,
        timeout_s=args.timeout,
        deadline_s=args.deadline,
        max_time_s=args.max_time,
        max_bytes=args.max_bytes,
        retries=args.retries,
        backoff_s=args.backoff,
        max_redirects=args.max_redirects,
        redirects=args.redirects,
        redirect_allow=args.redirect_allow,
    )
    for written in (args.out, args.failures):  # rewritten from the first row on: the input would be lost
        if written:
            refuse_output_over_inputs(written, [args.manifest], "hfpc data fetch")
    try:
        summary = fetch_manifest(read_manifest(args.manifest), args.cache, args.out, config, args.failures)
    except FetchInterrupted as interrupted:
        _log_stop("interrupted", interrupted.summary, args.out)
        return 130
    sys.stdout.write(
        f"URLs {summary.urls:,}: {summary.downloaded:,} downloaded, {summary.cached:,} already cached, "
        f"{len(summary.failed):,} failed\nrows {summary.rows_written:,} written to {args.out}, "
        f"{summary.rows_failed:,} left out (see the failures report)\n"
    )
    if summary.stopped == "max-time":
        _log_stop(f"stopped by --max-time {args.max_time:g}s", summary, args.out)
        return 124
    return 0 if not summary.failed else 1


def _log_stop(why: str, summary, out: Path) -> None:
    logger.error(
        "%s: %d rows written to %s, %d failed, %d not done; rerun the same command to continue "
        "(downloads already in the cache are not fetched again)",
        why, summary.rows_written, out, summary.rows_failed, summary.rows_pending,
    )  # fmt: skip


def _clusters(args: argparse.Namespace) -> int:
    from hfpc_reward.config import save_resolved_config
    from hfpc_reward.data.clusters import (
        BlipImageFeatures,
        ClusterConfig,
        cluster_originals,
        write_contact_sheets,
    )

    config = ClusterConfig(k=args.k, seed=args.seed, device=args.device, batch_size=args.batch_size)
    if args.backbone:
        config.backbone = args.backbone
    originals = list(group_by_original(read_manifest(args.manifest)))
    remote = [origin for origin in originals if is_url(origin)]
    if remote:
        raise ManifestError(
            f"hfpc data clusters: {len(remote)} originals are URLs (e.g. {remote[0]}); {FETCH_HINT}, "
            "and cluster the local manifest it writes"
        )
    features_fn = BlipImageFeatures(config.backbone, device=config.device)
    result = cluster_originals(originals, features_fn, config.k, config.seed, config.batch_size)
    result.meta.update(backbone=config.backbone, manifest=str(args.manifest))
    path = result.save(args.out / "clusters.json")
    sheets = write_contact_sheets(result, args.out, config.sheet_thumbnails, config.thumbnail_px)
    save_resolved_config(config, args.out)
    sys.stdout.write(
        f"{len(result.assignment):,} originals in {result.k} clusters (sizes {result.sizes()}); "
        f"{len(result.skipped):,} skipped\nassignment -> {path}\n{len(sheets)} contact sheets -> {args.out}\n"
    )
    return 0


def _parse_fractions(text: str) -> dict[str, float]:
    fractions = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if not name.strip().replace("-", "").replace("_", "").isalnum():  # names the file <out>/<name>.jsonl
            raise argparse.ArgumentTypeError(f"split name {name.strip()!r} must be letters, digits, - or _")
        try:
            fractions[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not name=share (e.g. train=0.8,valid=0.1,test=0.1)"
            )
    return fractions
