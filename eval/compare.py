"""`eval compare A/results.json B/results.json`: versions of two runs side by side, paired by product.

Each results.json must have its samples.jsonl next to it. Versions are matched by name (or by explicit
`a_name:b_name` pairs; with no common name, the first version of each run). The difference B - A is
computed over the products both runs sampled, paired by product, with the same statistics as `eval run`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hfpc_eval.config import StatsConfig
from hfpc_eval.report import format_number
from hfpc_eval.samples import SAMPLES_NAME, latest_samples
from hfpc_eval.stats import paired_difference

from hfpc_reward.config import config_from_dict
from hfpc_reward.errors import UsageError

logger = logging.getLogger(__name__)


class CompareError(UsageError):
    """A run to compare is missing or has no such version; the message says which and what to pass."""


def _load_run(results_path: str | Path) -> tuple[dict, list[dict]]:
    path = Path(results_path)
    if not path.is_file():
        raise CompareError(f"{path} does not exist: pass the results.json of an `eval run` output folder")
    samples_path = path.parent / SAMPLES_NAME
    if not samples_path.is_file():
        raise CompareError(
            f"{samples_path} is missing: compare needs each run's samples.jsonl next to results.json"
        )
    results = json.loads(path.read_text())
    counts = results["meta"]["counts"]
    products = set(counts.get("product_ids") or ())  # empty: a results.json written before they were listed
    # the rows results.json summarises: samples.jsonl also keeps those of dropped versions, products and k
    rows = [
        row
        for row in latest_samples(samples_path)
        if row["version"] in results["versions"]
        and (not products or row["product_id"] in products)
        and row["k"] < counts["samples_per_product"]
    ]
    return results, rows


def compare_runs(
    a_path: str | Path, b_path: str | Path, pairs: list[tuple[str, str]] | None = None
) -> dict[str, Any]:
    """The comparison of two runs (B minus A for each version pair)."""
    a_results, a_samples = _load_run(a_path)
    b_results, b_samples = _load_run(b_path)
    a_names, b_names = list(a_results["versions"]), list(b_results["versions"])
    if not pairs:
        pairs = [(name, name) for name in a_names if name in b_names] or [(a_names[0], b_names[0])]
    stats = config_from_dict(StatsConfig, b_results["meta"]["config"]["stats"])
    a_seed = a_results["meta"]["config"]["generation"]["seed"]
    b_seed = b_results["meta"]["config"]["generation"]["seed"]
    if a_seed != b_seed:
        logger.warning(
            "runs used different generation.seed (%s vs %s): pairs share products, not noise", a_seed, b_seed
        )
    comparisons = []
    for a_name, b_name in pairs:
        for name, names, run in ((a_name, a_names, a_path), (b_name, b_names, b_path)):
            if name not in names:
                raise CompareError(f"version {name!r} is not in {run}: pass --pair with one of {names}")
        diff = paired_difference(
            [row for row in a_samples if row["version"] == a_name],
            [row for row in b_samples if row["version"] == b_name],
            stats,
        )
        comparisons.append(
            {
                "a": a_name,
                "b": b_name,
                "a_pass_rate": a_results["versions"][a_name]["pass_rate"],
                "b_pass_rate": b_results["versions"][b_name]["pass_rate"],
                "a_reward": a_results["versions"][a_name]["reward"]["estimate"],
                "b_reward": b_results["versions"][b_name]["reward"]["estimate"],
                "difference": diff,
            }
        )
    return {"a": str(a_path), "b": str(b_path), "same_seed": a_seed == b_seed, "comparisons": comparisons}


def comparison_table(comparison: dict) -> str:
    """Terminal table: one line per version pair."""
    lines = [
        f"A = {comparison['a']}",
        f"B = {comparison['b']}",
        f"{'A version':<14} {'B version':<14} {'A pass':>7} {'B pass':>7} {'B - A [CI]':<28} {'p':>7} {'products':>8}",
    ]
    for item in comparison["comparisons"]:
        diff = item["difference"]
        interval = f"{diff['estimate']:+.3f} [{format_number(diff['low'])}, {format_number(diff['high'])}]"
        lines.append(
            f"{item['a']:<14} {item['b']:<14} {format_number(item['a_pass_rate']['estimate']):>7} "
            f"{format_number(item['b_pass_rate']['estimate']):>7} {interval:<28} "
            f"{format_number(diff['p_value'], 4):>7} {diff['n_products']:>8}"
        )
    return "\n".join(lines)
