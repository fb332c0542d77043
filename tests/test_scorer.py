"""HFPCScorer and `hfpc score` on the tiny kit: batched/cached == per pair, per-item errors, policies."""

import json
import math

import pytest

from hfpc_reward.config import load_config
from hfpc_reward.data.manifest import read_manifest
from hfpc_reward.sample.pairs import generate_pairs
from hfpc_reward.scorer import HFPCScorer, ScorerConfig


@pytest.fixture(scope="module")
def kit(tmp_path_factory, tiny_reward_kit):
    root = tmp_path_factory.mktemp("scorer")
    reward_path = tiny_reward_kit["reward"]
    rows = read_manifest(generate_pairs(root / "pairs", n_pairs=12, seed=3, size=128))
    return {"root": root, "reward_path": reward_path, "rows": rows}


def make_scorer(kit, *overrides):
    config = load_config(ScorerConfig, overrides=[f"reward_model.path={kit['reward_path']}", *overrides])
    return HFPCScorer.from_config(config)


def columns(rows):
    return (
        [r.origin for r in rows],
        [r.generation for r in rows],
        [r.mask for r in rows],
        [r.prompt for r in rows],
    )


def test_batched_cached_scoring_equals_per_pair(kit):
    rows = kit["rows"]
    batched = make_scorer(kit, "reward_model.batch_size=5").score(*columns(rows))
    single = make_scorer(kit)
    per_pair = [single.score(*columns([row]))[0] for row in rows]
    single.clear_cache()
    for a, b in zip(batched, per_pair):
        assert a.error is None and b.error is None
        assert a.background_score == pytest.approx(b.background_score, abs=1e-5)
        assert a.reward == pytest.approx(b.reward, abs=1e-5)
        assert a.consistency.score == pytest.approx(b.consistency.score, abs=1e-6)
        assert a.passed == b.passed and a.reasons == b.reasons


def test_consistency_threads_beside_the_reward_model_give_the_same_results_in_order(kit, tmp_path):
    import threading

    rows = kit["rows"]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    origins, generations, masks, prompts = columns(rows)
    generations[4] = str(bad)  # one unreadable item keeps its place
    inline = make_scorer(kit, "consistency_threads=0").score(origins, generations, masks, prompts)
    threaded = make_scorer(kit, "consistency_threads=3")
    checked_in = set()
    check = threaded.checker.check_prepared
    threaded.checker.check_prepared = lambda *a, **k: (
        checked_in.add(threading.current_thread().name) or check(*a, **k)
    )
    results = threaded.score(origins, generations, masks, prompts)
    assert len(checked_in) == 3 and threading.current_thread().name not in checked_in
    assert [r.to_record() for r in results] == [r.to_record() for r in inline]
    assert results[4].error is not None and all(r.error is None for k, r in enumerate(results) if k != 4)
    with pytest.raises(ValueError, match="consistency_threads must be >= 0"):
        ScorerConfig(consistency_threads=-1)


def test_originals_are_encoded_once_and_cache_is_bounded(kit):
    rows = kit["rows"]
    scorer = make_scorer(kit, "cache_size=2")
    calls = []
    encode = scorer.reward_model.encode_images
    scorer.reward_model.encode_images = lambda pixels: calls.append(len(pixels)) or encode(pixels)
    distinct = len({r.origin for r in rows})  # generations of one original may have other prompts
    scorer.score(*columns(rows))
    originals_encoded = sum(calls) - len(rows)  # every generation is encoded once, each original once
    assert originals_encoded == distinct
    assert len(scorer._products) <= 2 and len(scorer._memories) <= 2
    calls.clear()
    scorer.score(*columns(rows[-1:]))  # the last original is still cached: only the generation is encoded
    assert sum(calls) == 1


def test_a_bad_item_gets_an_error_and_the_rest_is_scored(kit, tmp_path):
    rows = kit["rows"][:3]
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    origins, generations, masks, prompts = columns(rows)
    generations[1] = str(text)
    origins[2] = str(tmp_path / "missing.png")
    results = make_scorer(kit).score(origins, generations, masks, prompts)
    assert results[0].error is None and results[0].reward is not None
    assert (
        results[1].reward is None and "not an image" in results[1].error and "generated" in results[1].error
    )
    assert results[2].reward is None and "does not exist" in results[2].error


def test_reward_policies_combine_the_judges_as_documented(kit):
    rows = kit["rows"]
    gate = make_scorer(kit, "policy.reward=gate", "policy.fail_value=-7", "policy.threshold=-1").score(
        *columns(rows)
    )
    product = make_scorer(kit, "policy.reward=product", "policy.threshold=-1").score(*columns(rows))
    weighted = make_scorer(
        kit, "policy.reward=weighted", "policy.background_weight=2", "policy.consistency_weight=3"
    ).score(*columns(rows))
    assert any(not r.consistency.consistent for r in gate) and any(r.consistency.consistent for r in gate)
    for g, p, w in zip(gate, product, weighted):
        expected_gate = g.background_score if g.consistency.consistent else -7.0
        assert g.reward == pytest.approx(expected_gate)
        assert g.passed == (g.consistency.consistent and g.background_score >= -1)
        sigmoid = 1 / (1 + math.exp(-(p.background_score + 1)))
        assert p.reward == pytest.approx(sigmoid * p.consistency.score, rel=1e-6)
        assert w.reward == pytest.approx(2 * w.background_score + 3 * w.consistency.score, rel=1e-6)


def test_without_a_reward_model_the_scorer_judges_consistency_alone(kit):
    rows = kit["rows"]
    results = HFPCScorer.from_config(ScorerConfig()).score(*columns(rows))
    for result, row in zip(results, rows):
        assert result.background_score is None
        assert result.passed == result.consistency.consistent
    truth = [row.extra["consistent"] for row in rows]
    assert sum(r.passed == t for r, t in zip(results, truth)) >= len(rows) - 2


def test_mismatched_batch_lengths_are_refused(kit):
    rows = kit["rows"][:2]
    origins, generations, _, _ = columns(rows)
    with pytest.raises(ValueError, match="one of each per generated image"):
        make_scorer(kit).score(origins[:1], generations)


def test_score_command_writes_rows_summary_and_resumes(kit, tmp_path, capsys):
    from hfpc_reward.cli import main
    from hfpc_reward.data.manifest import read_jsonl

    manifest = kit["root"] / "pairs" / "manifest.jsonl"
    out = tmp_path / "results.jsonl"
    args = [
        "score",
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        f"reward_model.path={kit['reward_path']}",
    ]
    assert main(args) == 0
    records = read_jsonl(out)
    assert sorted(r["manifest_index"] for r in records) == list(range(len(kit["rows"])))
    assert all(
        {"passed", "reward", "background_score", "consistent", "metrics", "error"} <= set(r) for r in records
    )
    printed = capsys.readouterr().out
    assert "pass rate" in printed and "95% CI" in printed
    assert json.loads((tmp_path / "results.run.json").read_text())["settings"]["batch_size"] == 16
    assert main([*args, "--resume"]) == 0  # resume: nothing left to score, nothing duplicated
    assert len(read_jsonl(out)) == len(records)
    assert main([*args, "--resume", "policy.reward=product"]) == 2  # would mix two reward policies
    assert main([*args, "--resume", "--batch-size", "4"]) == 0  # a safe change


def test_score_results_survive_stale_parts_results_as_manifests_and_a_model_changed_in_place(kit, tmp_path):
    """Three ways `hfpc score` lost or mixed rows: part files of an older multi-process run were merged over
    a fresh run's records; a manifest made from results (each row carries manifest_index) kept one record
    per old index; a reward model recalibrated in place was accepted on --resume."""
    import shutil

    from hfpc_reward.cli import main
    from hfpc_reward.data.manifest import read_jsonl

    manifest = kit["root"] / "pairs" / "manifest.jsonl"
    model = tmp_path / "model"
    shutil.copytree(kit["reward_path"], model)
    out = tmp_path / "results.jsonl"
    stale = tmp_path / "results.part-0-of-2.jsonl"
    stale.write_text(json.dumps({"manifest_index": 0, "passed": "stale"}) + "\n")
    args = ["score", "--manifest", str(manifest), "--out", str(out), f"reward_model.path={model}"]
    assert main([*args, "--overwrite"]) == 0
    assert not stale.exists() and all(r["passed"] != "stale" for r in read_jsonl(out))
    twice = tmp_path / "twice.jsonl"
    twice.write_text(out.read_text() * 2)
    again = tmp_path / "again.jsonl"
    assert main(["score", "--manifest", str(twice), "--out", str(again), f"reward_model.path={model}"]) == 0
    assert [r["manifest_index"] for r in read_jsonl(again)] == list(range(2 * len(kit["rows"])))
    stored = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**stored, "threshold": stored["threshold"] + 0.5}))
    assert main([*args, "--resume"]) == 2  # the model's config changed: its verdicts would mix two thresholds


def test_tensor_batches_of_images_and_masks_score_like_files(kit):
    import torch

    from hfpc_reward.images import ImageLoadError, load_mask, load_rgb, pil_to_tensor

    rows = kit["rows"][:2]
    origins, generations, masks, prompts = columns(rows)
    scorer = make_scorer(kit)
    expected = scorer.score(origins, generations, masks, prompts)
    tensor_masks = torch.from_numpy(__import__("numpy").stack([load_mask(m) for m in masks]))  # (B,H,W) bool
    generated = pil_to_tensor([load_rgb(g) for g in generations])  # (B,3,H,W) in [0,1]
    results = scorer.score(origins, generated, tensor_masks, prompts)
    for a, b in zip(expected, results):
        assert a.background_score == pytest.approx(b.background_score, abs=1e-4)
        assert a.consistency.consistent == b.consistency.consistent
    (single,) = scorer.score(origins[0], generated[0], masks[0], prompts[0])  # one image: a batch of one
    assert single.background_score == pytest.approx(results[0].background_score, abs=1e-6)
    with pytest.raises(ImageLoadError, match=r"\(B,3,H,W\)"):
        scorer.score(origins[:1], generated[:, 0], None, prompts[:1])  # (B,H,W) is no image batch


def test_score_command_names_the_product_by_category_not_by_background_prompt(kit, tmp_path):
    from hfpc_reward.commands import score_manifest

    scorer = make_scorer(kit)
    score_manifest(kit["rows"], scorer, tmp_path / "r.jsonl")
    used = {category for (_, _, category) in scorer._products}
    assert used == {row.category for row in kit["rows"]}  # the detection phrase, never the background prompt
    assert next(p.prompt for p in scorer._products.values()) in used


def test_score_command_under_two_processes_writes_each_row_once_in_order(kit, tmp_path):
    from launch import REPO, torchrun

    from hfpc_reward.data.manifest import read_jsonl

    manifest = kit["root"] / "pairs" / "manifest.jsonl"
    out = tmp_path / "results.jsonl"
    classic = REPO / "configs" / "scorer" / "classic.yaml"  # consistency only: fast
    command = [
        "hfpc_reward.cli",
        "score",
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "--config",
        str(classic),
    ]
    result = torchrun(command, nproc=2, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_jsonl(out)
    assert [r["manifest_index"] for r in records] == list(range(len(kit["rows"])))
    assert not list(tmp_path.glob("*.part-*"))  # shards merged and removed


def test_sdpa_vision_attention_gives_transformers_eager_blip_tokens(kit):
    import torch
    from transformers.models.blip.modeling_blip import BlipVisionModel

    from hfpc_reward.reward.model import HFPCRewardModel, SdpaVisionAttention

    model = HFPCRewardModel.from_pretrained(kit["reward_path"])
    assert all(isinstance(layer.self_attn, SdpaVisionAttention) for layer in model.vision.encoder.layers)
    eager = BlipVisionModel(model.blip_config.vision_config).eval()
    eager.load_state_dict(model.vision.state_dict(), strict=True)  # same weights under the same names
    torch.manual_seed(0)
    pixels = torch.rand(3, 3, *model.image_size)
    with torch.inference_mode():
        expected = eager(pixel_values=model.preprocess(pixels)).last_hidden_state
        assert torch.allclose(model.encode_images(pixels), expected, atol=1e-5)
