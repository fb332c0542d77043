"""Eval harness mechanics with a dummy generator whose pass probabilities are known, judged deterministically.

The dummy generator paints the background green (a pass) with probability p_version, decided by a uniform
draw from the sample's seed, else red (a fail); the dummy judge passes green backgrounds. So the exact
pass count of every version is computable from the seeds alone, independently of the harness.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from hfpc_eval.compare import compare_runs, comparison_table
from hfpc_eval.config import EvalConfig, VersionConfig
from hfpc_eval.generators import FolderGenerator, sample_seed
from hfpc_eval.harness import run_eval
from hfpc_eval.report import terminal_table
from hfpc_eval.samples import latest_samples
from hfpc_eval.stats import paired_difference
from PIL import Image

from hfpc_reward.config import ConfigError, load_config
from hfpc_reward.consistency.verdict import ConsistencyReport
from hfpc_reward.errors import UsageError
from hfpc_reward.runs import OutputExistsError, ResumeMismatchError
from hfpc_reward.scorer import HFPCResult

N_PRODUCTS, K = 30, 4
TRUE_RATES = {"base": 0.3, "tuned": 0.7}
GREEN, RED = (40, 200, 60), (200, 40, 40)


def _passes(seed: int, rate: float) -> bool:
    return np.random.default_rng(seed).random() < rate


class DummyGenerator:
    """Background green with probability `rate` (a draw from the sample's seed), else red; product kept."""

    def __init__(self, rate: float, interrupt_after: int | None = None):
        self.rate, self.interrupt_after = rate, interrupt_after
        self.calls: list[tuple[str, int, int]] = []  # (product_id, k, seed) of every generated sample

    def generate(self, product, ks, seeds):
        if self.interrupt_after is not None and len(self.calls) >= self.interrupt_after:
            raise KeyboardInterrupt  # what a Ctrl-C / killed job looks like to the harness
        self.calls.extend((product.product_id, k, seed) for k, seed in zip(ks, seeds))
        images = []
        for seed in seeds:
            colour = GREEN if _passes(seed, self.rate) else RED
            background = Image.new("RGB", product.image.size, colour)
            images.append(Image.composite(product.image, background, Image.fromarray(product.mask)))
        return images


class DummyScorer:
    """Pass when the background (outside the product mask) is green; reward = green - red, in [-1, 1]."""

    def score(self, originals, generated, masks=None, prompts=None, categories=None):
        results = []
        for image, mask in zip(generated, masks):
            pixels = np.asarray(image, dtype=float)[~mask] / 255.0
            green = pixels[:, 1].mean() > pixels[:, 0].mean()
            report = ConsistencyReport(consistent=True, score=1.0, metrics={"iou": 1.0}, reasons=[])
            results.append(
                HFPCResult(
                    background_score=float(pixels[:, 1].mean() - pixels[:, 0].mean()),
                    consistency=report,
                    passed=bool(green),
                    reward=float(pixels[:, 1].mean() - pixels[:, 0].mean()),
                    reasons=[] if green else ["background below threshold (score -0.62 < 0.00)"],
                )
            )
        return results


@pytest.fixture(scope="module")
def product_manifest(tmp_path_factory) -> Path:
    """30 products: a grey square on white, with its mask; three categories."""
    folder = tmp_path_factory.mktemp("products")
    rows = []
    for i in range(N_PRODUCTS):
        image = Image.new("RGB", (48, 40), "white")
        mask = Image.new("L", (48, 40), 0)
        box = (10 + i % 5, 8, 30 + i % 5, 30)
        image.paste((90 + i, 90, 120), box)
        mask.paste(255, box)
        image.save(folder / f"p{i:02d}.png")
        mask.save(folder / f"p{i:02d}_mask.png")
        rows.append(
            {
                "origin": f"p{i:02d}.png",
                "mask": f"p{i:02d}_mask.png",
                "product_id": f"p{i:02d}",
                "category": ("bottle", "shoe", "bag")[i % 3],
                "prompt": "on a wooden table",
            }
        )
    manifest = folder / "products.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


def _config(manifest: Path, out: Path, versions=None, **overrides) -> EvalConfig:
    versions = versions or [
        {"name": "base", "path": "unused-base"},
        {"name": "tuned", "path": "unused-tuned"},
    ]
    items = [
        f"manifest={manifest}",
        f"out_dir={out}",
        f"generation.samples_per_product={K}",
        "stats.n_resamples=500",
        *[f"{key}={value}" for key, value in overrides.items()],
    ]
    config = load_config(EvalConfig, None, items + [f"versions={json.dumps(versions)}"])
    return config


def _expected_passes(rate: float) -> int:
    return sum(_passes(sample_seed(0, f"p{i:02d}", k), rate) for i in range(N_PRODUCTS) for k in range(K))


@pytest.fixture(scope="module")
def dummy_run(product_manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    generators = {name: DummyGenerator(rate) for name, rate in TRUE_RATES.items()}
    results = run_eval(_config(product_manifest, out), generators=generators, scorer=DummyScorer())
    return out, results, generators


def test_pass_rates_are_exact_and_intervals_cover_the_truth(dummy_run):
    _, results, _ = dummy_run
    for name, rate in TRUE_RATES.items():
        summary = results["versions"][name]
        assert summary["n_samples"] == N_PRODUCTS * K and summary["n_products"] == N_PRODUCTS
        assert summary["pass_rate"]["estimate"] == pytest.approx(_expected_passes(rate) / (N_PRODUCTS * K))
        assert summary["pass_rate"]["low"] <= rate <= summary["pass_rate"]["high"]
        assert summary["pass_rate"]["high"] - summary["pass_rate"]["low"] < 0.35
    diff = results["paired"]["tuned - base"]
    assert diff["low"] <= TRUE_RATES["tuned"] - TRUE_RATES["base"] <= diff["high"]
    assert diff["low"] > 0 and diff["p_value"] < 0.01 and diff["n_products"] == N_PRODUCTS
    base_fail = results["failure_reasons"]["base"]
    assert base_fail["kinds"]["background"]["count"] == N_PRODUCTS * K - _expected_passes(0.3)
    assert set(results["categories"]["base"]) == {"bag", "bottle", "shoe"}


def test_seeds_are_shared_across_versions_and_differ_across_samples(dummy_run):
    _, _, generators = dummy_run
    base, tuned = (sorted(generators[name].calls) for name in ("base", "tuned"))
    assert base == tuned and len(base) == N_PRODUCTS * K
    assert len({seed for _, _, seed in base}) == N_PRODUCTS * K


def test_outputs_are_stamped_and_every_sample_has_a_row(dummy_run):
    out, results, _ = dummy_run
    stamped = json.loads(
        (out / "results.json").read_text(), parse_constant=pytest.fail
    )  # strict JSON: no NaN
    meta = stamped["meta"]
    assert meta["config"]["generation"]["samples_per_product"] == K and meta["packages"]["numpy"]
    assert meta["date"] and meta["counts"]["samples"] == {"base": N_PRODUCTS * K, "tuned": N_PRODUCTS * K}
    assert (out / "config.resolved.yaml").is_file()
    rows = latest_samples(out / "samples.jsonl")
    assert len(rows) == 2 * N_PRODUCTS * K
    row = rows[0]
    assert (out / row["image"]).is_file() and (out / row["thumb"]).is_file()
    assert {"passed", "reward", "background_score", "consistent", "held_out", "seed"} <= set(row)
    assert row["held_out"]["product_drift"] == pytest.approx(0.0)  # the dummy keeps the product exactly
    assert row["pasted"] is True  # pipeline versions get the product pasted back by default
    table = terminal_table(results)
    assert "tuned - base: +" in table and "base" in table.splitlines()[1]


def test_interrupted_run_resumes_without_regenerating(product_manifest, dummy_run, tmp_path):
    _, reference, _ = dummy_run
    config = _config(product_manifest, tmp_path)
    first = {"base": DummyGenerator(0.3), "tuned": DummyGenerator(0.7, interrupt_after=10 * K)}
    with pytest.raises(KeyboardInterrupt):
        run_eval(config, generators=first, scorer=DummyScorer())
    assert len(latest_samples(tmp_path / "samples.jsonl")) == N_PRODUCTS * K + 10 * K
    second = {name: DummyGenerator(rate) for name, rate in TRUE_RATES.items()}
    results = run_eval(config, generators=second, scorer=DummyScorer(), resume=True)
    assert second["base"].calls == []
    assert len(second["tuned"].calls) == (N_PRODUCTS - 10) * K
    assert not {c[:2] for c in second["tuned"].calls} & {c[:2] for c in first["tuned"].calls}
    for key in ("versions", "paired", "categories", "failure_reasons"):
        assert results[key] == reference[key]


def test_resume_refuses_samples_made_with_other_settings(product_manifest, dummy_run):
    out, _, _ = dummy_run
    config = _config(product_manifest, out, **{"generation.seed": 7})
    generators = {n: DummyGenerator(r) for n, r in TRUE_RATES.items()}
    with pytest.raises(ResumeMismatchError, match=r"generation\.seed \(0 -> 7\)"):
        run_eval(config, generators=generators, scorer=DummyScorer(), resume=True)
    with pytest.raises(OutputExistsError, match="--resume"):  # a fresh run never writes over an old one
        run_eval(_config(product_manifest, out), generators=generators, scorer=DummyScorer())
    assert generators["base"].calls == []


def test_resume_refuses_a_manifest_edited_in_place(product_manifest, tmp_path):
    """Same manifest path, another prompt for one product: resuming would mix samples of two product sets."""
    manifest = tmp_path / "products.jsonl"
    for name in ("p00.png", "p00_mask.png"):
        (tmp_path / name).write_bytes((product_manifest.parent / name).read_bytes())
    manifest.write_text(product_manifest.read_text().splitlines()[0] + "\n")
    generators = {n: DummyGenerator(r) for n, r in TRUE_RATES.items()}
    run_eval(_config(manifest, tmp_path / "out"), generators=generators, scorer=DummyScorer())
    manifest.write_text(manifest.read_text().replace("on a wooden table", "on a beach"))
    with pytest.raises(ResumeMismatchError, match=r"input_sha256\.manifest"):
        run_eval(
            _config(manifest, tmp_path / "out"), generators=generators, scorer=DummyScorer(), resume=True
        )


def test_resume_refuses_a_version_redefined_under_its_old_name(product_manifest, tmp_path):
    """Versions may be added or dropped on resume (each version's rows carry its own settings hash), but a
    version whose definition changed under the same name is refused: its old rows came from another model."""
    versions = [{"name": "base", "path": "unused-base"}]
    run_eval(
        _config(product_manifest, tmp_path, versions),
        generators={"base": DummyGenerator(0.3)},
        scorer=DummyScorer(),
    )
    more = [*versions, {"name": "tuned", "path": "unused-tuned"}]
    added = {"base": DummyGenerator(0.3), "tuned": DummyGenerator(0.7)}
    results = run_eval(
        _config(product_manifest, tmp_path, more), generators=added, scorer=DummyScorer(), resume=True
    )
    assert added["base"].calls == [] and len(added["tuned"].calls) == N_PRODUCTS * K
    assert results["versions"]["tuned"]["n_samples"] == N_PRODUCTS * K
    renamed = [{"name": "base", "path": "another-model"}, more[1]]
    with pytest.raises(ResumeMismatchError, match="version 'base' made with another definition"):
        run_eval(
            _config(product_manifest, tmp_path, renamed), generators={}, scorer=DummyScorer(), resume=True
        )


def test_folder_version_matches_images_by_name(product_manifest, tmp_path):
    """Images made elsewhere, named {product_id}_{k}.png: product 0..9 green, the rest red; k=3 missing."""
    folder = tmp_path / "external"
    folder.mkdir()
    for i in range(N_PRODUCTS):
        for k in range(K - 1):
            original = Image.open(product_manifest.parent / f"p{i:02d}.png").convert("RGB")
            mask = Image.open(product_manifest.parent / f"p{i:02d}_mask.png")
            Image.composite(original, Image.new("RGB", original.size, GREEN if i < 10 else RED), mask).save(
                folder / f"p{i:02d}_{k}.png"
            )
    versions = [{"name": "external", "kind": "folder", "path": str(folder)}]
    results = run_eval(_config(product_manifest, tmp_path / "out", versions), scorer=DummyScorer())
    summary = results["versions"]["external"]
    assert summary["n_samples"] == N_PRODUCTS * K and summary["n_errors"] == N_PRODUCTS
    assert summary["pass_rate"]["estimate"] == pytest.approx(10 * (K - 1) / (N_PRODUCTS * K))
    assert results["failure_reasons"]["external"]["kinds"]["error"]["count"] == N_PRODUCTS
    rows = latest_samples(tmp_path / "out" / "samples.jsonl")
    assert all(row["pasted"] is False for row in rows if row["k"] < K - 1)  # judged as delivered
    missing = [row for row in rows if row["k"] == K - 1]
    assert all("p" in row["error"] and "_3.png" in row["error"] for row in missing)


def test_folder_version_by_manifest_and_clear_errors(tmp_path):
    image_path = tmp_path / "gen.png"
    Image.new("RGB", (8, 8), GREEN).save(image_path)
    rows = [
        {"product_id": "a", "generation": "gen.png"},
        {"product_id": "b", "generation": "x.png"},
        {"product_id": "a", "generation": str(image_path)},
        {"product_id": "b", "k": 5, "generation": "y.png"},
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    generator = FolderGenerator(manifest=str(tmp_path / "m.jsonl"))
    assert generator.path_of("a", 0) == generator.path_of("a", 1) == str(image_path)  # no "k": file order
    assert generator.path_of("b", 5) == str(tmp_path / "y.png")
    with pytest.raises(FileNotFoundError, match="no row for product 'a', k=2"):
        generator.path_of("a", 2)
    with pytest.raises(UsageError, match="does not exist"):
        FolderGenerator(str(tmp_path / "nope"))


def test_a_bad_folder_version_manifest_row_is_named_by_its_line_in_the_file(tmp_path):
    manifest = tmp_path / "m.jsonl"
    good = json.dumps({"product_id": "a", "generation": "a.png"})
    for lines, problem in (
        ([good, "", "", json.dumps({"product_id": "b"})], "rows need 'product_id' and 'generation'"),
        ([good, "", json.dumps({"product_id": "b", "generation": "b.png", "k": "two"})], "'k' must be"),
        (["", good, "{not json"], "not valid JSON"),
    ):
        manifest.write_text("\n".join(lines) + "\n")
        with pytest.raises(UsageError, match=problem) as caught:
            FolderGenerator(manifest=str(manifest))
        assert f"m.jsonl:{len(lines)}:" in str(caught.value)  # the bad row is always the file's last line


def test_compare_two_runs(dummy_run, product_manifest, tmp_path):
    out, _, _ = dummy_run
    generators = {"base": DummyGenerator(0.3), "tuned": DummyGenerator(0.3)}
    run_eval(_config(product_manifest, tmp_path), generators=generators, scorer=DummyScorer())
    comparison = compare_runs(tmp_path / "results.json", out / "results.json")
    by_name = {item["a"]: item["difference"] for item in comparison["comparisons"]}
    assert by_name["base"]["estimate"] == 0.0 and by_name["base"]["p_value"] == 1.0
    assert by_name["tuned"]["low"] > 0 and by_name["tuned"]["p_value"] < 0.01
    assert "tuned" in comparison_table(comparison)


def test_compare_uses_only_the_samples_each_results_json_summarises(product_manifest, tmp_path):
    """A run extended to K=4 and reported again at K=1 keeps k=1..3 in samples.jsonl; compared with a K=1
    run of the same generator and seeds, the difference is exactly 0, as the two pass rates say."""
    one = {"generation.samples_per_product": 1}
    extended, single = tmp_path / "extended", tmp_path / "single"
    generators = {name: DummyGenerator(rate) for name, rate in TRUE_RATES.items()}
    run_eval(_config(product_manifest, extended), generators=generators, scorer=DummyScorer())
    run_eval(_config(product_manifest, extended, **one), generators={}, scorer=DummyScorer(), resume=True)
    run_eval(_config(product_manifest, single, **one), generators=generators, scorer=DummyScorer())
    comparison = compare_runs(extended / "results.json", single / "results.json")
    for item in comparison["comparisons"]:
        assert item["a_pass_rate"]["estimate"] == item["b_pass_rate"]["estimate"]
        assert item["difference"]["estimate"] == 0.0 and item["difference"]["n_products"] == N_PRODUCTS


def test_compare_command_prints_and_writes(dummy_run, capsys, tmp_path):
    from hfpc_eval.__main__ import main

    out, _, _ = dummy_run
    target = tmp_path / "cmp.json"
    assert (
        main(
            [
                "compare",
                str(out / "results.json"),
                str(out / "results.json"),
                "--pair",
                "base:tuned",
                "--out",
                str(target),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "base" in printed and "tuned" in printed and str(target) in printed
    (item,) = json.loads(target.read_text())["comparisons"]
    assert (item["a"], item["b"]) == ("base", "tuned") and item["difference"]["estimate"] > 0.2


def test_paired_permutation_test_holds_its_level_under_the_null():
    """With no real difference (both versions pass with 0.5), p < 0.05 happens at most ~5% of the time:
    200 seeded null datasets of 30 products x 8 samples; the sign-flip test is exact, at most conservative."""
    from hfpc_eval.config import StatsConfig

    rng = np.random.default_rng(0)
    cfg = StatsConfig(n_resamples=200)
    small = 0
    for _ in range(200):
        a, b = (
            [{"product_id": str(i // 8), "passed": bool(v)} for i, v in enumerate(rng.random(240) < 0.5)]
            for _ in range(2)
        )
        small += paired_difference(a, b, cfg)["p_value"] < 0.05
    assert 3 <= small <= 20  # 10 expected; a binomial(200, 0.05) falls outside [3, 20] with p < 0.005


def test_config_errors_say_the_fix(product_manifest, tmp_path):
    with pytest.raises(ConfigError, match="needs `base` or `generation.base`"):
        _config(product_manifest, tmp_path, [{"name": "l", "kind": "lora", "path": "lora-dir"}])
    with pytest.raises(ConfigError, match="kind must be one of"):
        _config(product_manifest, tmp_path, [{"name": "x", "kind": "gan", "path": "p"}])
    with pytest.raises(ConfigError, match="unique"):
        _config(product_manifest, tmp_path, [{"name": "a", "path": "p"}, {"name": "a", "path": "q"}])
    assert VersionConfig(name="ok", path="p").kind == "pipeline"


# --- report.html in a real headless browser --------------------------------------------------------------


def _chromium() -> str:
    import os

    from hfpc_eval.browser import find_chromium

    found = find_chromium()
    if found is None:
        message = "Chromium not installed (apt-get install -y chromium): report.html browser check skipped"
        if os.environ.get("HFPC_REQUIRE_BROWSER") == "1":
            pytest.fail(message + ", but HFPC_REQUIRE_BROWSER=1 requires it")
        pytest.skip(message)
    return found


def test_report_loads_in_a_headless_browser_with_grid_and_charts(dummy_run):
    from hfpc_eval.browser import check_page

    out, _, _ = dummy_run
    check, console = check_page(out / "report.html", _chromium())
    assert check["errors"] == [] and console == [], (check["errors"], console)
    assert check["broken"] == [] and check["gridImages"] == N_PRODUCTS * (1 + 2 * K)
    assert (
        check["lightboxes"] == N_PRODUCTS * 2 * K and check["relativeSources"] == []
    )  # one self-contained file
    assert check["products"] == N_PRODUCTS and check["badges"] == N_PRODUCTS * 2 * K
    assert check["summaryRows"] == 1 + len(TRUE_RATES)
    for chart in (check["passChart"], check["rewardChart"]):
        assert chart is not None and chart["width"] > 200 and chart["marks"] > 5


def test_browser_check_catches_a_broken_page(tmp_path):
    """The check above can fail: a page with a script error and a missing image is caught."""
    from hfpc_eval.browser import check_page

    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head></head><body><img src="nope.png"><script>undefinedFn()</script></body></html>'
    )
    check, console = check_page(page, _chromium())
    assert any("undefinedFn" in error for error in check["errors"]) and any(
        "undefinedFn" in line for line in console
    )
    assert check["broken"] == ["nope.png"]


@pytest.mark.parametrize("name", ["tiny", "real", "showcase", "judges_tiny", "judges_real"])
def test_shipped_configs_load(name):
    from hfpc_eval.judges import JudgesConfig

    schema = JudgesConfig if name.startswith("judges") else EvalConfig
    config = load_config(schema, Path(__file__).parents[1] / "configs" / "eval" / f"{name}.yaml")
    assert config.manifest and (config.scorer.reward_model.path or name == "showcase")


def test_an_unreadable_product_is_skipped_and_reported(product_manifest, tmp_path):
    lines = product_manifest.read_text().splitlines()[:3]
    broken = json.loads(lines[1])
    broken["origin"] = str(tmp_path / "corrupt.png")
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    rows = [json.loads(lines[0]), broken, json.loads(lines[2])]
    for row in rows:
        for key in ("origin", "mask"):
            row[key] = str(product_manifest.parent / row[key]) if not row[key].startswith("/") else row[key]
    manifest = tmp_path / "products.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    versions = [{"name": "base", "path": "unused"}]
    results = run_eval(
        _config(manifest, tmp_path / "out", versions),
        generators={"base": DummyGenerator(0.5)},
        scorer=DummyScorer(),
    )
    assert list(results["meta"]["counts"]["skipped_products"]) == ["p01"]
    assert "not an image file" in results["meta"]["counts"]["skipped_products"]["p01"]
    assert results["versions"]["base"]["n_products"] == 2


def test_a_run_extends_to_more_samples_and_reports_only_its_own(product_manifest, tmp_path):
    """K=2 then K=4 in the same out_dir generates only k=2,3; going back to K=2 reports K=2 again."""
    small = _config(product_manifest, tmp_path, **{"generation.samples_per_product": 2})
    run_eval(small, generators={n: DummyGenerator(r) for n, r in TRUE_RATES.items()}, scorer=DummyScorer())
    more = {name: DummyGenerator(rate) for name, rate in TRUE_RATES.items()}
    bigger = _config(product_manifest, tmp_path, **{"generation.batch_size": 1})  # K=4; batch size is free
    results = run_eval(bigger, generators=more, scorer=DummyScorer(), resume=True)
    assert (
        sorted({k for _, k, _ in more["base"].calls}) == [2, 3] and len(more["base"].calls) == N_PRODUCTS * 2
    )
    assert results["versions"]["base"]["n_samples"] == N_PRODUCTS * K
    again = run_eval(
        small, generators={}, scorer=DummyScorer(), resume=True
    )  # nothing to generate: no generator is built
    assert again["versions"]["base"]["n_samples"] == N_PRODUCTS * 2


def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(product_manifest, tmp_path):
    from hfpc_reward.runs import RunLockedError, RunOutput

    out = tmp_path / "out"
    holder = RunOutput(out, {}, resume=False, folder=True, name="first")  # another run holds the folder
    with holder, pytest.raises(RunLockedError, match="another run is writing"):
        run_eval(_config(product_manifest, out), generators={}, scorer=DummyScorer(), resume=True)
    assert not (out / "samples.jsonl").exists()


def test_rejudge_overwrite_judges_the_new_source_images(product_manifest, tmp_path):
    """Re-judging run B into a folder that held a re-judge of run A (--overwrite) judges B's images, not A's
    left in place (the linking skips files already there)."""
    from hfpc_eval.rejudge import rejudge_config, rejudge_run

    sources = {}
    for name, rate in (("all_fail", 0.0), ("all_pass", 1.0)):
        sources[name] = tmp_path / name
        config = _config(product_manifest, sources[name], **{"generation.samples_per_product": 1})
        run_eval(config, generators={n: DummyGenerator(rate) for n in TRUE_RATES}, scorer=DummyScorer())
    out = tmp_path / "rejudged"
    first = rejudge_run(sources["all_fail"], rejudge_config(sources["all_fail"], out), scorer=DummyScorer())
    assert first["versions"]["base"]["pass_rate"]["estimate"] == 0.0
    again = rejudge_run(
        sources["all_pass"], rejudge_config(sources["all_pass"], out), scorer=DummyScorer(), overwrite=True
    )
    assert again["meta"]["judge"]["images_from"] == str(sources["all_pass"])
    assert again["versions"]["base"]["pass_rate"]["estimate"] == 1.0


def test_rejudging_a_run_interrupted_before_its_second_version_writes_the_report(product_manifest, tmp_path):
    """No product has samples of both versions: the paired difference is undefined, and the report says so
    rather than failing to render (it read keys only a defined difference had)."""
    from hfpc_eval.rejudge import rejudge_config, rejudge_run

    source = tmp_path / "interrupted"
    generators = {"base": DummyGenerator(0.5), "tuned": DummyGenerator(0.5, interrupt_after=0)}
    with pytest.raises(KeyboardInterrupt):
        run_eval(_config(product_manifest, source), generators=generators, scorer=DummyScorer())
    results = rejudge_run(source, rejudge_config(source, tmp_path / "rejudged"), scorer=DummyScorer())
    assert results["paired"]["tuned - base"]["n_products"] == 0
    html = (tmp_path / "rejudged" / "report.html").read_text()
    assert "<b>+nan</b>" not in html and "<b>-</b>" in html  # the undefined difference shows as '-'


def test_a_product_id_leaving_the_output_folder_is_refused(product_manifest, tmp_path):
    """Images are saved as images/<version>/<product_id>_<k>.png: '../../x' would write outside out_dir."""
    row = json.loads(product_manifest.read_text().splitlines()[0])
    folder = product_manifest.parent
    row = {
        **row,
        "origin": str(folder / row["origin"]),
        "mask": str(folder / row["mask"]),
        "product_id": "../../x",
    }
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps(row) + "\n")
    with pytest.raises(UsageError, match=r"m.jsonl:1: product_id '../../x' names output files"):
        run_eval(_config(manifest, tmp_path / "out"), generators={}, scorer=DummyScorer())
    assert not (tmp_path / "out").exists() and not list(tmp_path.parent.glob("x_*"))
