"""report.html (self-contained, opens from disk), charts, and the compact terminal tables.

The page is rendered by Jinja2 from `templates/report.html.j2`. Charts are matplotlib SVGs inlined in the
page; thumbnails are JPEGs under the run's `thumbs/` folder, referenced by relative paths, so the output
folder can be moved or zipped as a whole.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from hfpc_eval.config import EvalConfig
from hfpc_eval.stats import reason_kind
from markupsafe import Markup

TEMPLATE_DIR = Path(__file__).parent / "templates"
COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def write_report(out: Path, results: dict, samples: list[dict], config: EvalConfig) -> Path:
    """Render report.html into `out` from the results and sample rows; returns its path."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    names = [version.name for version in config.versions]
    env = Environment(loader=FileSystemLoader(TEMPLATE_DIR), autoescape=True, undefined=StrictUndefined)
    env.filters["num"] = format_number
    env.filters["pvalue"] = format_p_value
    env.filters["reason_kind"] = reason_kind
    html = env.get_template("report.html.j2").render(
        title=config.report.title,
        meta=results["meta"],
        versions=names,
        summary=results["versions"],
        paired=results["paired"],
        categories=results["categories"],
        reasons=results["failure_reasons"],
        held_out_names=sorted({name for v in results["versions"].values() for name in v["held_out"]}),
        component_names=sorted({name for v in results["versions"].values() for name in v["components"]}),
        pass_chart=Markup(pass_rate_chart(results, names)),
        reward_chart=Markup(reward_histogram(samples, names)),
        grid=_grid(samples, names, config),
        colours=dict(zip(names, COLOURS * (1 + len(names) // len(COLOURS)))),
    )
    path = out / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


def _grid(samples: list[dict], names: list[str], config: EvalConfig) -> list[dict]:
    """Products (at most report.max_products) with each version's samples in k order."""
    products: dict[str, dict] = {}
    for row in sorted(samples, key=lambda row: (row["product_id"], row["k"])):
        entry = products.setdefault(
            row["product_id"],
            {
                "product_id": row["product_id"],
                "category": row.get("category") or "",
                "prompt": row.get("prompt") or "",
                "original": f"thumbs/originals/{row['product_id']}.jpg",
                "versions": {name: [] for name in names},
            },
        )
        if row["version"] in entry["versions"]:
            entry["versions"][row["version"]].append(row)
    return list(products.values())[: config.report.max_products]


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
