"""`eval run` on several processes (torchrun, gloo, CPU) gives the numbers of one process; a killed run resumes
on another number of processes; `eval rejudge` changes only the judged fields. Real tiny pipelines and the
real HFPCScorer (tiny reward model + classic consistency)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hfpc_eval.config import EvalConfig
from hfpc_eval.distributed import EvalProcesses, Unit, pending_units, with_process_devices, work_units
from hfpc_eval.harness import run_eval
from hfpc_eval.judging import JUDGED_FIELDS
from hfpc_eval.samples import SHARD_GLOB, latest_samples
from PIL import Image

from hfpc_reward.config import config_to_dict, load_config
from hfpc_reward.data.manifest import read_jsonl

REPO = Path(__file__).resolve().parents[1]
K, BATCH = 4, 3  # chunks k = (0, 1, 2) and (3): every product of every version is two units
NUMBERS = ("versions", "paired", "categories", "failure_reasons")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_reward_kit):
    """Two tiny SD-inpainting pipelines (two versions), 4 products, and a one-process reference run."""
    from hfpc_reward.testing.tiny_sd import build_tiny_sd_inpaint, write_tiny_sd_inpaint

    root = tmp_path_factory.mktemp("dist")
    write_tiny_sd_inpaint(root / "sd")
    build_tiny_sd_inpaint(seed=1).save_pretrained(root / "other", safe_serialization=True)
    versions = [
        {"name": "base", "kind": "pipeline", "path": str(root / "sd" / "pipeline")},
        {"name": "other", "kind": "pipeline", "path": str(root / "other")},
    ]
    items = [
        f"manifest={root / 'sd' / 'products' / 'manifest.jsonl'}",
        f"generation.samples_per_product={K}",
        f"generation.batch_size={BATCH}",
        "generation.resolution=64",
        "generation.num_inference_steps=2",
        f"scorer.reward_model.path={tiny_reward_kit['reward']}",
        "held_out.raw_consistency=true",
        "stats.n_resamples=200",
        f"versions={json.dumps(versions)}",
    ]

    def config(out: Path, *more: str) -> EvalConfig:
        return load_config(EvalConfig, None, [*items, f"out_dir={out}", *more])

    reference = run_eval(config(root / "one"))
    return {"root": root, "config": config, "reference": reference}


def _torchrun(world, config: EvalConfig, name: str, nproc: int = 2, **popen) -> subprocess.Popen:
    """`torchrun --nproc_per_node N -m hfpc_eval run --config <config as YAML>` (what accelerate launch runs)."""
    path = world["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config)))
    with socket.socket() as probe:  # a free port for the gloo rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    command += ["--master_port", str(port), "-m", "hfpc_eval", "run", "--config", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, cwd=REPO, env=env, text=True, **popen)


def test_units_are_dealt_round_robin_and_resume_only_missing_samples():
    units = work_units(["a", "b"], ["p", "q"], samples=4, batch=3)
    assert units[:2] == [Unit("a", "p", (0, 1, 2)), Unit("a", "p", (3,))] and len(units) == 8
    shares = [EvalProcesses(rank, 3).share(units) for rank in range(3)]
    assert sorted((u for share in shares for u in share), key=units.index) == units and [
        len(s) for s in shares
    ] == [3, 3, 2]
    pending = pending_units(units, {("a", "p", 0), ("a", "p", 3), ("b", "q", 1)})
    assert pending[0] == Unit("a", "p", (1, 2)) and Unit("b", "q", (0, 2)) in pending and len(pending) == 7


def test_each_process_gets_its_own_device(world):
    second = EvalProcesses(rank=1, world=2, local_rank=1)
    assert (
        second.device("cuda") == "cuda:1"
        and second.device("cpu") == "cpu"
        and EvalProcesses().device("cuda") == "cuda"
    )
    config = with_process_devices(
        world["config"](world["root"] / "unused", "scorer.reward_model.device=cuda"), second
    )
    assert config.scorer.reward_model.device == "cuda:1" and config.generation.device == second.device("auto")


def test_two_processes_give_the_numbers_and_rows_of_one(world):
    out = world["root"] / "two"
    run = _torchrun(world, world["config"](out), "two", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-3000:]
    one, two = world["root"] / "one", out
    results = json.loads((two / "results.json").read_text())
    for key in NUMBERS:  # pass rates, intervals, paired differences, breakdowns: exactly equal
        assert results[key] == world["reference"][key]
    assert results["meta"]["counts"]["generated_this_run"] == 2 * 4 * K
    rows_one, rows_two = read_jsonl(one / "samples.jsonl"), read_jsonl(two / "samples.jsonl")
    assert len(rows_two) == 2 * 4 * K and rows_two == rows_one  # same rows, even in the same (fixed) order
    assert not list(two.glob(SHARD_GLOB))  # shards merged and removed
    for row in rows_two[:: K + 1]:
        assert np.array_equal(
            np.asarray(Image.open(two / row["image"])), np.asarray(Image.open(one / row["image"]))
        )
    assert json.loads((two / "run.json").read_text())["finished"] is True


def test_a_killed_two_process_run_resumes_on_one_process(world):
    out = world["root"] / "killed"
    config = world["config"](out)
    run = _torchrun(world, config, "killed", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while sum(len(read_jsonl(path)) for path in out.glob(SHARD_GLOB)) < 2 and run.poll() is None:
            assert time.monotonic() < deadline, "the 2-process run wrote no samples"
            time.sleep(0.02)
    finally:  # what a preempted job gets; torchrun then ends its workers (each in its own session)
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=120)
    made = {(r["version"], r["product_id"], r["k"]) for p in out.glob(SHARD_GLOB) for r in read_jsonl(p)}
    assert 2 <= len(made) < 2 * 4 * K, "the run was not killed mid-way"
    assert not (out / "samples.jsonl").exists()
    results = run_eval(config, resume=True)  # one process now
    for key in NUMBERS:
        assert results[key] == world["reference"][key]
    assert results["meta"]["counts"]["generated_this_run"] == 2 * 4 * K - len(made)  # nothing made twice
    assert read_jsonl(out / "samples.jsonl") == read_jsonl(world["root"] / "one" / "samples.jsonl")


def test_rejudge_changes_only_the_judged_fields_and_says_which_judge(world, capsys):
    from hfpc_eval.__main__ import main

    one = world["root"] / "one"
    source = latest_samples(one / "samples.jsonl")
    threshold = float(np.median([row["background_score"] for row in source]))  # flips about half the verdicts
    judge = [f"scorer.policy.threshold={threshold}", "scorer.policy.reward=product"]
    out = world["root"] / "rejudged"
    assert main(["rejudge", "--from", str(one), "--out", str(out), *judge]) == 0
    assert "re-judged 32 samples" in capsys.readouterr().out
    rows = latest_samples(out / "samples.jsonl")
    assert [(r["version"], r["product_id"], r["k"]) for r in rows] == [
        (r["version"], r["product_id"], r["k"]) for r in source
    ]
    unjudged = set(JUDGED_FIELDS) | {"settings"}
    for before, after in zip(source, rows):
        assert {k: v for k, v in after.items() if k not in unjudged} == {
            k: v for k, v in before.items() if k not in unjudged
        }
        assert after["background_score"] == before["background_score"]  # the same reward model
        assert after["passed"] == (after["background_score"] >= threshold and after["consistent"])
    assert sum(a["passed"] != b["passed"] for a, b in zip(source, rows)) > 0
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["judge"]["threshold"] == threshold and meta["judge"]["reward_policy"] == "product"
    assert meta["judge"]["scorer_hash"] != meta["judge"]["rejudged"]["source_judge"]["scorer_hash"]
    assert meta["judge"]["images_from"] == str(one)
    assert set(meta["judge"]["rejudged"]["changed_rows"]) <= {"passed", "reward", "reasons", "settings"}
    assert (out / rows[0]["image"]).is_file() and "threshold" in (out / "report.html").read_text()
    # the same as judging with that scorer from the start (same batches, same images)
    direct = run_eval(world["config"](world["root"] / "direct", *judge))
    assert read_jsonl(out / "samples.jsonl") == read_jsonl(world["root"] / "direct" / "samples.jsonl")
    for key in NUMBERS:
        assert json.loads((out / "results.json").read_text())[key] == json.loads(json.dumps(direct[key]))
    # anything but the judges is refused, in one line
    assert main(["rejudge", "--from", str(one), "--out", str(world["root"] / "x"), "generation.seed=3"]) == 2


def test_pooled_consistency_judge_gives_the_verdicts_of_one_process(world):
    from hfpc_eval.generators import load_products
    from hfpc_eval.judging import PooledConsistencyChecker, build_scorer, close_judges

    from hfpc_reward.scorer import ScorerConfig

    config = world["config"](world["root"] / "unused")
    products = {p.product_id: p for p in load_products(config.manifest, "")[0]}
    rows = latest_samples(world["root"] / "one" / "samples.jsonl")[:: K - 1]
    pairs = [
        (products[r["product_id"]], Image.open(world["root"] / "one" / r["image"]).convert("RGB"))
        for r in rows
    ]
    inputs = ([p.image for p, _ in pairs], [g for _, g in pairs], [p.mask for p, _ in pairs])
    pooled = build_scorer(ScorerConfig(), consistency_workers=2)
    try:
        assert isinstance(pooled.checker, PooledConsistencyChecker)
        in_pool = [result.to_record() for result in pooled.score(*inputs)]
    finally:
        close_judges(pooled)
    in_process = [result.to_record() for result in build_scorer(ScorerConfig()).score(*inputs)]
    assert in_pool == in_process and len(in_pool) == len(rows) >= 8


def test_the_command_line_resumes_only_when_asked(world, tmp_path, capsys):
    from hfpc_eval.__main__ import main

    config_file = tmp_path / "one.yaml"
    config_file.write_text(yaml.safe_dump(config_to_dict(world["config"](world["root"] / "one"))))
    assert main(["run", "--config", str(config_file)]) == 2  # a fresh run never writes over a finished one
    assert (
        main(["run", "--config", str(config_file), "--resume"]) == 0
    )  # nothing left to make: no model loads
    results = json.loads((world["root"] / "one" / "results.json").read_text())
    assert results["meta"]["counts"]["generated_this_run"] == 0
    for key in NUMBERS:
        assert results[key] == json.loads(json.dumps(world["reference"][key]))
    assert "report:" in capsys.readouterr().out


def test_rejudge_keeps_going_past_an_unreadable_image(world):
    import shutil

    from hfpc_eval.rejudge import rejudge_config, rejudge_run

    source = world["root"] / "broken"
    shutil.copytree(world["root"] / "one", source)
    first = read_jsonl(source / "samples.jsonl")[0]
    (source / first["image"]).write_bytes(b"not a png")
    out = world["root"] / "broken-rejudged"
    results = rejudge_run(source, rejudge_config(source, out, overrides=["scorer.policy.threshold=0.0"]))
    rows = read_jsonl(out / "samples.jsonl")
    assert rows[0]["retry"] is True and "image of the source run" in rows[0]["error"]
    assert all(row["error"] is None for row in rows[1:]) and len(rows) == 2 * 4 * K
    assert results["versions"]["base"]["n_errors"] == 1
