"""report.html: one self-contained file, most different products first, the judge's identity, overlays,
fine-tune curves."""

import json
import re

import pytest
from hfpc_eval.harness import run_eval
from hfpc_eval.samples import latest_samples
from test_eval import DummyGenerator, DummyScorer, K, _config, product_manifest  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def worse_candidate_run(product_manifest, tmp_path_factory):  # noqa: F811
    """base passes 70% of samples, the LoRA candidate 30%: most products regress; the LoRA has a run folder."""
    root = tmp_path_factory.mktemp("report")
    run_folder = root / "finetune_run"
    (run_folder / "lora").mkdir(parents=True)
    records = [{"epoch": epoch, "reward_mean": 0.1 * epoch} for epoch in range(5)]
    (run_folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    versions = [
        {"name": "base", "path": "unused-base"},
        {"name": "lora", "kind": "lora", "path": str(run_folder / "lora"), "base": "unused-base"},
    ]
    out = root / "run"
    generators = {"base": DummyGenerator(0.7), "lora": DummyGenerator(0.3)}
    config = _config(product_manifest, out, versions, **{"report.max_products": 12})
    results = run_eval(config, generators=generators, scorer=DummyScorer())
    return (out / "report.html").read_text(), results, out


def test_the_report_is_one_file_with_every_picture_embedded(worse_candidate_run):
    html, _, _ = worse_candidate_run
    sources = re.findall(r'src="([^"]+)"', html)
    assert sources and all(source.startswith("data:image/") for source in sources)
    assert html.count('class="lightbox"') == 12 * 2 * K  # every thumbnail clicks through
    assert html.count('alt="full image"') == 12 * 2 * K
    assert html.count('alt="consistency overlay"') == 12 * 2 * K


def test_most_different_products_come_first_regressions_before_gains(worse_candidate_run):
    html, _, out = worse_candidate_run
    passes = {}  # product -> version -> passes
    for row in latest_samples(out / "samples.jsonl"):
        versions = passes.setdefault(row["product_id"], {"base": 0, "lora": 0})
        versions[row["version"]] += bool(row["passed"])
    products = re.findall(r'<div class="product( regression)?">.*?<b>(\w+)</b>', html, re.DOTALL)
    order = [
        (abs(passes[p]["lora"] - passes[p]["base"]), passes[p]["lora"] < passes[p]["base"])
        for _, p in products
    ]
    assert order == sorted(order, reverse=True)  # largest difference first; at a tie, regressions first
    assert [bool(flag) for flag, _ in products] == [lost for _, lost in order]
    assert len({gap for gap, _ in order}) > 1 and any(lost for _, lost in order)
    assert (
        "Products are ordered most different first: by how far apart the versions&#39; HFPC pass rates"
        in html
    )


def test_each_failure_has_one_primary_reason(worse_candidate_run):
    html, _, _ = worse_candidate_run
    failed = len(re.findall(r'class="badge fail"', html))
    assert failed > 0 and html.count('<span class="primary">') == failed


def test_the_judge_and_the_finetune_curve_are_shown(worse_candidate_run):
    html, results, _ = worse_candidate_run
    judge = results["meta"]["judge"]
    assert judge["scorer_hash"] and judge["scorer_hash"] in html and 'id="judge"' in html
    assert "Fine-tuning curve: lora" in html and html.count("<svg") >= 3
