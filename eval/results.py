"""results.json of an eval run: the numbers (stats.py), stamped with what made them, and report.html.

The stamp says when (date), from which code (git commit, package versions), with which settings (the
resolved config) and which judge made the verdicts (`judge`: reward model, threshold, scorer hash; a
re-judged run also names the run its images came from).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

from hfpc_eval.config import EvalConfig
from hfpc_eval.stats import summarise

from hfpc_reward.config import config_to_dict

RESULTS_NAME = "results.json"
PACKAGES = ("hfpc-reward", "torch", "transformers", "diffusers", "peft", "numpy", "pillow", "scikit-learn")


def write_results(
    config: EvalConfig,
    out: Path,
    product_ids: list[str],
    skipped: dict[str, str],
    samples: list[dict],
    generated: int,
    judge: dict[str, Any],
) -> dict[str, Any]:
    """Summarise this config's `samples`, write results.json and report.html into `out`; returns the results."""
    names = [version.name for version in config.versions]
    results = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": _git_commit(),
            "packages": _package_versions(),
            "config": config_to_dict(config),
            "judge": judge,
            "counts": {
                "products": len(product_ids),
                "product_ids": list(product_ids),
                "skipped_products": skipped,
                "samples_per_product": config.generation.samples_per_product,
                "samples": {name: sum(row["version"] == name for row in samples) for name in names},
                "generated_this_run": generated,
            },
        },
        **summarise(samples, names, config.stats),
    }
    write_json(out / RESULTS_NAME, results)
    from hfpc_eval.report import write_report

    write_report(out, results, samples, config)
    return results


def write_json(path: Path, data: Any) -> None:
    """Write strict JSON atomically (temp file + rename); NaN / infinity become null."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps(_finite(data), indent=2, allow_nan=False))
    os.replace(temp, path)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _git_commit() -> str | None:
    try:
        repo = Path(__file__).resolve().parents[1]
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions
