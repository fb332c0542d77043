"""The reward-model table: every judge thresholded by the same calibration, reported on held-out originals."""

import numpy as np
import pytest
from hfpc_eval.judges import JUDGE_NAMES, JudgesConfig, judges_table, markdown_table


def _records(n_originals: int = 40, per_original: int = 4, seed: int = 0) -> list[dict]:
    """A perfect judge (consistency), a random one (background), an inverted one (ITM) and a noisy
    combination, on labelled rows of `n_originals` originals."""
    rng = np.random.default_rng(seed)
    records = []
    for original in range(n_originals):
        for k in range(per_original):
            label = int(rng.random() < 0.4)
            records.append(
                {
                    "origin": f"o{original}",
                    "generation": f"o{original}_{k}",
                    "label": label,
                    JUDGE_NAMES[0]: label + rng.normal(0, 0.3),
                    JUDGE_NAMES[1]: 0.7 if label else 0.2,
                    JUDGE_NAMES[2]: float(rng.normal()),
                    JUDGE_NAMES[3]: 1.0 - label + 0.01 * rng.random(),
                }
            )
    return records


def test_each_judge_is_calibrated_on_one_part_and_reported_on_the_other():
    config = JudgesConfig(manifest="unused.jsonl", calibration_fraction=0.5)
    config.stats.n_resamples = 200
    table = judges_table(config, _records())
    assert table["calibration_rows"] + table["test_rows"] == table["rows_used"] == 160
    assert table["test_originals"] == 20
    judges = table["judges"]
    assert list(judges) == list(JUDGE_NAMES)
    perfect = judges["consistency only"]
    assert perfect["precision"] == perfect["recall"] == perfect["f1"] == perfect["pr_auc"] == 1.0
    assert 0.2 < perfect["threshold"] <= 0.7  # picked on the calibration part, between the two classes
    assert judges["BLIP ITM (zero-shot)"]["pr_auc"] < 0.5  # an inverted judge is worse than chance
    assert judges["background only"]["f1"] < judges["HFPC (combined)"]["f1"]
    for metrics in judges.values():
        assert metrics["n"] == table["test_rows"]  # every judge is measured on the same rows
        interval = metrics["intervals"]["f1"]
        assert interval["low"] <= metrics["f1"] <= interval["high"]
    text = markdown_table(table)
    assert text.count("\n| ") == 1 + len(JUDGE_NAMES) and "| consistency only | " in text


def test_rows_a_judge_could_not_score_are_left_out_for_all():
    records = _records()
    records[0][JUDGE_NAMES[3]] = None
    records[1][JUDGE_NAMES[2]] = None
    config = JudgesConfig(manifest="unused.jsonl")
    config.stats.n_resamples = 100
    assert judges_table(config, records)["rows_used"] == len(records) - 2


def test_a_judge_missing_everywhere_is_dropped_from_the_table():
    records = _records()
    for record in records:
        record[JUDGE_NAMES[2]] = None  # no reward model: no background judge
    config = JudgesConfig(manifest="unused.jsonl")
    config.stats.n_resamples = 100
    table = judges_table(config, records)
    assert "background only" not in table["judges"] and table["rows_used"] == len(records)


def test_config_errors_say_the_fix():
    with pytest.raises(ValueError, match="--manifest"):
        JudgesConfig()
    with pytest.raises(ValueError, match="calibration_fraction"):
        JudgesConfig(manifest="m.jsonl", calibration_fraction=1.0)


def test_resample_metrics_agree_with_the_shared_binary_metrics():
    from hfpc_eval.judges import REPORTED, _reported_metrics

    from hfpc_reward.stats import binary_metrics

    rng = np.random.default_rng(3)
    for _ in range(20):
        scores, labels = rng.random(30), (rng.random(30) < 0.4).astype(int)
        fast, shared = _reported_metrics(scores, labels, 0.5), binary_metrics(scores, labels, 0.5)
        for key in REPORTED:
            assert fast[key] == pytest.approx(shared[key], nan_ok=True)


def test_blip_itm_judge_scores_match_probabilities_batch_independently(tmp_path):
    from hfpc_eval.itm import BlipITMJudge
    from PIL import Image

    from hfpc_reward.testing.tiny_blip import write_tiny_blip

    judge = BlipITMJudge(str(write_tiny_blip(tmp_path / "blip")), batch_size=2)
    images = [Image.new("RGB", (40, 30), colour) for colour in ("red", "green", "blue")]
    prompts = ["a red bottle on a table", "a shoe", "a bag in a garden"]
    scores = judge.score(images, prompts)
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))
    alone = judge.score(images[2:], prompts[2:])
    assert alone[0] == pytest.approx(scores[2], abs=1e-5)
    assert judge.score(images[:1], ["a shoe"])[0] != pytest.approx(scores[0], abs=1e-7)  # the text matters
    long_prompt = " ".join(["a very long background description"] * 40)  # beyond the text positions
    assert 0.0 <= judge.score(images[:1], [long_prompt])[0] <= 1.0
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        judge.score(images, prompts[:2])


def test_judges_command_on_sample_pairs_with_the_real_scorer(tmp_path, capsys):
    """`hfpc eval judges` on labelled sample pairs (label = product kept): real HFPCScorer with the tiny
    reward model, the tiny BLIP ITM baseline; the consistency judge must beat chance clearly."""
    import json

    import yaml
    from hfpc_eval.__main__ import main

    from hfpc_reward.sample.pairs import generate_pairs
    from hfpc_reward.testing.tiny_blip import write_tiny_reward_model

    manifest = generate_pairs(tmp_path / "pairs", n_pairs=64, size=96, seed=1)
    reward_model = write_tiny_reward_model(tmp_path / "rm")["reward_model_tiny"]["path"]
    config = {
        "out_dir": str(tmp_path / "judges"),
        "scorer": {"reward_model": {"path": reward_model}},
        "itm_model": str(tmp_path / "rm" / "blip"),
        "stats": {"n_resamples": 200},
    }
    (tmp_path / "judges.yaml").write_text(yaml.safe_dump(config))
    assert main(["judges", "--config", str(tmp_path / "judges.yaml"), "--manifest", str(manifest)]) == 0
    assert "| consistency only |" in capsys.readouterr().out
    table = json.loads((tmp_path / "judges" / "judges.json").read_text())
    assert list(table["judges"]) == list(JUDGE_NAMES) and table["rows_used"] == 64
    assert table["judges"]["consistency only"]["pr_auc"] > 0.75
    assert len((tmp_path / "judges" / "scores.jsonl").read_text().splitlines()) == 64


def test_an_unreadable_generation_errors_only_its_own_row(tmp_path):
    from hfpc_eval.judges import JudgesConfig, score_rows

    from hfpc_reward.data.manifest import read_manifest
    from hfpc_reward.sample.pairs import generate_pairs
    from hfpc_reward.scorer import HFPCScorer, ScorerConfig

    rows = read_manifest(generate_pairs(tmp_path, n_pairs=4, size=96, seed=2))  # one original, 4 generations
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    rows[1].generation = str(broken)
    config = JudgesConfig(manifest=str(tmp_path / "manifest.jsonl"))
    records = score_rows(config, rows, HFPCScorer.from_config(ScorerConfig()), None)
    assert "broken.png" in records[1]["error"]
    assert [records[i]["error"] for i in (0, 2, 3)] == [None, None, None]
    assert all(records[i][JUDGE_NAMES[1]] is not None for i in (0, 2, 3))
