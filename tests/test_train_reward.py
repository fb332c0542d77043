"""Reward training on the tiny BLIP kit: learning that needs the reference, exact resume, feature cache,
and the eval / calibrate commands on the trained model."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from launch import torchrun

from hfpc_reward.cli import main as cli_main
from hfpc_reward.config import load_config
from hfpc_reward.data.manifest import ManifestError, read_jsonl, read_manifest
from hfpc_reward.reward.model import HFPCRewardModel
from hfpc_reward.reward.rows import score_rows
from hfpc_reward.reward.train import TrainRewardConfig, train_reward_model
from hfpc_reward.runs import OutputExistsError, ResumeMismatchError
from hfpc_reward.stats import binary_metrics, recall_at_precision
from hfpc_reward.testing.tiny_blip import write_colour_preference_task, write_tiny_reward_model

# the tiny config's CPU recipe learns the colour task; validate once per epoch, hold out 50 originals
LEARNING = ["training.eval_every_steps=1000", "training.save_every_steps=1000", "data.valid_fraction=0.25"]


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    out = tmp_path_factory.mktemp("kit")
    path = out / "reward_tiny.yaml"
    path.write_text(yaml.safe_dump(write_tiny_reward_model(out)["reward_tiny"]))
    return path


@pytest.fixture(scope="module")
def colour_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour_task")
    return {
        "train": write_colour_preference_task(root / "train", n_originals=200, seed=0),
        "test": write_colour_preference_task(root / "test", n_originals=40, seed=1),
        "small": write_colour_preference_task(root / "small", n_originals=12, seed=2),
    }


def _train(tiny_config, manifest, out_dir, overrides, **kwargs):
    cfg = load_config(
        TrainRewardConfig,
        tiny_config,
        [f"data.train_manifest={manifest}", f"training.out_dir={out_dir}", *overrides],
    )
    return train_reward_model(cfg, **kwargs)


@pytest.fixture(scope="module")
def referenced_run(tiny_config, colour_task, tmp_path_factory):
    return _train(tiny_config, colour_task["train"], tmp_path_factory.mktemp("referenced"), LEARNING)


def test_referenced_model_learns_what_the_unreferenced_cannot(
    referenced_run, tiny_config, colour_task, tmp_path
):
    unreferenced = _train(
        tiny_config, colour_task["train"], tmp_path, [*LEARNING, "architecture.referenced=false"]
    )
    assert referenced_run["best_valid_accuracy"] >= 0.85
    assert unreferenced["best_valid_accuracy"] <= 0.65
    # the final model holds standardisation stats: training rows score ~ mean 0, std 1
    model = HFPCRewardModel.from_pretrained(referenced_run["model_dir"])
    raw = score_rows(model, read_manifest(colour_task["train"])[:200], standardise=False)
    assert model.score_std > 0 and abs(raw.mean() - model.score_mean) < 0.5 * model.score_std
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("train_loss" in m for m in metrics) and any("valid_pair_accuracy" in m for m in metrics)


@pytest.mark.slow
def test_learning_with_more_data_and_epochs(tiny_config, tmp_path):
    manifest = write_colour_preference_task(tmp_path / "data", n_originals=400, seed=3)
    overrides = ["training.epochs=10", "training.eval_every_steps=1000", "training.save_every_steps=1000"]
    referenced = _train(tiny_config, manifest, tmp_path / "ref", overrides)
    unreferenced = _train(
        tiny_config, manifest, tmp_path / "unref", [*overrides, "architecture.referenced=false"]
    )
    assert referenced["best_valid_accuracy"] >= 0.9
    assert unreferenced["best_valid_accuracy"] <= 0.65


def test_eval_reward_on_held_out_originals(referenced_run, colour_task, tmp_path):
    out = tmp_path / "report" / "metrics.json"
    args = [
        "eval-reward",
        "--model",
        referenced_run["model_dir"],
        "--manifest",
        str(colour_task["test"]),
        "--out",
        str(out),
        "--bootstrap",
        "100",
    ]
    assert cli_main(args) == 0
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    assert report["originals"] == 40 and report["pairs"] == 160
    assert metrics["pairwise_accuracy"] >= 0.8  # measured 0.856 (valid split: 0.92), CI ~[0.79, 0.91]
    low, high = report["confidence_intervals"]["pairwise_accuracy"]
    assert low <= metrics["pairwise_accuracy"] <= high < 1.0 + 1e-9 and low < high
    # pointwise separation across originals is harder than within-original ranking, but well above chance
    assert metrics["roc_auc"] > 0.7 and 0.0 <= metrics["ece"] <= 1.0
    for name in ("pr_curve.png", "score_histogram.png"):
        assert (out.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_reward_writes_threshold_reaching_target(referenced_run, colour_task, tmp_path):
    model_dir = shutil.copytree(referenced_run["model_dir"], tmp_path / "model")
    args = [
        "calibrate-reward",
        "--model",
        str(model_dir),
        "--manifest",
        str(colour_task["test"]),
        "--target-precision",
        "0.95",
    ]
    assert cli_main(args) == 0
    stored = json.loads((model_dir / "config.json").read_text())
    model = HFPCRewardModel.from_pretrained(model_dir)
    assert model.threshold == stored["threshold"]
    rows = read_manifest(colour_task["test"])
    scores = score_rows(model, rows)
    labels = [r.label for r in rows]
    metrics = binary_metrics(scores, labels, model.threshold)
    # on the rows it was calibrated on: the target precision, with the best recall that allows
    assert metrics["precision"] >= 0.95 and metrics["recall"] > 0
    assert metrics["recall"] == pytest.approx(recall_at_precision(scores, labels, 0.95))
    assert stored["probability_calibration"]["scale"] > 0  # higher score -> more likely to pass


class _Interrupt(Exception):
    pass


def _final_weights(run):
    return HFPCRewardModel.from_pretrained(run["model_dir"]).state_dict()


def test_resume_after_interrupt_gives_identical_weights(tiny_config, colour_task, tmp_path):
    # 9 train originals x 4 pairs = 36 pairs; batch 4, accumulation 2 -> 5 steps/epoch, 2 epochs;
    # the interrupt after step 7 falls back to the mid-epoch checkpoint of step 6
    overrides = [
        "training.epochs=2",
        "training.batch_size=4",
        "training.gradient_accumulation_steps=2",
        "training.save_every_steps=2",
        "training.eval_every_steps=3",
        "training.warmup_ratio=0.2",
        "training.freeze_fraction=0.5",
        "data.valid_fraction=0.25",
    ]
    straight = _train(tiny_config, colour_task["small"], tmp_path / "straight", overrides)

    def interrupt(step):
        if step == 7:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        _train(tiny_config, colour_task["small"], tmp_path / "resumed", overrides, on_step=interrupt)
    assert (tmp_path / "resumed" / "checkpoints" / "latest").read_text() == "step-6"
    resumed = _train(tiny_config, colour_task["small"], tmp_path / "resumed", overrides, resume=True)
    assert resumed["global_step"] == straight["global_step"] == 10
    a, b = _final_weights(straight), _final_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for changed in (
        "training.seed=1",
        "training.learning_rate=1e-3",
        f"data.train_manifest={colour_task['test']}",
    ):
        with pytest.raises(ResumeMismatchError, match=changed.split("=")[0].replace(".", r"\.")):
            _train(
                tiny_config, colour_task["small"], tmp_path / "resumed", [*overrides, changed], resume=True
            )
    steps = [m["step"] for m in read_jsonl(tmp_path / "resumed" / "metrics.jsonl") if "train_loss" in m]
    assert steps == list(range(1, 11))  # steps 7 (lost with the interrupt) and every other step logged once


def test_resume_with_more_epochs_equals_an_uninterrupted_longer_run(tiny_config, colour_task, tmp_path):
    # 44 pairs, batch 8 -> 6 steps per epoch; the schedule spans 4 epochs from the start
    overrides = ["training.batch_size=8", "training.schedule_epochs=4", "training.freeze_fraction=0.5"]
    longer = _train(tiny_config, colour_task["small"], tmp_path / "longer", [*overrides, "training.epochs=4"])
    _train(tiny_config, colour_task["small"], tmp_path / "extended", [*overrides, "training.epochs=2"])
    with pytest.raises(OutputExistsError, match="--resume"):
        _train(tiny_config, colour_task["small"], tmp_path / "extended", [*overrides, "training.epochs=4"])
    extended = _train(
        tiny_config,
        colour_task["small"],
        tmp_path / "extended",
        [*overrides, "training.epochs=4"],
        resume=True,
    )
    assert extended["global_step"] == longer["global_step"] == 24
    a, b = _final_weights(longer), _final_weights(extended)
    assert all(torch.equal(a[k], b[k]) for k in a)
    stamp = json.loads((tmp_path / "extended" / "run.json").read_text())
    assert stamp["settings"]["training"]["epochs"] == 4 and stamp["resumes"] == 1
    # without a fixed schedule length, more epochs would re-time the learning rate of steps already taken
    _train(
        tiny_config, colour_task["small"], tmp_path / "cosine", ["training.batch_size=8", "training.epochs=1"]
    )
    with pytest.raises(ResumeMismatchError, match="fix training.schedule_epochs from the start"):
        _train(
            tiny_config,
            colour_task["small"],
            tmp_path / "cosine",
            ["training.batch_size=8", "training.epochs=2"],
            resume=True,
        )


def test_frozen_backbone_trains_head_on_cached_features_identically(tiny_config, colour_task, tmp_path):
    overrides = [
        "training.epochs=2",
        "training.batch_size=8",
        "training.freeze_fraction=1.0",
        "training.eval_every_steps=100",
        "training.save_every_steps=100",
    ]
    cached = _train(tiny_config, colour_task["small"], tmp_path / "cached", overrides)
    recomputed = _train(
        tiny_config,
        colour_task["small"],
        tmp_path / "recomputed",
        [*overrides, "training.cache_features=false"],
    )
    a, b = _final_weights(cached), _final_weights(recomputed)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    initial = HFPCRewardModel.from_pretrained(load_config(TrainRewardConfig, tiny_config).model)
    # the backbone did not move
    assert torch.equal(
        a["vision.embeddings.patch_embedding.weight"],
        initial.state_dict()["vision.embeddings.patch_embedding.weight"],
    )


def test_train_reward_cli_rejects_missing_manifest(tiny_config, tmp_path, caplog):
    assert cli_main(["train-reward", "--config", str(tiny_config), f"training.out_dir={tmp_path}"]) == 2
    assert "data.train_manifest is not set" in caplog.text


@pytest.mark.parametrize("freeze", ["0.0", "1.0"])  # pixel path, cached-feature path
def test_no_readable_training_pair_is_refused(tiny_config, colour_task, tmp_path, freeze):
    """A manifest copied away from its images: the cached path span forever with no step per epoch, the pixel
    path saved a model whose score mean was NaN (exit 0). Both now stop with the manifest named."""
    moved = tmp_path / "moved.jsonl"
    moved.write_text(colour_task["small"].read_text())  # its relative image paths now point nowhere
    with pytest.raises(ManifestError, match="no training pair of .*moved.jsonl has readable images"):
        _train(
            tiny_config, moved, tmp_path / "run", [f"training.freeze_fraction={freeze}", "training.epochs=1"]
        )
    assert not (tmp_path / "run" / "model").exists()


def test_continuing_without_both_labels_in_validation_drops_the_old_calibration(
    tiny_config, referenced_run, colour_task, tmp_path
):
    """Training on from a calibrated model re-standardises its scores: the old threshold and probabilities
    belong to the old scale, so with nothing to calibrate on they are reset, not kept."""
    passes = tmp_path / "passes.jsonl"
    rows = [json.loads(line) for line in colour_task["small"].read_text().splitlines()]
    base = colour_task["small"].parent
    rows = [
        {**row, "origin": str(base / row["origin"]), "generation": str(base / row["generation"])}
        for row in rows
    ]
    passes.write_text("".join(json.dumps(row) + "\n" for row in rows if row["label"] == 1))
    source = HFPCRewardModel.from_pretrained(referenced_run["model_dir"])
    assert source.threshold != 0.0 and source.probability_calibration is not None
    overrides = [f"model={referenced_run['model_dir']}", f"data.valid_manifest={passes}", "training.epochs=1"]
    continued = HFPCRewardModel.from_pretrained(
        _train(tiny_config, colour_task["small"], tmp_path / "more", overrides)["model_dir"]
    )
    assert continued.threshold == 0.0 and continued.probability_calibration is None


def test_cluster_assignment_balances_the_pairs_drawn(tiny_config, colour_task, tmp_path):
    from hfpc_reward.data.clusters import ClusterAssignment
    from hfpc_reward.data.manifest import comparison_pairs
    from hfpc_reward.reward.pair_sources import epoch_order

    rows = read_manifest(colour_task["small"])
    origins = list(dict.fromkeys(row.origin for row in rows))
    # one original alone in cluster 0, the other eleven in cluster 1
    assignment = {origin: int(i > 0) for i, origin in enumerate(origins)}
    path = ClusterAssignment(assignment, {o: 0.0 for o in origins}, k=2).save(tmp_path / "clusters.json")
    pairs = comparison_pairs(rows)
    cfg = load_config(TrainRewardConfig, tiny_config, [f"data.cluster_assignment={path}"])
    drawn = np.concatenate([epoch_order(pairs, epoch, cfg.training.seed, assignment) for epoch in range(20)])
    share = np.mean([pairs[i][0].origin == origins[0] for i in drawn])
    assert 0.4 < share < 0.6  # 1 of 12 originals, drawn half the time
    summary = _train(
        tiny_config,
        colour_task["small"],
        tmp_path / "run",
        ["training.epochs=1", "training.freeze_fraction=1.0", f"data.cluster_assignment={path}"],
    )
    assert summary["global_step"] >= 1
    # the clusters recomputed into the same file (6 + 6) draw other pairs: a resume is refused, naming it
    half = {origin: int(i >= 6) for i, origin in enumerate(origins)}
    ClusterAssignment(half, {o: 0.0 for o in origins}, k=2).save(path)
    with pytest.raises(ResumeMismatchError, match=r"input_sha256\.cluster_assignment"):
        _train(
            tiny_config,
            colour_task["small"],
            tmp_path / "run",
            ["training.epochs=2", "training.freeze_fraction=1.0", f"data.cluster_assignment={path}"],
            resume=True,
        )


def test_a_bad_cluster_file_stops_before_the_run_takes_its_folder(tiny_config, colour_task, tmp_path, caplog):
    from hfpc_reward.data.clusters import ClusterAssignment

    origins = list(dict.fromkeys(row.origin for row in read_manifest(colour_task["small"])))
    partial = ClusterAssignment({origins[0]: 0}, {origins[0]: 0.0}, k=1).save(tmp_path / "partial.json")
    for clusters, problem in (
        (tmp_path / "missing.json", "is not a cluster assignment"),
        (partial, "pairs have an original without a cluster"),
    ):
        argv = ["train-reward", "--config", str(tiny_config), f"data.train_manifest={colour_task['small']}"]
        argv += [f"training.out_dir={tmp_path / 'run'}", f"data.cluster_assignment={clusters}"]
        caplog.clear()
        assert cli_main(argv) == 2
        assert problem in caplog.text and "Traceback" not in caplog.text
        assert not (tmp_path / "run").exists()  # the corrected command runs without --overwrite
    split = ["data", "split", str(colour_task["small"]), "--out", str(tmp_path / "split")]
    assert cli_main([*split, "--stratify-clusters", str(tmp_path / "missing.json")]) == 2


def test_url_manifest_is_refused_with_the_fetch_hint(tiny_config, tmp_path, caplog):
    manifest = tmp_path / "remote.jsonl"
    manifest.write_text(
        '{"origin": "https://example.com/o.jpg", "generation": "https://example.com/g1.jpg", "label": 1}\n'
        '{"origin": "https://example.com/o.jpg", "generation": "https://example.com/g2.jpg", "label": 0}\n'
    )
    with pytest.raises(ValueError, match="hfpc data fetch"):
        _train(tiny_config, manifest, tmp_path / "run", [])
    args = [
        "eval-reward",
        "--model",
        "unused",
        "--manifest",
        str(manifest),
        "--out",
        str(tmp_path / "m.json"),
    ]
    assert cli_main(args) == 2
    assert "hfpc data fetch" in caplog.text


def test_two_processes_train_the_same_model_as_one(tiny_config, colour_task, tmp_path):
    """torchrun, 2 CPU processes (gloo), each its shard of every micro-batch == 1 process with the global
    batch: the same pairs per step and synchronised gradients give the same weights."""
    common = [
        "training.epochs=1",
        "training.gradient_accumulation_steps=1",
        "training.freeze_fraction=0.5",
        "architecture.head_dropout=[0.0,0.0]",  # dropout masks would differ between the layouts
        # with the pair loss alone a bias shifts r_pos and r_neg alike: its gradient is rounding noise,
        # which Adam scales to full steps; the pointwise term gives every parameter a real gradient
        "training.pointwise_weight=0.5",
        "training.eval_every_steps=1000",
        "training.save_every_steps=1000",
    ]
    one = _train(tiny_config, colour_task["small"], tmp_path / "one", [*common, "training.batch_size=4"])
    command = [
        "hfpc_reward.cli",
        "train-reward",
        "--config",
        str(tiny_config),
        *common,
        "training.batch_size=2",
    ]
    command += [f"data.train_manifest={colour_task['small']}", f"training.out_dir={tmp_path / 'two'}"]
    result = torchrun(command, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "run.json").read_text())
    assert two["finished_step"] == one["global_step"] > 1
    a = _final_weights(one)
    b = HFPCRewardModel.from_pretrained(tmp_path / "two" / "model").state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4)  # Adam steps are ~lr = 4e-3
    losses = [
        [m["train_loss"] for m in read_jsonl(tmp_path / run / "metrics.jsonl") if "train_loss" in m]
        for run in ("one", "two")
    ]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)  # the logged loss is the mean over processes
