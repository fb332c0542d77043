"""Numbers of an eval run: pass rates with bootstrap intervals over products, paired version differences,
breakdowns by category and failure reason, and mean reward with its components.

Samples of one product are correlated (same original, same prompt), so every interval resamples whole
products (`hfpc_reward.stats.grouped_bootstrap_ci`). A version difference is paired: both versions
sampled product p with the same seeds, so the test works on per-product differences of pass rates.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from hfpc_eval.config import StatsConfig

from hfpc_reward.data.results import failure_kinds
from hfpc_reward.stats import grouped_bootstrap_ci, paired_difference_test

UNSPECIFIED_KIND = "unspecified"  # a failed sample whose judge gave no failure kind


def interval(values: np.ndarray, groups: Sequence[str], cfg: StatsConfig) -> dict[str, float]:
    """Mean of per-sample `values` with a bootstrap interval that resamples whole groups (products)."""
    if len(values) == 0:
        return {"estimate": math.nan, "low": math.nan, "high": math.nan, "n_valid": 0}
    return grouped_bootstrap_ci(
        lambda rows: float(values[rows].mean()), groups, cfg.n_resamples, cfg.confidence, cfg.seed
    )


def pass_rate(rows: list[dict], cfg: StatsConfig) -> dict[str, float]:
    """Share of `rows` that passed, with its interval over their products."""
    passed = np.array([bool(row["passed"]) for row in rows], dtype=float)
    return interval(passed, [row["product_id"] for row in rows], cfg)


def version_summary(samples: list[dict], cfg: StatsConfig) -> dict[str, Any]:
    """Pass rate (with interval), mean reward and components, and counts, for one version's samples."""
    summary: dict[str, Any] = {
        "n_samples": len(samples),
        "n_products": len({row["product_id"] for row in samples}),
        "n_errors": sum(1 for row in samples if row.get("error")),
        "pass_rate": pass_rate(samples, cfg),
    }
    reward_rows = [row for row in samples if row.get("reward") is not None]
    summary["reward"] = interval(
        np.array([row["reward"] for row in reward_rows], dtype=float),
        [row["product_id"] for row in reward_rows],
        cfg,
    )
    summary["components"] = _component_means(samples)
    summary["held_out"] = _component_means([row.get("held_out") or {} for row in samples], flat=True)
    oracle = oracle_verdicts(samples)
    if oracle:  # the ground truth's pass rate, beside the training judge's
        summary["oracle_pass_rate"] = pass_rate(oracle, cfg)
    best = {str(n): best_of_n(samples, n, cfg) for n in cfg.best_of}
    summary["best_of"] = {n: value for n, value in best.items() if value}
    return summary


def best_of_n(samples: list[dict], n: int, cfg: StatsConfig) -> dict[str, Any]:
    """Best-of-n selection by the HFPC reward: the expected pass rate (and oracle pass rate) of the sample
    with the highest reward among n of a product's samples, over every n-subset of them (exact), with
    intervals over products. Products with fewer than n rewarded samples are left out; {} if none is left.

    Among m samples sorted by reward (highest first), the i-th is the best of a random n-subset with
    probability C(m - i, n - 1) / C(m, n): it is drawn and the other n - 1 come from the m - i below it.
    """
    by_product: dict[str, list[dict]] = {}
    for row in samples:
        if row.get("reward") is not None and not row.get("error"):
            by_product.setdefault(row["product_id"], []).append(row)
    products, passed, oracle = [], [], []  # per product: (best-of-n rate, rate of one sample)
    for product, rows in by_product.items():
        if len(rows) < n:
            continue
        rows = sorted(rows, key=lambda row: row["reward"], reverse=True)
        m = len(rows)
        weights = np.array([math.comb(m - i, n - 1) for i in range(1, m + 1)]) / math.comb(m, n)
        products.append(product)
        verdicts = np.array([bool(row["passed"]) for row in rows], dtype=float)
        passed.append((float(weights @ verdicts), float(verdicts.mean())))
        truth = [(row.get("held_out") or {}).get("oracle_passed") for row in rows]
        truth = np.array([bool(v) for v in truth], dtype=float) if None not in truth else None
        oracle.append(None if truth is None else (float(weights @ truth), float(truth.mean())))
    if not products:
        return {}
    result = {"n_products": len(products), **_selection_gain(np.array(passed), products, cfg, "pass_rate")}
    if None not in oracle:
        result.update(_selection_gain(np.array(oracle), products, cfg, "oracle_pass_rate"))
    return result


def _selection_gain(rates: np.ndarray, products: list[str], cfg: StatsConfig, name: str) -> dict[str, Any]:
    """{name: best-of-n rate with its interval, name_gain: paired gain over one sample, with its test}
    from (products, 2) per-product rates (best-of-n, one sample)."""
    gain = paired_difference_test(
        list(rates[:, 0] - rates[:, 1]), products, cfg.n_resamples, cfg.confidence, cfg.seed, cfg.paired_test
    )
    gain.pop("better"), gain.pop("worse")
    return {name: interval(rates[:, 0], products, cfg), f"{name}_gain": gain}


def oracle_verdicts(samples: list[dict]) -> list[dict]:
    """Rows {product_id, passed} of the samples that the held-out oracle judged (`held_out.oracle_passed`)."""
    return [
        {"product_id": row["product_id"], "passed": bool(row["held_out"]["oracle_passed"])}
        for row in samples
        if (row.get("held_out") or {}).get("oracle_passed") is not None
    ]


def paired_with_oracle(reference: list[dict], candidate: list[dict], cfg: StatsConfig) -> dict[str, Any]:
    """The paired HFPC difference; with oracle verdicts also the oracle's, and `hacking`: True when the
    HFPC pass rate rises (paired interval above 0) while the oracle's does not (its interval reaches 0).

    `hacking` is always a bool: False when the oracle's paired interval is undefined (no product has oracle
    verdicts under both versions; `oracle` then has n_products 0 and NaN bounds), since an oracle that
    says nothing is no evidence that it does not rise. Without oracle verdicts the keys are absent."""
    result = paired_difference(reference, candidate, cfg)
    ref_oracle, cand_oracle = oracle_verdicts(reference), oracle_verdicts(candidate)
    if ref_oracle and cand_oracle:
        oracle = result["oracle"] = paired_difference(ref_oracle, cand_oracle, cfg)
        oracle_defined = math.isfinite(oracle["low"])
        result["hacking"] = bool(result["low"] > 0 and oracle_defined and not oracle["low"] > 0)
    return result


def _component_means(rows: list[dict], flat: bool = False) -> dict[str, float]:
    """Mean of each numeric score over the rows that have it (consistency metrics included)."""
    values: dict[str, list[float]] = {}
    for row in rows:
        fields = (
            dict(row)
            if flat
            else {
                "background_score": row.get("background_score"),
                "consistency_score": row.get("consistency_score"),
                "consistent": row.get("consistent"),
                **{f"metric.{name}": value for name, value in (row.get("metrics") or {}).items()},
            }
        )
        for name, value in fields.items():
            if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
                values.setdefault(name, []).append(float(value))
    return {name: float(np.mean(items)) for name, items in sorted(values.items())}


def by_category(samples: list[dict], cfg: StatsConfig) -> dict[str, dict[str, Any]]:
    """Pass rate with interval per product category."""
    categories: dict[str, list[dict]] = {}
    for row in samples:
        categories.setdefault(row.get("category") or "(none)", []).append(row)
    return {
        name: {
            "n_samples": len(rows),
            "pass_rate": pass_rate(rows, cfg),
        }
        for name, rows in sorted(categories.items())
    }


def failure_reasons(samples: list[dict]) -> dict[str, Any]:
    """How often each failure kind (`failure_kinds`: machine-readable, never parsed from reason text)
    occurs among failed samples (a sample can have several)."""
    failed = [row for row in samples if not row["passed"]]
    kinds = Counter(kind for row in failed for kind in set(failure_kinds(row) or [UNSPECIFIED_KIND]))
    return {
        "n_failed": len(failed),
        "kinds": {
            kind: {"count": count, "share_of_samples": count / max(len(samples), 1)}
            for kind, count in kinds.most_common()
        },
    }


def paired_difference(reference: list[dict], candidate: list[dict], cfg: StatsConfig) -> dict[str, Any]:
    """Pass rate of `candidate` minus `reference` over the products both have, paired by product.

    Returns the mean per-product difference, its bootstrap interval (resampling products) and a two-sided
    p-value for "no difference": a sign-flip permutation test of the per-product differences (exact
    under the null that the two versions are exchangeable per product), or a centred paired bootstrap.
    """
    ref, cand = _per_product_rates(reference), _per_product_rates(candidate)
    products = sorted(set(ref) & set(cand))
    if not products:  # the same keys as below: the report reads them
        undefined = {"estimate": math.nan, "low": math.nan, "high": math.nan, "p_value": math.nan}
        return {
            "n_products": 0,
            **undefined,
            "test": cfg.paired_test,
            "products_better": 0,
            "products_worse": 0,
        }
    test = paired_difference_test(
        [cand[p] - ref[p] for p in products],
        products,
        cfg.n_resamples,
        cfg.confidence,
        cfg.seed,
        cfg.paired_test,
    )
    better, worse = test.pop("better"), test.pop("worse")
    return {"n_products": len(products), **test, "products_better": better, "products_worse": worse}


def _per_product_rates(samples: list[dict]) -> dict[str, float]:
    totals: dict[str, list[float]] = {}
    for row in samples:
        totals.setdefault(row["product_id"], []).append(float(bool(row["passed"])))
    return {product: float(np.mean(values)) for product, values in totals.items()}


def summarise(samples: list[dict], version_names: list[str], cfg: StatsConfig) -> dict[str, Any]:
    """Every number of results.json: per version, per category, failure reasons, and paired differences
    of each version against the first (the reference)."""
    by_version = {name: [row for row in samples if row["version"] == name] for name in version_names}
    reference = version_names[0]
    return {
        "versions": {name: version_summary(rows, cfg) for name, rows in by_version.items()},
        "categories": {name: by_category(rows, cfg) for name, rows in by_version.items()},
        "failure_reasons": {name: failure_reasons(rows) for name, rows in by_version.items()},
        "paired": {
            f"{name} - {reference}": {
                "reference": reference,
                "candidate": name,
                **paired_with_oracle(by_version[reference], by_version[name], cfg),
            }
            for name in version_names[1:]
        },
    }
