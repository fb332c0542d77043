"""`hfpc finetune` as a user meets it: a broken reward stops it early and loudly, the run owns its folder and
resumes only what it made, several rewards sum with weights, and the run leaves a tracker log, captioned
grids and a LoRA model card behind (tiny SD-inpainting kit, CPU, offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from hfpc_finetune.config import FinetuneConfig, RewardConfig
from hfpc_finetune.rewards import build_reward, probe_reward, resolve_reward
from PIL import Image
from test_finetune import make_config, tiny_kit  # noqa: F401 (tiny_kit is a fixture)

from hfpc_reward.config import ConfigError, load_config
from hfpc_reward.data.manifest import read_jsonl
from hfpc_reward.runs import ResumeMismatchError, RunLockedError, RunOutput

# one epoch of 8 samples: seconds on the tiny kit
QUICK = {
    "sample": {"samples_per_epoch": 8, "batch_size": 4},
    "train": {"epochs": 1, "group_size": 4, "train_batch_size": 4, "samples_per_step": 8},
}


def crashes_on_generated_images(*, prompts, completions, image, **kwargs):
    """A reward that judges the probe (completions are the product photos) but crashes on every sample."""
    if all(c is o for c, o in zip(completions, image)):
        return [0.5] * len(prompts)
    raise RuntimeError("judge crashed on a generated image")


def always_one(*, prompts, completions, image, product_mask=None, offset=0.0, **kwargs):
    """A TRL-style reward function named as module:function in a config (with a bound keyword)."""
    return [1.0 + offset] * len(prompts)


def write_config(tiny_kit, tmp_path, reward: dict, **sections) -> str:  # noqa: F811
    """The kit's config with QUICK sizes and `reward` as the whole reward section; returns its path."""
    values = json.loads(json.dumps(tiny_kit[1]))
    values["run"]["out_dir"] = str(tmp_path / "out")
    values["reward"] = reward
    for section, fields in {**QUICK, **sections}.items():
        values.setdefault(section, {}).update(fields)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def finetune(argv: list[str]) -> int:
    from hfpc_finetune.__main__ import main

    return main(argv)


def test_a_missing_reward_model_folder_stops_before_any_model_loads(tiny_kit, tmp_path, caplog):  # noqa: F811
    scorer = tmp_path / "scorer.yaml"
    scorer.write_text(yaml.safe_dump({"reward_model": {"path": str(tmp_path / "no_such_model")}}))
    config = write_config(tiny_kit, tmp_path, {"name": "hfpc", "kwargs": {"config": str(scorer)}})
    code = finetune(["--config", config])
    assert code == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "no_such_model" in errors[0].getMessage()
    assert "Traceback" not in caplog.text
    assert not (tmp_path / "out").exists()  # a run that cannot start leaves nothing behind


@pytest.mark.parametrize(
    "override, message",
    [
        ("run.seed=-1", "run.seed must be >= 0"),
        ("sample.num_steps=2000", "sample.num_steps=2000 exceeds the scheduler's 1000 training timesteps"),
        ("model.lora_targets=[to_qq]", "model.lora_targets=['to_qq'] match no module of the UNet"),
    ],
)
def test_a_setting_the_run_cannot_use_is_one_line_exit_2(tiny_kit, tmp_path, caplog, override, message):  # noqa: F811
    config = write_config(tiny_kit, tmp_path, {"name": "background_brightness"})
    assert finetune(["--config", config, override]) == 2
    assert message in caplog.text and "Traceback" not in caplog.text
    assert not (tmp_path / "out").exists()  # the corrected command runs without --overwrite


@pytest.mark.parametrize(
    "name, message",
    [
        ("hfcp", "unknown reward 'hfcp'"),
        ("mypkg:fn", "cannot import module 'mypkg'"),
        ("hfpc_finetune.rewards:NoSuchReward", "has no 'NoSuchReward'"),
    ],
)
def test_a_reward_name_that_does_not_resolve_is_one_line_exit_2(tiny_kit, tmp_path, caplog, name, message):  # noqa: F811
    assert finetune(["--config", write_config(tiny_kit, tmp_path, {"name": name})]) == 2
    assert message in caplog.text and "Traceback" not in caplog.text
    assert not (tmp_path / "out").exists()  # refused before the run took its folder


def test_the_probe_reports_the_rewards_first_error_and_refuses_a_reward_that_always_abstains(tiny_kit):  # noqa: F811
    from hfpc_finetune.data import load_products

    config = make_config(tiny_kit, "unused")
    products = load_products(config.data)

    def broken(**kwargs):
        raise OSError("reward model folder /models/x does not exist")

    with pytest.raises(ValueError, match="probe batch of 4 product photos.*OSError: reward model folder"):
        probe_reward(broken, products)
    with pytest.raises(ValueError, match="abstained"):
        probe_reward(lambda prompts, **kwargs: [None] * len(prompts), products)


def test_the_probe_covers_distinct_products_not_just_the_first_rows(tmp_path):
    from hfpc_finetune.config import DataConfig
    from hfpc_finetune.data import load_products
    from hfpc_finetune.rewards import PROBE_ITEMS

    rows = []
    for product_id, category in [("mug", "kitchen"), ("lamp", "home"), ("boot", "shoes")]:
        cutout = np.zeros((16, 16, 4), np.uint8)
        cutout[5:11, 5:11] = (200, 40, 40, 255)  # the product; the transparent rest is the background
        Image.fromarray(cutout).save(tmp_path / f"{product_id}.png")
        rows.append({"origin": f"{product_id}.png", "product_id": product_id, "category": category})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    # two prompts per product: the first 4 (product, prompt) items are only mug and lamp
    products = load_products(DataConfig(manifest=str(manifest), prompts=["a", "b"], resolution=16))
    assert [item.product_id for item in products[:PROBE_ITEMS]] == ["mug", "mug", "lamp", "lamp"]

    def no_settings_for_shoes(*, prompts, category, **kwargs):
        thresholds = {"kitchen": 0.5, "home": 0.5}  # a per-category setting the user forgot for shoes
        return [thresholds[c] for c in category]

    with pytest.raises(ValueError, match="probe batch of 4 product photos.*KeyError: 'shoes'"):
        probe_reward(no_settings_for_shoes, products)
    # every product first, in manifest order, then the rest in order; the probe's size stays PROBE_ITEMS
    from hfpc_finetune.rewards import probe_items

    assert [item.key for item in probe_items(products)] == ["mug|a", "lamp|a", "boot|a", "mug|b"]
    assert [item.key for item in probe_items(products[:3])] == ["mug|a", "lamp|a", "mug|b"]


def test_an_epoch_of_abstentions_stops_the_run_with_the_first_error(tiny_kit, tmp_path, caplog):  # noqa: F811
    config = write_config(tiny_kit, tmp_path, {"name": f"{__name__}:crashes_on_generated_images"})
    code = finetune(["--config", config])
    assert code == 2
    assert "abstained on 8 of 8 samples" in caplog.text
    assert "judge crashed on a generated image" in caplog.text  # the first error, not just "nan"
    assert "Traceback" not in caplog.text
    assert not (tmp_path / "out" / "lora").exists()  # nothing learned, nothing written


def test_rewards_sum_with_weights_and_a_sample_abstains_when_any_term_does():
    funcs = [
        {"name": f"{__name__}:always_one", "weight": 2.0, "kwargs": {"offset": 0.5}},
        {"name": "background_brightness", "weight": -1.0},
    ]
    config = load_config(FinetuneConfig, None, [f"reward.funcs={json.dumps(funcs)}"]).reward
    reward = build_reward(resolve_reward(config))
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    white, black = Image.new("RGB", (8, 8), "white"), Image.new("RGB", (8, 8), "black")
    logged = {}
    values = reward(
        prompts=["a", "b", "c"],
        completions=[white, black, white],
        image=[white] * 3,
        product_mask=[mask, mask, "missing.png"],  # the third mask is unreadable: brightness abstains
        log_metric=logged.__setitem__,
    )
    assert values[:2] == pytest.approx([2.0 * 1.5 - 1.0, 2.0 * 1.5 - 0.0]) and values[2] is None
    assert logged[f"{__name__}:always_one"] == pytest.approx(1.5)
    with pytest.raises(ConfigError, match="not both"):
        load_config(
            FinetuneConfig, None, ["reward.name=background_brightness", f"reward.funcs={json.dumps(funcs)}"]
        )
    assert [t.name for t in RewardConfig(name="background_colour").terms()] == ["background_colour"]


def test_the_run_owns_its_folder_and_resume_refuses_changed_settings_by_name(tiny_kit, tmp_path, caplog):  # noqa: F811
    from hfpc_finetune import train

    out = tmp_path / "out"
    config = make_config(tiny_kit, out, **QUICK)
    holder = RunOutput(out, {}, resume=False, is_main_process=True, folder=True)  # another run's lock
    with holder, pytest.raises(RunLockedError, match="another run is writing"):
        train(config)
    first = train(config, overwrite=True)  # the folder holds the other run's stamp
    with pytest.raises(ValueError, match="--overwrite"):
        train(config)  # a fresh run over a finished one is refused
    changed = make_config(
        tiny_kit,
        out,
        **{**QUICK, "train": {**QUICK["train"], "learning_rate": 0.5}, "reward": {"kwargs": {"target": 1.0}}},
    )
    with pytest.raises(ResumeMismatchError) as refused:
        train(changed, resume=True)
    assert "train.learning_rate (0.1 -> 0.5)" in str(refused.value)
    assert "reward.kwargs.target (0.0 -> 1.0)" in str(refused.value)
    # safe changes: more epochs, another sampling batch size, no tracker; the log is not duplicated
    longer = make_config(
        tiny_kit,
        out,
        sample={**QUICK["sample"], "batch_size": 8},
        train={**QUICK["train"], "epochs": 2},
        run={"report_to": "none", "resume": "latest"},  # the config's way of saying --resume
    )
    resumed = train(longer)
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [0, 1]
    assert resumed.first_reward == first.first_reward and resumed.epochs == 2
    stamp = json.loads((out / "run.json").read_text())
    assert stamp["resumes"] == 1 and stamp["settings"]["train"]["epochs"] == 2
    fresh = train(config, overwrite=True)
    assert fresh.epochs == 1 and [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [0]


def test_resume_refuses_a_manifest_edited_in_place(tiny_kit, tmp_path):  # noqa: F811
    """Same manifest path, other prompts: the settings alone are equal, the stamped content hash is not."""
    from hfpc_finetune import train

    source = tiny_kit[0] / "products"
    rows = [json.loads(line) for line in (source / "manifest.jsonl").read_text().splitlines()]
    rows = [{**row, "origin": str(source / row["origin"]), "mask": str(source / row["mask"])} for row in rows]
    manifest = tmp_path / "products.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = make_config(tiny_kit, tmp_path / "out", **QUICK, data={"manifest": str(manifest)})
    train(config)
    manifest.write_text("".join(json.dumps({**row, "prompt": "on the moon"}) + "\n" for row in rows))
    with pytest.raises(ResumeMismatchError, match="input_sha256.data.manifest"):
        train(config, resume=True)


def test_a_run_leaves_a_tracker_log_captioned_grids_and_a_model_card(tiny_kit, tmp_path):  # noqa: F811
    from hfpc_finetune import train

    out = tmp_path / "out"
    summary = train(make_config(tiny_kit, out, **QUICK, run={"grid_every": 1, "report_to": "tensorboard"}))
    events = list((out / "logs").rglob("events.out.tfevents.*"))
    assert events, "tensorboard wrote no event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0].parent), size_guidance={"images": 0})
    accumulator.Reload()
    assert "reward_mean" in accumulator.Tags()["scalars"] and "samples" in accumulator.Tags()["images"]
    grid = Image.open(out / "grids" / "epoch_0000.png")
    assert grid.width >= 8 * 128  # 8 samples, enlarged so that their reward captions fit
    card = (out / "lora" / "README.md").read_text()
    stamp = json.loads((out / "run.json").read_text())
    assert stamp["settings_hash"] in card and "1 x background_brightness" in card
    assert f"{summary.first_reward:.4g}" in card and "library_name: diffusers" in card
    assert stamp["finished_epochs"] == 1 and np.isfinite(stamp["reward_gain"])


def test_push_to_hub_needs_a_repository_id():
    with pytest.raises(ConfigError, match="hub_model_id"):
        load_config(FinetuneConfig, None, ["run.push_to_hub=true"])
    with pytest.raises(ConfigError, match="max_abstain_fraction"):
        load_config(FinetuneConfig, None, ["reward.max_abstain_fraction=1.0"])


def test_help_lists_every_config_field_and_print_config_resolves_overrides(capsys):
    with pytest.raises(SystemExit) as done:
        finetune(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "reward.max_abstain_fraction = 0.5  # an epoch in which a larger share" in text
    assert "run.report_to = tensorboard" in text and "may differ only in: train.epochs" in " ".join(
        text.split()
    )
    assert finetune(["--print-config", "train.epochs=3", "--resume"]) == 0  # options after overrides
    assert yaml.safe_load(capsys.readouterr().out)["train"]["epochs"] == 3


def test_an_output_inside_the_pipeline_folder_is_refused_and_a_hub_id_is_no_input(tiny_kit, tmp_path):  # noqa: F811
    from hfpc_finetune import train
    from hfpc_finetune.run_folder import local_folders

    from hfpc_reward.runs import OutputIsInputError

    pipeline = tiny_kit[1]["model"]["pretrained"]
    with pytest.raises(OutputIsInputError, match="choose an --out outside the inputs"):
        train(make_config(tiny_kit, f"{pipeline}/run", **QUICK))
    assert local_folders("stable-diffusion-v1-5/stable-diffusion-inpainting") == []


def test_a_tracker_asked_for_by_name_must_be_installed():
    import importlib.util

    from hfpc_finetune.tracking import TrackerError, resolve_tracker

    assert resolve_tracker("none") is None
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(TrackerError, match="pip install wandb"):
            resolve_tracker("wandb")
    with pytest.raises(ConfigError, match="report_to must be one of"):
        load_config(FinetuneConfig, None, ["run.report_to=mlflow"])
