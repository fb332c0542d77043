"""report.html (one self-contained file that opens anywhere), charts, and the compact terminal tables.

The page is rendered by Jinja2 from `templates/report.html.j2` out of plain data, so a new number is one
entry in a table, not a template rewrite:
- `VERSION_COLUMNS`: (header, function(version summary) -> cell text) of the per-version table;
- `SAMPLE_FIELDS`: (label, function(sample row) -> text or None) shown under each image;
- products come regressions first: those where the candidate (the last version) passed less often than
  the reference (the first), then by how much its mean reward dropped.
Images (thumbnails, full images, consistency overlays) are embedded as data URIs (`report_images.py`);
charts are inline matplotlib SVGs; clicking a thumbnail opens the full image and its overlay (CSS :target,
no script). The judge's identity (reward model, threshold, scorer hash) heads the page; a LoRA version made
by `hfpc finetune` shows its training curve from the run folder's metrics.jsonl.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hfpc_eval.config import EvalConfig
from hfpc_eval.report_images import OverlayMaker, file_uri, sample_pictures
from markupsafe import Markup

from hfpc_reward.data.manifest import read_jsonl
from hfpc_reward.data.results import failure_kinds
from hfpc_reward.errors import UsageError

TEMPLATE_DIR = Path(__file__).parent / "templates"
COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
METRICS_FILE = "metrics.jsonl"  # per-epoch records of an `hfpc finetune` run folder
REPORT_NAME = "report.html"


def _interval_cell(ci: dict | None) -> str:
    if not ci:
        return "-"
    return f"{format_number(ci.get('estimate'))} [{format_number(ci.get('low'), 2)}, {format_number(ci.get('high'), 2)}]"


# header -> cell text of one version's summary (results["versions"][name]); append to add a column
VERSION_COLUMNS: list[tuple[str, Callable[[dict], str]]] = [
    ("samples", lambda s: str(s.get("n_samples", "-"))),
    ("errors", lambda s: str(s.get("n_errors", "-"))),
    ("pass rate [CI]", lambda s: _interval_cell(s.get("pass_rate"))),
    ("mean reward [CI]", lambda s: _interval_cell(s.get("reward"))),
    ("background score", lambda s: format_number(s.get("components", {}).get("background_score"))),
    ("consistent", lambda s: format_number(s.get("components", {}).get("consistent"))),
    ("consistency score", lambda s: format_number(s.get("components", {}).get("consistency_score"))),
]
# label -> text shown under a sample's image (None: not shown); append to add a field
SAMPLE_FIELDS: list[tuple[str, Callable[[dict], str | None]]] = [
    ("reward", lambda row: format_number(row.get("reward"), 2)),
    (
        "background",
        lambda row: (
            format_number(row.get("background_score"), 2) if row.get("background_score") is not None else None
        ),
    ),
]


def primary_reason(row: dict) -> str | None:
    """The one reason a sample failed: the judges' primary reason, else its first failure kind."""
    if row.get("error"):
        return "error"
    if row.get("passed"):
        return None
    if row.get("primary_reason"):
        return str(row["primary_reason"])
    kinds = failure_kinds(row)
    return kinds[0] if kinds else "failed"


def write_report(out: Path, results: dict, samples: list[dict], config: EvalConfig) -> Path:
    """Render report.html into `out` from the results and sample rows; returns its path."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    out = Path(out)
    names = [version.name for version in config.versions]
    env = Environment(loader=FileSystemLoader(TEMPLATE_DIR), autoescape=True, undefined=StrictUndefined)
    env.filters["num"] = format_number
    env.filters["pvalue"] = format_p_value
    html = env.get_template("report.html.j2").render(
        title=config.report.title,
        meta=results["meta"],
        judge=results["meta"].get("judge") or {},
        versions=names,
        version_table=_version_table(results, config),
        paired=results["paired"],
        categories=results["categories"],
        reasons=results["failure_reasons"],
        held_out_names=sorted({name for v in results["versions"].values() for name in v["held_out"]}),
        component_names=sorted({name for v in results["versions"].values() for name in v["components"]}),
        summary=results["versions"],
        pass_chart=Markup(pass_rate_chart(results, names)),
        reward_chart=Markup(reward_histogram(samples, names)),
        curves=[(name, Markup(svg)) for name, svg in finetune_curves(config)],
        products=_products(out, samples, names, config),
        colours=dict(zip(names, COLOURS * (1 + len(names) // len(COLOURS)))),
    )
    path = out / REPORT_NAME
    path.write_text(html, encoding="utf-8")
    return path


def _version_table(results: dict, config: EvalConfig) -> dict:
    rows = []
    for version in config.versions:
        summary = results["versions"][version.name]
        rows.append(
            {
                "name": version.name,
                "kind": version.kind,
                "cells": [cell(summary) for _, cell in VERSION_COLUMNS],
            }
        )
    return {"headers": [header for header, _ in VERSION_COLUMNS], "rows": rows}


def _products(out: Path, samples: list[dict], names: list[str], config: EvalConfig) -> list[dict]:
    """Products (at most report.max_products), regressions first, with each version's samples in k order."""
    products: dict[str, dict] = {}
    for row in sorted(samples, key=lambda row: (row["product_id"], row["k"])):
        entry = products.setdefault(
            row["product_id"],
            {
                "product_id": row["product_id"],
                "category": row.get("category") or "",
                "prompt": row.get("prompt") or "",
                "original_thumb": f"thumbs/originals/{row['product_id']}.jpg",
                "versions": {name: [] for name in names},
            },
        )
        if row["version"] in entry["versions"]:
            entry["versions"][row["version"]].append(row)
    ordered = sorted(products.values(), key=lambda entry: _regression_key(entry, names))
    shown = ordered[: config.report.max_products]
    overlays = _overlay_maker(config, {entry["product_id"] for entry in shown})
    for entry in shown:
        entry["original"] = file_uri(out, entry.pop("original_thumb"))
        entry["change"] = _change(entry, names)
        entry["versions"] = {
            name: [_sample_view(out, row, overlays) for row in rows]
            for name, rows in entry["versions"].items()
        }
    return shown


def _pass_rate(rows: list[dict]) -> float | None:
    return sum(bool(row.get("passed")) for row in rows) / len(rows) if rows else None


def _mean_reward(rows: list[dict]) -> float | None:
    values = [row["reward"] for row in rows if row.get("reward") is not None]
    return sum(values) / len(values) if values else None


def _change(entry: dict, names: list[str]) -> dict | None:
    """The candidate (last version) against the reference (first) on one product, or None with one version."""
    if len(names) < 2:
        return None
    reference, candidate = entry["versions"][names[0]], entry["versions"][names[-1]]
    passes = [sum(bool(r.get("passed")) for r in rows) for rows in (reference, candidate)]
    rewards = [_mean_reward(rows) for rows in (reference, candidate)]
    reward_delta = None if None in rewards else rewards[1] - rewards[0]
    rates = [_pass_rate(reference), _pass_rate(candidate)]
    delta = None if None in rates else rates[1] - rates[0]
    return {
        "label": f"{names[-1]} vs {names[0]}: passes {passes[1]}/{len(candidate)} vs {passes[0]}/{len(reference)}",
        "lost": delta is not None and delta < 0,
        "won": delta is not None and delta > 0,
        "reward_delta": reward_delta,
    }


def _regression_key(entry: dict, names: list[str]) -> tuple:
    change = _change(entry, names)
    if change is None:
        return (0.0, 0.0, entry["product_id"])
    rates = [_pass_rate(entry["versions"][names[0]]), _pass_rate(entry["versions"][names[-1]])]
    delta = 0.0 if None in rates else rates[1] - rates[0]
    return (delta, change["reward_delta"] or 0.0, entry["product_id"])


def _overlay_maker(config: EvalConfig, product_ids: set[str]):
    from hfpc_eval.generators import load_products

    try:
        products, _ = load_products(config.manifest, config.generation.default_prompt)
    except (UsageError, OSError):  # the numbers do not need overlays; a missing manifest only costs pictures
        return None
    wanted = {product.product_id: product for product in products if product.product_id in product_ids}
    return OverlayMaker(config.scorer.consistency, wanted)


def _sample_view(out: Path, row: dict, overlays) -> dict:
    reasons = list(row.get("reasons") or []) + ([row["error"]] if row.get("error") else [])
    fields = [(label, value) for label, getter in SAMPLE_FIELDS if (value := getter(row)) is not None]
    return {
        "id": f"{row['version']}-{row['product_id']}-{row['k']}",
        "k": row["k"],
        "passed": bool(row.get("passed")),
        "primary_reason": primary_reason(row),
        "reasons": "; ".join(reasons),
        "fields": fields,
        **sample_pictures(out, row, overlays),
    }


def finetune_curves(config: EvalConfig) -> list[tuple[str, str]]:
    """(version name, SVG) of the mean reward per epoch of each LoRA version whose run folder (the LoRA
    folder's parent, as `hfpc finetune` writes it) holds a metrics.jsonl."""
    curves = []
    for version in config.versions:
        if version.kind != "lora":
            continue
        metrics = Path(version.path).parent / METRICS_FILE
        if not metrics.is_file():
            continue
        records = read_jsonl(metrics)
        points = [
            (r.get("epoch", i), r["reward_mean"])
            for i, r in enumerate(records)
            if r.get("reward_mean") is not None
        ]
        if points:
            curves.append((version.name, _curve_svg(points, version.name)))
    return curves


def _curve_svg(points: list[tuple[float, float]], name: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 2.4))
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, color=COLOURS[2])
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean training reward")
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig, f"curve-{name}")


def _svg(fig, salt: str) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def pass_rate_chart(results: dict, names: list[str]) -> str:
    """Horizontal bars of each version's pass rate with its bootstrap interval, as an SVG string."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [results["versions"][name]["pass_rate"] for name in names]
    fig, ax = plt.subplots(figsize=(6.4, 0.5 + 0.45 * len(names)))
    estimates = [rate["estimate"] for rate in rates]
    errors = [
        [max(0.0, r["estimate"] - r["low"]) for r in rates],
        [max(0.0, r["high"] - r["estimate"]) for r in rates],
    ]
    ax.barh(
        range(len(names)), estimates, xerr=errors, color=COLOURS[: len(names)] or None, capsize=4, height=0.6
    )
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(
        f"pass rate ({int(results['meta']['config']['stats']['confidence'] * 100)}% CI over products)"
    )
    ax.spines[["top", "right"]].set_visible(False)
    for y, rate in enumerate(rates):  # inside the bar; right of the interval when the bar is too short
        inside = rate["estimate"] >= 0.12
        x, colour = (0.01, "white") if inside else (min(rate["high"], 0.9) + 0.02, "black")
        ax.text(x, y, format_number(rate["estimate"]), va="center", fontsize=9, color=colour, weight="bold")
    return _svg(fig, "pass-rate")


def reward_histogram(samples: list[dict], names: list[str]) -> str:
    """Overlaid step histograms of the reward of each version's samples, as an SVG string."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 2.6))
    values = {
        name: [row["reward"] for row in samples if row["version"] == name and row.get("reward") is not None]
        for name in names
    }
    pooled = [value for items in values.values() for value in items]
    if pooled:
        low, high = min(pooled), max(pooled)
        bins = [low + (high - low + 1e-9) * i / 20 for i in range(21)]
        for colour, (name, items) in zip(COLOURS * 4, values.items()):
            if items:
                ax.hist(items, bins=bins, histtype="step", linewidth=1.8, color=colour, label=name)
        ax.legend(frameon=False, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no rewards", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("reward")
    ax.set_ylabel("samples")
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig, "reward-hist")


def format_number(value: Any, digits: int = 3) -> str:
    """A float for tables: fixed digits, '-' for missing/NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return str(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_p_value(value: float | None) -> str:
    """A p-value for tables: 3 decimals, '< 0.001' below that, '-' when missing."""
    if value is None or not math.isfinite(value):
        return "-"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _interval(ci: dict) -> str:
    return f"{format_number(ci['estimate'])} [{format_number(ci['low'])}, {format_number(ci['high'])}]"


def terminal_table(results: dict) -> str:
    """The compact summary printed after a run: one line per version, one per paired difference."""
    lines = [
        f"{'version':<16} {'samples':>7} {'pass rate [CI]':<26} {'reward':>7} {'bg':>7} {'cons':>6} {'drift':>6}"
    ]
    for name, summary in results["versions"].items():
        components, held_out = summary["components"], summary["held_out"]
        lines.append(
            f"{name:<16} {summary['n_samples']:>7} {_interval(summary['pass_rate']):<26} "
            f"{format_number(summary['reward']['estimate']):>7} {format_number(components.get('background_score')):>7} "
            f"{format_number(components.get('consistent'), 2):>6} {format_number(held_out.get('product_drift'), 3):>6}"
        )
    for label, diff in results["paired"].items():
        lines.append(
            f"{label}: {diff['estimate']:+.3f} [{format_number(diff['low'])}, {format_number(diff['high'])}] "
            f"p={format_number(diff['p_value'], 4)} ({diff.get('test', '-')}, {diff['n_products']} products)"
        )
    return "\n".join(lines)
