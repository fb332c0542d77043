"""The eval harness reports the mini world's oracle beside HFPC and flags reward hacking."""

from __future__ import annotations

from hfpc_eval.config import StatsConfig
from hfpc_eval.stats import summarise


def _rows(version: str, hfpc_passes: int, oracle_passes: int, products: int = 12, k: int = 4) -> list[dict]:
    rows = []
    for p in range(products):
        for i in range(k):
            index = p * k + i
            rows.append(
                {
                    "version": version,
                    "product_id": f"p{p}",
                    "k": i,
                    "passed": index % (products * k) < hfpc_passes,
                    "held_out": {"oracle_passed": (index * 7) % (products * k) < oracle_passes},
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


def test_without_oracle_verdicts_nothing_changes():
    samples = [{**row, "held_out": {}} for row in _rows("base", 12, 12) + _rows("tuned", 36, 36)]
    results = summarise(samples, ["base", "tuned"], StatsConfig(n_resamples=500))
    assert "oracle_pass_rate" not in results["versions"]["base"]
    assert (
        "oracle" not in results["paired"]["tuned - base"]
        and "hacking" not in results["paired"]["tuned - base"]
    )
