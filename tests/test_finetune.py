"""DDPO fine-tuning on the tiny SD-inpainting pipeline: policy log-probs, PPO invariants, LoRA round trips,
resume, and learning that really happens (CPU, offline, seeded)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hfpc_finetune.advantages import GroupAdvantages
from hfpc_finetune.config import FinetuneConfig
from hfpc_finetune.data import load_products
from hfpc_finetune.ddim_logprob import ddim_step_with_logprob
from hfpc_finetune.rewards import (
    BackgroundBrightness,
    BackgroundColour,
    build_reward,
    call_reward,
    resolve_reward,
)
from PIL import Image

from hfpc_reward.config import ConfigError, config_from_dict, load_config
from hfpc_reward.data.manifest import read_jsonl


@pytest.fixture(scope="module")
def tiny_kit(tmp_path_factory):
    from hfpc_reward.testing.tiny_sd import write_tiny_sd_inpaint

    root = tmp_path_factory.mktemp("tiny_sd")
    return root, write_tiny_sd_inpaint(root)["finetune_tiny"]


def make_config(tiny_kit, out_dir, **sections) -> FinetuneConfig:
    values = json.loads(json.dumps(tiny_kit[1]))
    values["run"]["out_dir"] = str(out_dir)
    for section, fields in sections.items():
        values.setdefault(section, {}).update(fields)
    return config_from_dict(FinetuneConfig, values)


# small, CFG-on settings for the invariance tests (the learning test uses the kit's own config)
SMALL = {
    "model": {"lora_targets": ["to_q", "to_k", "to_v", "to_out.0", "conv_out"]},
    "sample": {"guidance_scale": 3.0, "samples_per_epoch": 8, "batch_size": 4},
    "train": {"group_size": 4, "train_batch_size": 4, "samples_per_step": 8, "learning_rate": 0.01},
}


def ddim_scheduler(steps_offset=1):
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=steps_offset,
    )


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_step_matches_scheduler_and_logprob_is_the_gaussian_density(prediction_type):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(ddim_scheduler().config, prediction_type=prediction_type)
    scheduler.set_timesteps(6)
    gen = torch.Generator().manual_seed(0)
    sample, output, noise = (torch.randn(3, 4, 8, 8, generator=gen) for _ in range(3))
    for t in scheduler.timesteps:
        expected = scheduler.step(output, t, sample, eta=1.0, variance_noise=noise).prev_sample
        ours = ddim_step_with_logprob(scheduler, output, t, sample, eta=1.0, noise=noise)
        torch.testing.assert_close(ours.prev_sample, expected, rtol=0, atol=1e-6)
        density = (
            torch.distributions.Normal(ours.mean, ours.std).log_prob(ours.prev_sample).mean(dim=(1, 2, 3))
        )
        torch.testing.assert_close(ours.log_prob, density, rtol=1e-5, atol=1e-5)
        rescored = ddim_step_with_logprob(scheduler, output, t, sample, eta=1.0, prev_sample=ours.prev_sample)
        assert torch.equal(rescored.log_prob, ours.log_prob)
    # per-sample timesteps: each row equals the scalar-timestep step of that row
    mixed = scheduler.timesteps[[0, 2, 5]]
    batch = ddim_step_with_logprob(scheduler, output, mixed, sample, noise=noise)
    for row, t in enumerate(mixed):
        single = ddim_step_with_logprob(
            scheduler, output[row : row + 1], t, sample[row : row + 1], noise=noise[row : row + 1]
        )
        torch.testing.assert_close(batch.log_prob[row : row + 1], single.log_prob)


def test_ddim_step_refuses_zero_std_with_the_fix_in_the_message():
    scheduler = ddim_scheduler(steps_offset=0)
    scheduler.set_timesteps(4)
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="steps_offset=1"):
        ddim_step_with_logprob(scheduler, x, scheduler.timesteps[-1], x, noise=x)


def test_products_use_the_background_as_inpainting_mask_and_skip_bad_rows(tiny_kit, tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    base = tiny_kit[0] / "products"
    good = json.loads((base / "manifest.jsonl").read_text().splitlines()[0])
    rows = [
        {**good, "origin": str(base / good["origin"]), "mask": str(base / good["mask"])},
        {"origin": str(tmp_path / "missing.png"), "mask": str(base / good["mask"]), "product_id": "gone"},
    ]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cfg = load_config(
        FinetuneConfig,
        None,
        [f"data.manifest={manifest}", "data.resolution=32", "data.prompts=[on marble,on sand]"],
    )
    items = load_products(cfg.data)
    assert [item.prompt for item in items] == ["on marble", "on sand"]  # bad row skipped, prompts crossed
    assert items[0].key != items[1].key and items[0].image.size == (32, 32)
    inpaint = np.asarray(items[0].inpaint_mask()) > 127
    assert np.array_equal(inpaint, ~items[0].product_mask) and items[0].product_mask.any()


def test_products_refuse_an_inverted_mask_and_a_product_id_naming_two_photos(tiny_kit, tmp_path):
    from hfpc_reward.data.manifest import ManifestError
    from hfpc_reward.images import InvertedMaskError

    base = tiny_kit[0] / "products"
    first, second = (json.loads(line) for line in (base / "manifest.jsonl").read_text().splitlines()[:2])
    rows = [
        {**row, "origin": str(base / row["origin"]), "mask": str(base / row["mask"])}
        for row in (first, second)
    ]
    inverted = tmp_path / "inverted.png"
    Image.fromarray(~(np.asarray(Image.open(rows[1]["mask"]).convert("L")) > 127)).save(inverted)
    manifest = tmp_path / "manifest.jsonl"
    cfg = load_config(FinetuneConfig, None, [f"data.manifest={manifest}", "data.resolution=32"])
    for bad_row, error, problem in (
        ({**rows[1], "mask": str(inverted)}, InvertedMaskError, "manifest.jsonl:2: product_mask covers"),
        ({**rows[1], "product_id": rows[0]["product_id"]}, ManifestError, "manifest.jsonl:2: product_id"),
    ):
        manifest.write_text("".join(json.dumps(row) + "\n" for row in (rows[0], bad_row)))
        with pytest.raises(error, match=problem):
            load_products(cfg.data)


def test_toy_rewards_score_the_background_and_abstain_on_bad_masks():
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    white_bg = np.zeros((8, 8, 3), np.uint8)
    white_bg[~mask] = 255  # product black, background white
    images = [Image.fromarray(white_bg), Image.new("RGB", (8, 8), (0, 0, 0))]
    assert BackgroundBrightness()(
        prompts=["a", "b"], completions=images, image=images, product_mask=[mask, mask]
    ) == pytest.approx([1.0, 0.0])
    assert BackgroundBrightness(target=0.0)(
        prompts=["a"], completions=images[:1], image=None, product_mask=[mask]
    ) == pytest.approx([0.0])
    tensor = torch.zeros(1, 3, 8, 8)
    tensor[:, 0] = 1.0  # red
    assert BackgroundColour((1, 0, 0))(
        prompts=["a"], completions=tensor, image=None, product_mask=[mask]
    ) == pytest.approx([1.0])
    logged = {}
    batch = call_reward(
        BackgroundBrightness(),
        ["a", "b"],
        images,
        images,
        [mask, "missing.png"],
        lambda name, value: logged.setdefault(name, value),
    )
    assert batch.values == [pytest.approx(1.0), None] and batch.error is None
    assert logged["background_brightness_mean"] == pytest.approx(1.0)


def test_rewards_load_by_name():
    from hfpc_finetune.config import RewardConfig

    reward = build_reward(
        resolve_reward(RewardConfig(name="background_colour", kwargs={"target": [0, 0, 0]}))
    )
    assert isinstance(reward.terms[0][2], BackgroundColour)
    with pytest.raises(ValueError, match="background_brightness"):
        resolve_reward(RewardConfig(name="brightnes"))
    classic = {"config": "configs/scorer/classic.yaml", "judges": "consistency"}
    hfpc = build_reward(resolve_reward(RewardConfig(name="hfpc", kwargs=classic)))
    assert hfpc.terms[0][2].__name__ == "hfpc"


def test_group_advantages_normalise_within_groups_and_fall_back_to_the_batch():
    tracker = GroupAdvantages(min_count=2)
    rewards = np.array([1.0, 3.0, 10.0, np.nan, 7.0])
    adv = tracker(["a", "a", "b", "b", "c"], rewards)
    assert adv[:2] == pytest.approx([-1.0, 1.0], abs=1e-5)  # group a: its own mean 2, std 1
    assert adv[3] == 0.0  # abstained
    valid = rewards[np.isfinite(rewards)]
    assert adv[2] == pytest.approx((10.0 - valid.mean()) / valid.std(), abs=1e-5)  # b: 1 valid -> batch stats
    history = GroupAdvantages(min_count=3, history=2)
    history(["a", "a"], np.array([0.0, 2.0]))
    assert history(["a", "a"], np.array([1.0, 1.0]))[0] == pytest.approx(
        0.0, abs=1e-5
    )  # pooled with last epoch
    restored = GroupAdvantages(min_count=3, history=2)
    restored.load_state_dict(json.loads(json.dumps(history.state_dict())))
    assert restored.past == history.past


def test_config_rejects_inconsistent_sizes_with_the_fix():
    with pytest.raises(ConfigError, match="multiple of train.group_size"):
        load_config(
            FinetuneConfig,
            None,
            [
                "sample.samples_per_epoch=24",
                "sample.batch_size=8",
                "train.group_size=16",
                "train.samples_per_step=8",
                "train.train_batch_size=8",
            ],
        )
    with pytest.raises(ConfigError, match="eta must be in"):
        load_config(FinetuneConfig, None, ["sample.eta=1.5"])
    with pytest.raises(ConfigError, match="eta must be > 0 for train.algorithm=ddpo"):
        load_config(FinetuneConfig, None, ["sample.eta=0"])
    with pytest.raises(ConfigError, match=r"train.keep must be in \[1, train.candidates\]"):
        load_config(
            FinetuneConfig, None, ["train.algorithm=reward_filtered", "train.keep=5", "train.candidates=4"]
        )


def test_the_hfpc_reward_drives_a_run_and_reports_its_components(tiny_kit, tmp_path):
    from pathlib import Path

    from hfpc_finetune import train

    scorer_config = Path(__file__).resolve().parents[1] / "configs" / "scorer" / "classic.yaml"
    config = make_config(
        tiny_kit,
        tmp_path / "hfpc",
        sample={"samples_per_epoch": 8},
        train={"epochs": 1, "samples_per_step": 8},
        reward={"name": "hfpc", "kwargs": {"config": str(scorer_config), "judges": "consistency"}},
    )
    summary = train(config)
    record = read_jsonl(tmp_path / "hfpc" / "metrics.jsonl")[0]
    assert 0.0 <= summary.first_reward <= 1.0 and record["reward_abstained"] == 0
    assert "reward/hfpc/pass_rate" in record


@pytest.fixture(scope="module")
def trained(tiny_kit, tmp_path_factory):
    """One epoch of DDPO with CFG, a KL penalty and two optimizer steps; parameters snapshotted before."""
    from hfpc_finetune.ddpo import DDPOTrainer

    out = tmp_path_factory.mktemp("run_small")
    settings = {**SMALL, "train": {**SMALL["train"], "samples_per_step": 4, "epochs": 1, "kl_coef": 0.1}}
    trainer = DDPOTrainer(make_config(tiny_kit, out, **settings))
    base = {name: p.detach().clone() for name, p in trainer.unet.named_parameters() if "lora" not in name}
    lora = {name: p.detach().clone() for name, p in trainer.unet.named_parameters() if "lora" in name}
    summary = trainer.fit()
    return trainer, base, lora, summary


def test_ratio_is_exactly_one_before_the_first_update(trained):
    trainer = trained[0]
    record = read_jsonl(trainer.out_dir / "metrics.jsonl")[0]
    assert record["ratio_deviation_before_update"] == 0.0
    assert record["approx_kl"] > 0.0  # the second optimizer step saw a changed policy
    assert record["kl"] > 0.0  # ... which has moved away from the reference (LoRA disabled)
    assert set(record) >= {
        "reward_mean",
        "reward_std",
        "product_drift",
        "clipfrac",
        "grad_norm",
        "time_sample",
        "time_train",
        "reward/background_brightness_mean",
    }
    assert json.loads((trainer.out_dir / "run.json").read_text())["settings"]["train"]["kl_coef"] == 0.1
    assert list((trainer.out_dir / "grids").glob("*.png"))


def test_lora_changes_and_base_weights_do_not(trained):
    trainer, base, lora, _ = trained
    for name, p in trainer.unet.named_parameters():
        if name in base:
            assert torch.equal(p, base[name]), name
    changed = [
        name for name, p in trainer.unet.named_parameters() if name in lora and not torch.equal(p, lora[name])
    ]
    assert any("lora_B" in name for name in changed)


def test_saved_lora_loads_into_a_fresh_pipeline_with_identical_images(trained, tiny_kit):
    from diffusers import StableDiffusionInpaintPipeline

    trainer, _, _, summary = trained
    item = trainer.products[0]
    kwargs = {
        "prompt": [item.prompt],
        "image": item.image,
        "mask_image": item.inpaint_mask(),
        "height": 32,
        "width": 32,
        "num_inference_steps": 4,
        "guidance_scale": 3.0,
        "output_type": "np",
    }
    trainer.unet.eval()
    expected = trainer.pipe(generator=torch.Generator().manual_seed(3), **kwargs).images
    fresh = StableDiffusionInpaintPipeline.from_pretrained(
        tiny_kit[1]["model"]["pretrained"], safety_checker=None
    )
    fresh.set_progress_bar_config(disable=True)
    before = fresh(generator=torch.Generator().manual_seed(3), **kwargs).images
    fresh.load_lora_weights(summary.lora_dir)
    after = fresh(generator=torch.Generator().manual_seed(3), **kwargs).images
    assert np.array_equal(after, expected)
    assert not np.array_equal(before, expected)  # the LoRA really changes the images


def test_resume_reproduces_the_uninterrupted_run(tiny_kit, tmp_path):
    from hfpc_finetune import train
    from safetensors.torch import load_file

    settings = {**SMALL, "train": {**SMALL["train"], "epochs": 3}}
    full = train(make_config(tiny_kit, tmp_path / "full", **settings))
    train(
        make_config(
            tiny_kit, tmp_path / "resumed", **{**settings, "train": {**settings["train"], "epochs": 2}}
        )
    )
    with (tmp_path / "resumed" / "metrics.jsonl").open("a") as handle:
        handle.write('{"epoch": 2, "partial')  # a line torn by the interruption
    resumed = train(make_config(tiny_kit, tmp_path / "resumed", **settings), resume=True)
    assert resumed.epochs == full.epochs == 3
    keys = ("epoch", "reward_mean", "approx_kl", "grad_norm", "product_drift")
    full_records = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    resumed_records = read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    assert [{k: r[k] for k in keys} for r in full_records] == [
        {k: r[k] for k in keys} for r in resumed_records
    ]
    lora_a = load_file(tmp_path / "full" / "lora" / "pytorch_lora_weights.safetensors")
    lora_b = load_file(tmp_path / "resumed" / "lora" / "pytorch_lora_weights.safetensors")
    assert lora_a.keys() == lora_b.keys() and all(torch.equal(lora_a[k], lora_b[k]) for k in lora_a)


def test_learning_is_real_on_the_tiny_pipeline(tiny_kit, tmp_path):
    """The kit's config (dark-background brightness reward, 8 epochs x 32 samples) must raise the reward clearly."""
    from hfpc_finetune import train

    summary = train(make_config(tiny_kit, tmp_path / "learn"))
    records = read_jsonl(tmp_path / "learn" / "metrics.jsonl")
    first, last = records[0], float(np.mean([r["reward_mean"] for r in records[-2:]]))
    print(
        f"\nmean reward: first epoch {first['reward_mean']:.4f} (std {first['reward_std']:.4f}) -> "
        f"last two epochs {last:.4f}, gain {last - first['reward_mean']:+.4f}"
    )
    assert summary.epochs == 8
    assert last - first["reward_mean"] > max(0.05, 4 * first["reward_std"])


def test_two_processes_give_the_same_lora_update_as_one(tiny_kit, tmp_path):
    """Two CPU processes (gloo) == one process: the same samples in each of an epoch's two optimizer steps
    (one global order, whichever process holds a sample) and LoRA gradients summed across processes."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    import yaml
    from hfpc_finetune import train
    from safetensors.torch import load_file

    two_steps = {"epochs": 1, "train_batch_size": 2, "samples_per_step": 4}  # 8 samples: 2 steps of 4
    settings = {**SMALL, "train": {**SMALL["train"], **two_steps}}
    config = make_config(tiny_kit, tmp_path / "one", **settings)
    train(config)
    values = json.loads(json.dumps(tiny_kit[1]))
    for section, fields in settings.items():
        values[section].update(fields)
    values["run"]["out_dir"] = str(tmp_path / "two")
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(values))
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    with socket.socket() as probe:  # a free port for the gloo rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # torchrun = what `accelerate launch --multi_gpu` runs; on CPUs accelerate's own launcher needs mpirun
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(port),
            "-m",
            "hfpc_finetune",
            "--config",
            str(tmp_path / "two.yaml"),
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "process 1 of 2" in result.stderr
    one = load_file(tmp_path / "one" / "lora" / "pytorch_lora_weights.safetensors")
    two = load_file(tmp_path / "two" / "lora" / "pytorch_lora_weights.safetensors")
    assert one.keys() == two.keys()
    initial_b_is_zero = [k for k in one if "lora_B" in k]
    assert any(one[k].abs().max() > 0 for k in initial_b_is_zero)  # an update happened
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-3, atol=1e-4)  # Adam steps are ~lr = 1e-2
    metrics_one = read_jsonl(tmp_path / "one" / "metrics.jsonl")[0]
    metrics_two = read_jsonl(tmp_path / "two" / "metrics.jsonl")[0]
    assert metrics_two["reward_mean"] == pytest.approx(metrics_one["reward_mean"], abs=1e-6)


@pytest.mark.slow
def test_learning_with_attention_lora_and_guidance(tiny_kit, tmp_path):
    """The SD-style setting (LoRA on attention + output conv, CFG 3) also learns, over more epochs."""
    from hfpc_finetune import train

    config = make_config(
        tiny_kit,
        tmp_path / "learn_cfg",
        model={"lora_targets": SMALL["model"]["lora_targets"]},
        sample={"guidance_scale": 3.0},
        train={"epochs": 12, "learning_rate": 0.05},
    )
    train(config)
    records = read_jsonl(tmp_path / "learn_cfg" / "metrics.jsonl")
    first, last = records[0]["reward_mean"], float(np.mean([r["reward_mean"] for r in records[-3:]]))
    print(
        f"\nmean reward with CFG: first epoch {first:.4f} -> last three epochs {last:.4f} ({last - first:+.4f})"
    )
    assert last - first > 0.05
