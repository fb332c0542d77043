"""The eval harness reports the mini world's oracle beside HFPC and flags reward hacking, in results.json,
report.html (side-by-side table, a visible mark, both verdicts under each image) and the terminal summary."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hfpc_eval.config import EvalConfig, StatsConfig
from hfpc_eval.report import HACKING_MARK, terminal_table
from hfpc_eval.results import write_results
from hfpc_eval.stats import summarise
from test_eval import _chromium

from hfpc_reward.config import load_config

WRONG_SCENE = "wrong scene: shows lawn, prompt asks for brick_wall"


def _rows(version: str, hfpc_passes: int, oracle_passes: int, products: int = 12, k: int = 4) -> list[dict]:
    rows = []
    for p in range(products):
        for i in range(k):
            index = p * k + i
            oracle_passed = (index * 7) % (products * k) < oracle_passes
            rows.append(
                {
                    "version": version,
                    "product_id": f"p{p:02d}",
                    "k": i,
                    "passed": index % (products * k) < hfpc_passes,
                    "reward": 0.1 * i,
                    "held_out": {
                        "oracle_passed": oracle_passed,
                        "oracle_reasons": [] if oracle_passed else [WRONG_SCENE],
                    },
                }
            )
    return rows


def test_oracle_pass_rates_and_paired_differences_land_in_the_results():
    samples = _rows("base", 12, 12) + _rows("tuned", 36, 36)
    results = summarise(samples, ["base", "tuned"], StatsConfig(n_resamples=500))
    assert results["versions"]["base"]["oracle_pass_rate"]["estimate"] == 0.25
    assert results["versions"]["tuned"]["oracle_pass_rate"]["estimate"] == 0.75
    paired = results["paired"]["tuned - base"]
    assert paired["oracle"]["estimate"] == 0.5 and paired["oracle"]["low"] > 0
    assert paired["hacking"] is False


def test_a_version_whose_hfpc_rate_rises_while_the_oracle_does_not_is_flagged():
    samples = _rows("base", 12, 24) + _rows("hacked", 40, 22)
    paired = summarise(samples, ["base", "hacked"], StatsConfig(n_resamples=500))["paired"]["hacked - base"]
    assert paired["low"] > 0 and paired["oracle"]["estimate"] <= 0
    assert paired["hacking"] is True


def test_best_of_n_by_the_reward_is_exact_over_every_subset_and_paired_against_one_sample():
    """4 samples with rewards 3 > 2 > 1 > 0; only the second best passes (both judges). The best of a random
    2-subset is the i-th with probability C(4 - i, 1) / C(4, 2) = 3/6, 2/6, 1/6, 0: it passes with 2/6."""
    from hfpc_eval.stats import best_of_n

    rows = []
    for p in range(10):
        for i, (reward, passed) in enumerate([(3.0, False), (2.0, True), (1.0, False), (0.0, False)]):
            held_out = {"oracle_passed": passed}
            rows.append(
                {"product_id": f"p{p}", "k": i, "reward": reward, "passed": passed, "held_out": held_out}
            )
    cfg = StatsConfig(n_resamples=200)
    two = best_of_n(rows, 2, cfg)
    assert two["n_products"] == 10 and two["pass_rate"]["estimate"] == pytest.approx(2 / 6)
    assert two["oracle_pass_rate"]["estimate"] == pytest.approx(2 / 6)
    assert two["oracle_pass_rate_gain"]["estimate"] == pytest.approx(2 / 6 - 1 / 4)
    assert best_of_n(rows, 4, cfg)["pass_rate"]["estimate"] == 0.0  # all four: the top one, which fails
    assert best_of_n(rows, 5, cfg) == {}  # more than a product has
    summary = summarise(
        [dict(row, version="base") for row in rows], ["base"], StatsConfig(n_resamples=200, best_of=[2, 8])
    )
    assert set(summary["versions"]["base"]["best_of"]) == {"2"}
    with pytest.raises(ValueError, match="best_of"):
        StatsConfig(best_of=[1])


def test_the_demo_summary_prints_both_judges_and_the_best_of_n_gain(tmp_path):
    from hfpc_reward.sample.annotators import demo_summary

    samples = _rows("base", 12, 12) + _rows("tuned", 36, 36)
    (tmp_path / "eval").mkdir()
    results = summarise(samples, ["base", "tuned"], StatsConfig(n_resamples=200))
    (tmp_path / "eval" / "results.json").write_text(json.dumps(results))
    lines = demo_summary(tmp_path).splitlines()
    assert lines[1].startswith("base ") and "0.250" in lines[1]
    assert any(line.startswith("base best-of-4 by HFPC") for line in lines)
    assert any("gain over one sample" in line and "oracle" in line for line in lines)
    assert lines[-1].endswith("report.html")


def test_an_undefined_oracle_difference_is_not_flagged_as_hacking():
    # HFPC rises significantly, but the oracle judged base only on p00-p05 and the candidate only on
    # p06-p11: no product is paired, so the oracle's difference is undefined, not "does not rise"
    def judged_on(rows: list[dict], products: set[str]) -> list[dict]:
        return [row if row["product_id"] in products else {**row, "held_out": {}} for row in rows]

    first, second = {f"p{p:02d}" for p in range(6)}, {f"p{p:02d}" for p in range(6, 12)}
    samples = judged_on(_rows("base", 12, 12), first) + judged_on(_rows("tuned", 40, 12), second)
    results = summarise(samples, ["base", "tuned"], StatsConfig(n_resamples=500))
    paired = results["paired"]["tuned - base"]
    assert paired["low"] > 0 and paired["oracle"]["n_products"] == 0
    assert paired["oracle"]["low"] != paired["oracle"]["low"]  # NaN: undefined
    assert paired["hacking"] is False
    assert HACKING_MARK not in terminal_table(results)


def test_without_oracle_verdicts_nothing_changes():
    samples = [{**row, "held_out": {}} for row in _rows("base", 12, 12) + _rows("tuned", 36, 36)]
    results = summarise(samples, ["base", "tuned"], StatsConfig(n_resamples=500))
    assert "oracle_pass_rate" not in results["versions"]["base"]
    assert (
        "oracle" not in results["paired"]["tuned - base"]
        and "hacking" not in results["paired"]["tuned - base"]
    )


def _report(tmp_path, samples: list[dict], names: list[str]) -> tuple[str, dict, Path]:
    """results.json and report.html of hand-made sample rows (no images: the grid shows captions only)."""
    versions = "[" + ",".join(f'{{"name": "{name}", "path": "unused"}}' for name in names) + "]"
    config = load_config(
        EvalConfig,
        None,
        [
            f"manifest={tmp_path / 'absent.jsonl'}",
            f"out_dir={tmp_path}",
            "stats.n_resamples=500",
            f"versions={versions}",
        ],
    )
    results = write_results(config, tmp_path, list(range(12)), {}, samples, 0, {})
    return (tmp_path / "report.html").read_text(), results, tmp_path / "report.html"


@pytest.fixture(scope="module")
def hacked_report(tmp_path_factory):
    return _report(
        tmp_path_factory.mktemp("hacked"), _rows("base", 12, 24) + _rows("hacked", 40, 22), ["base", "hacked"]
    )


@pytest.fixture(scope="module")
def honest_report(tmp_path_factory):
    return _report(
        tmp_path_factory.mktemp("honest"), _rows("base", 12, 12) + _rows("tuned", 36, 36), ["base", "tuned"]
    )


def test_a_hacking_version_is_marked_in_the_report_and_the_terminal(hacked_report):
    html, results, _ = hacked_report
    assert results["paired"]["hacked - base"]["hacking"] is True
    assert 'class="hacking-alert" id="hacking-hacked"' in html
    table = html[
        html.index('id="judge-vs-oracle"') : html.index("</table>", html.index('id="judge-vs-oracle"'))
    ]
    rows = re.findall(r"<tr( class=\"hacking\")?><td>.*?&nbsp;(\w+)</td>", table)
    assert rows == [("", "base"), (' class="hacking"', "hacked")]
    assert table.count(HACKING_MARK.replace("'", "&#39;")) == 1
    chart = html[html.index('id="pass-rate-chart"') : html.index('id="reward-chart"')]
    assert "hacked" in chart and "(hacking)" in chart and "oracle 0.458" in chart  # oracle bars beside HFPC's
    lines = terminal_table(results).splitlines()
    assert "oracle pass rate [CI]" in lines[0]
    assert lines[-1].startswith("hacked - base: +") and "; oracle -0.042" in lines[-1]
    assert lines[-1].endswith(HACKING_MARK)


def test_an_honest_gain_shows_both_judges_without_a_mark(honest_report):
    html, results, _ = honest_report
    assert results["paired"]["tuned - base"]["hacking"] is False
    assert "hacking" not in html[html.index("<body>") :].lower()  # no alert, row mark or chart label
    table = html[
        html.index('id="judge-vs-oracle"') : html.index("</table>", html.index('id="judge-vs-oracle"'))
    ]
    assert "0.750 [" in table and 'class="good">+0.500 [' in table  # tuned's oracle rate and paired gain
    assert "HACKING" not in terminal_table(results)


def test_the_grid_shows_the_most_different_products_first_with_both_verdicts(tmp_path):
    samples = _rows("base", 12, 12) + _rows("tuned", 36, 36)
    for row in samples:  # p05: the oracle fails all of base's samples and passes all of tuned's
        if row["product_id"] == "p05":
            row["held_out"] = {"oracle_passed": row["version"] == "tuned", "oracle_reasons": []}
            if row["version"] == "base":
                row["held_out"]["oracle_reasons"] = [WRONG_SCENE]
    html, _, _ = _report(tmp_path, samples, ["base", "tuned"])
    shown = re.findall(r"<b>(p\d\d)</b>", html)
    oracle = {}
    for row in samples:
        oracle.setdefault(row["product_id"], {}).setdefault(row["version"], []).append(
            row["held_out"]["oracle_passed"]
        )
    gap = {p: abs(sum(v["tuned"]) - sum(v["base"])) / 4 for p, v in oracle.items()}
    assert shown[0] == "p05" and gap["p05"] == 1.0
    assert [gap[p] for p in shown] == sorted(gap.values(), reverse=True)
    assert "most different first: by how far apart the versions&#39; oracle pass rates" in html
    # every caption carries both verdicts: HFPC's badge and the oracle's, with the oracle's reason
    oracle_fails = sum(not row["held_out"]["oracle_passed"] for row in samples)
    assert html.count('class="badge ') == html.count('class="oracle-badge ') == len(samples)
    assert html.count('class="oracle-badge fail"') == oracle_fails
    assert html.count(f'<span class="oracle-reason">{WRONG_SCENE}</span>') == oracle_fails


def test_the_report_with_an_oracle_renders_cleanly_in_a_headless_browser(hacked_report):
    from hfpc_eval.browser import check_page

    _, _, page = hacked_report
    check, console = check_page(page, _chromium())
    assert check["errors"] == [] and console == [], (check["errors"], console)
    assert check["products"] == 12 and check["badges"] == 2 * 12 * 4 and check["summaryRows"] == 3
    assert check["passChart"]["width"] > 200 and check["passChart"]["marks"] > 5
