"""report.html (one self-contained file that opens anywhere), charts, and the compact terminal tables.

The page is rendered by Jinja2 from `templates/report.html.j2` out of plain data, so a new number is one
entry in a table, not a template rewrite:
- `VERSION_COLUMNS`: (header, function(version summary) -> cell text) of the per-version table;
- `SAMPLE_FIELDS`: (label, function(sample row) -> text or None) shown under each image;
- products come most different first (`grid_order_text`, `_difference`): by how far apart the versions' pass rates on the
  product lie (the oracle's when the run has one, else HFPC's), regressions (the last version below the
  first) before gains at an equal difference, then by HFPC pass rate, mean reward, product id;
- with the mini world's oracle (`held_out.oracle`), the training judge and the oracle stand side by side
  per version, and a version whose HFPC pass rate rises while the oracle's does not (`hacking` in the
  paired results) is marked in the tables, the pass-rate chart and the terminal summary.
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
from hfpc_eval.stats import oracle_verdicts
from markupsafe import Markup

from hfpc_reward.data.manifest import read_jsonl
from hfpc_reward.data.results import failure_kinds
from hfpc_reward.errors import UsageError

TEMPLATE_DIR = Path(__file__).parent / "templates"
COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
METRICS_FILE = "metrics.jsonl"  # per-epoch records of an `hfpc finetune` run folder
REPORT_NAME = "report.html"
HACKING_MARK = "HACKING: HFPC pass rate rises, the oracle's does not"  # a flagged version, page and terminal


def _interval_cell(ci: dict | None, signed: bool = False, digits: int = 2) -> str:
    """An estimate with its interval, "0.250 [0.04, 0.50]" (`digits`: of the bounds); '-' when missing."""
    if not ci:
        return "-"
    estimate = ci.get("estimate")
    head = format_number(estimate, 3, signed)
    return f"{head} [{format_number(ci.get('low'), digits)}, {format_number(ci.get('high'), digits)}]"


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
    oracle = bool(oracle_verdicts(samples))
    env = Environment(loader=FileSystemLoader(TEMPLATE_DIR), autoescape=True, undefined=StrictUndefined)
    env.filters["num"] = format_number
    env.filters["pvalue"] = format_p_value
    html = env.get_template("report.html.j2").render(
        title=config.report.title,
        meta=results["meta"],
        judge=results["meta"].get("judge") or {},
        versions=names,
        version_table=_version_table(results, config),
        judge_vs_oracle=judge_vs_oracle(results, names),
        hacking=hacking_versions(results),
        hacking_mark=HACKING_MARK,
        paired=results["paired"],
        categories=results["categories"],
        reasons=results["failure_reasons"],
        held_out_names=sorted({name for v in results["versions"].values() for name in v["held_out"]}),
        component_names=sorted({name for v in results["versions"].values() for name in v["components"]}),
        summary=results["versions"],
        pass_chart=Markup(pass_rate_chart(results, names)),
        reward_chart=Markup(reward_histogram(samples, names)),
        curves=[(name, Markup(svg)) for name, svg in finetune_curves(config)],
        grid_order=grid_order_text(names, oracle),
        products=_products(out, samples, names, config, oracle),
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


def hacking_versions(results: dict) -> list[str]:
    """The versions whose paired results carry the `hacking` flag (HFPC rises, the oracle does not)."""
    return [diff["candidate"] for diff in results["paired"].values() if diff.get("hacking")]


def judge_vs_oracle(results: dict, names: list[str]) -> list[dict] | None:
    """Per version: the HFPC and the oracle pass rate with intervals, both paired differences against the
    reference (the first version) and the hacking flag; None when the run has no oracle verdicts."""
    summaries = results["versions"]
    if not any("oracle_pass_rate" in summaries[name] for name in names):
        return None
    paired = {diff["candidate"]: diff for diff in results["paired"].values()}
    rows = []
    for name in names:
        diff = paired.get(name)
        rows.append(
            {
                "name": name,
                "hfpc": _interval_cell(summaries[name]["pass_rate"]),
                "oracle": _interval_cell(summaries[name].get("oracle_pass_rate")),
                "hfpc_delta": _paired_cell(diff),
                "oracle_delta": _paired_cell(diff.get("oracle") if diff else None),
                "hacking": bool(diff and diff.get("hacking")),
            }
        )
    return rows


def _paired_cell(diff: dict | None) -> dict | None:
    """A paired difference as {text, trend}: trend "good"/"bad" when its interval excludes 0."""
    if not diff:
        return None
    trend = "good" if diff["low"] > 0 else ("bad" if diff["high"] < 0 else "")
    return {
        "text": f"{_interval_cell(diff, signed=True)}, p {format_p_value(diff['p_value'])}",
        "trend": trend,
    }


def _products(
    out: Path, samples: list[dict], names: list[str], config: EvalConfig, oracle: bool
) -> list[dict]:
    """Products (at most report.max_products) in `grid_order_text` order, each version's samples in k order."""
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
    for entry in products.values():
        entry["change"], entry["order"] = _difference(entry, names, oracle)
    shown = sorted(products.values(), key=lambda entry: entry.pop("order"))[: config.report.max_products]
    overlays = _overlay_maker(config, {entry["product_id"] for entry in shown})
    for entry in shown:
        entry["original"] = file_uri(out, entry.pop("original_thumb"))
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


# what the grid order compares between versions, per product: (name, function(version's rows) -> value)
ORACLE_MEASURE = ("oracle pass rate", lambda rows: _pass_rate(oracle_verdicts(rows)))
JUDGE_MEASURES = [("HFPC pass rate", _pass_rate), ("mean reward", _mean_reward)]


def grid_order_text(names: list[str], oracle: bool) -> str:
    """The order of the image grid, in words (shown above it); `_difference` implements it."""
    if len(names) < 2:
        return "by product id"
    measures = [name for name, _ in ([ORACLE_MEASURE] if oracle else []) + JUDGE_MEASURES]
    return (
        f"most different first: by how far apart the versions' {measures[0]}s on the product lie (largest "
        f"first); at an equal difference, regressions ({names[-1]} below {names[0]}) before gains, then by the "
        f"difference in {' and '.join(measures[1:])}, then product id"
    )


def _difference(entry: dict, names: list[str], oracle: bool) -> tuple[dict | None, tuple]:
    """How the versions differ on one product: the change shown beside it (the last version against the
    first; None with one version) and its sort key in the grid (see `grid_order_text`)."""
    measures = ([ORACLE_MEASURE] if oracle else []) + JUDGE_MEASURES
    values = [[measure(entry["versions"][name]) for name in names] for _, measure in measures]
    spreads = [_spread(items) for items in values]
    first, last = values[0][0], values[0][-1]
    delta = None if len(names) < 2 or first is None or last is None else last - first
    lost = delta is not None and delta < 0
    order = (-spreads[0], not lost, *(-s for s in spreads[1:]), entry["product_id"])
    if len(names) < 2:
        return None, order
    reference, candidate = entry["versions"][names[0]], entry["versions"][names[-1]]
    counts = [f"HFPC passes {_passes(candidate)} vs {_passes(reference)}"]
    if oracle:
        counts.append(
            f"oracle {_passes(oracle_verdicts(candidate))} vs {_passes(oracle_verdicts(reference))}"
        )
    rewards = values[-1]
    change = {
        "label": f"{names[-1]} vs {names[0]}: " + "; ".join(counts),
        "lost": lost,
        "won": delta is not None and delta > 0,
        "reward_delta": None if rewards[0] is None or rewards[-1] is None else rewards[-1] - rewards[0],
    }
    return change, order


def _spread(values: list[float | None]) -> float:
    present = [value for value in values if value is not None]
    return max(present) - min(present) if len(present) > 1 else 0.0


def _passes(rows: list[dict]) -> str:
    return f"{sum(bool(row.get('passed')) for row in rows)}/{len(rows)}"


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
        "oracle": _oracle_view(row),
        **sample_pictures(out, row, overlays),
    }


def _oracle_view(row: dict) -> dict | None:
    """The oracle's verdict on a sample: {passed, reason (its first, None on a pass)}; None when not judged."""
    held_out = row.get("held_out") or {}
    if held_out.get("oracle_passed") is None:
        return None
    reasons = held_out.get("oracle_reasons") or []
    return {"passed": bool(held_out["oracle_passed"]), "reason": reasons[0] if reasons else None}


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
    """Horizontal bars of each version's pass rate with its bootstrap interval, as an SVG string; with an
    oracle, its pass rate as a hatched bar under HFPC's, and a version flagged as hacking labelled so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = [results["versions"][name] for name in names]
    series = [("HFPC", [s["pass_rate"] for s in summaries], {})]
    if any("oracle_pass_rate" in s for s in summaries):
        series.append(
            ("oracle", [s.get("oracle_pass_rate") for s in summaries], {"hatch": "///", "alpha": 0.55})
        )
    height = 0.7 / len(series)
    fig, ax = plt.subplots(figsize=(6.4, 0.5 + 0.45 * len(series) * len(names)))
    for index, (label, rates, style) in enumerate(series):
        ys = [y + (index - (len(series) - 1) / 2) * height for y in range(len(names))]
        shown = [(y, rate, colour) for y, rate, colour in zip(ys, rates, COLOURS * 4) if rate]
        ax.barh(
            [y for y, _, _ in shown],
            [rate["estimate"] for _, rate, _ in shown],
            xerr=[
                [max(0.0, rate["estimate"] - rate["low"]) for _, rate, _ in shown],
                [max(0.0, rate["high"] - rate["estimate"]) for _, rate, _ in shown],
            ],
            color=[colour for _, _, colour in shown] or None,
            capsize=3,
            height=height * 0.9,
            edgecolor="black" if style else None,
            **style,
        )
        for y, rate, _ in shown:  # inside the bar; right of the interval when the bar is too short
            inside = rate["estimate"] >= (0.25 if len(series) > 1 else 0.12)
            x = 0.01 if inside else min(rate["high"], 0.8) + 0.02
            colour = "white" if inside and not style else "black"
            box = {"facecolor": "white", "edgecolor": "none", "pad": 1} if inside and style else None
            text = (
                f"{label} {format_number(rate['estimate'])}"
                if len(series) > 1
                else format_number(rate["estimate"])
            )
            ax.text(x, y, text, va="center", fontsize=8, color=colour, weight="bold", bbox=box)
    hacking = set(hacking_versions(results))
    ax.set_yticks(range(len(names)), [f"{name}\n(hacking)" if name in hacking else name for name in names])
    for tick, name in zip(ax.get_yticklabels(), names):
        if name in hacking:
            tick.set_color("#c62828")
            tick.set_fontweight("bold")
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(
        f"pass rate ({int(results['meta']['config']['stats']['confidence'] * 100)}% CI over products)"
    )
    ax.spines[["top", "right"]].set_visible(False)
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


def format_number(value: Any, digits: int = 3, signed: bool = False) -> str:
    """A float for tables: fixed digits (`signed`: with its sign, for differences), '-' for missing/NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return str(value)
    return f"{value:{'+' if signed else ''}.{digits}f}" if isinstance(value, float) else str(value)


def format_p_value(value: float | None) -> str:
    """A p-value for tables: 3 decimals, '< 0.001' below that, '-' when missing."""
    if value is None or not math.isfinite(value):
        return "-"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def terminal_table(results: dict) -> str:
    """The compact summary printed after a run: one line per version (with the oracle's pass rate when the
    run has one), one per paired difference (the oracle's beside it, and HACKING_MARK on a flagged one)."""
    oracle = any("oracle_pass_rate" in summary for summary in results["versions"].values())
    judge_header = "HFPC pass rate [CI]" if oracle else "pass rate [CI]"
    oracle_header = f" {'oracle pass rate [CI]':<26}" if oracle else ""
    lines = [
        f"{'version':<16} {'samples':>7} {judge_header:<26}{oracle_header} {'reward':>7} {'bg':>7} {'cons':>6} {'drift':>6}"
    ]
    for name, summary in results["versions"].items():
        components, held_out = summary["components"], summary["held_out"]
        oracle_cell = f" {_interval_cell(summary.get('oracle_pass_rate'), digits=3):<26}" if oracle else ""
        lines.append(
            f"{name:<16} {summary['n_samples']:>7} {_interval_cell(summary['pass_rate'], digits=3):<26}{oracle_cell} "
            f"{format_number(summary['reward']['estimate']):>7} {format_number(components.get('background_score')):>7} "
            f"{format_number(components.get('consistent'), 2):>6} {format_number(held_out.get('product_drift'), 3):>6}"
        )
    for label, diff in results["paired"].items():
        line = f"{label}: {_paired_text(diff)} ({diff.get('test', '-')}, {diff['n_products']} products)"
        if diff.get("oracle"):
            line += f"; oracle {_paired_text(diff['oracle'])}"
        lines.append(line + (f"  <- {HACKING_MARK}" if diff.get("hacking") else ""))
    return "\n".join(lines)


def _paired_text(diff: dict) -> str:
    return f"{_interval_cell(diff, signed=True, digits=3)} p={format_number(diff['p_value'], 4)}"
