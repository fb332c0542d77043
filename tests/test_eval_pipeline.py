"""Eval end to end with real diffusers pipelines: the tiny SD-inpainting kit as the base version and a LoRA
folder (diffusers format, as the fine-tuner writes it) on top, judged by the real HFPCScorer."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from hfpc_eval.config import EvalConfig
from hfpc_eval.generators import InpaintPipelineGenerator, Product, canvas_size
from hfpc_eval.samples import latest_samples
from PIL import Image

from hfpc_reward.config import config_to_dict, load_config


def _write_lora(pipeline_dir: Path, out_dir: Path) -> Path:
    """A LoRA (rank 4 on the attention projections) with random non-zero weights, saved in diffusers format."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionInpaintPipeline.from_pretrained(pipeline_dir, safety_checker=None)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    StableDiffusionInpaintPipeline.save_lora_weights(
        out_dir,
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)),
        safe_serialization=True,
    )
    return out_dir


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    from hfpc_reward.testing.tiny_blip import write_tiny_reward_model
    from hfpc_reward.testing.tiny_sd import write_tiny_sd_inpaint

    root = tmp_path_factory.mktemp("kit")
    write_tiny_sd_inpaint(root / "sd")
    reward_model = write_tiny_reward_model(root / "rm")["reward_model_tiny"]["path"]
    lora = _write_lora(root / "sd" / "pipeline", root / "lora")
    return {
        "pipeline": root / "sd" / "pipeline",
        "manifest": root / "sd" / "products" / "manifest.jsonl",
        "lora": lora,
        "root": root,
        "reward_model": reward_model,
        "itm": root / "rm" / "blip",
    }


def _config(kit, out: Path, **overrides) -> EvalConfig:
    versions = [
        {"name": "base", "kind": "pipeline", "path": str(kit["pipeline"])},
        {"name": "lora", "kind": "lora", "path": str(kit["lora"])},
    ]
    items = [
        f"manifest={kit['manifest']}",
        f"out_dir={out}",
        f"generation.base={kit['pipeline']}",
        "generation.samples_per_product=2",
        "generation.resolution=64",
        "generation.num_inference_steps=3",
        "stats.n_resamples=200",
        f"versions={json.dumps(versions)}",
        *[f"{key}={value}" for key, value in overrides.items()],
    ]
    return load_config(EvalConfig, None, items)


def test_canvas_keeps_aspect_in_multiples_of_eight():
    assert canvas_size((1024, 768), 512) == (512, 384)
    assert canvas_size((300, 1000), 512) == (152, 512)


def test_pipeline_generator_repaints_background_only_and_is_seeded(kit):
    from hfpc_reward.images import load_mask, load_rgb

    row = json.loads(kit["manifest"].read_text().splitlines()[0])
    image = load_rgb(kit["manifest"].parent / row["origin"])
    mask = load_mask(kit["manifest"].parent / row["mask"], size=image.size)
    product = Product("p0", row["origin"], image, mask, "a photo on a wooden table", "toy")
    config = _config(kit, kit["root"] / "unused")
    generator = InpaintPipelineGenerator(str(kit["pipeline"]), config.generation)
    first = generator.generate(product, [0, 1], [11, 12])
    again = generator.generate(product, [1], [12])
    assert [im.size for im in first] == [image.size] * 2
    # a sample depends only on its seed (up to float rounding between batch sizes)
    assert np.abs(np.asarray(first[1], float) - np.asarray(again[0], float)).max() <= 3
    assert not np.array_equal(np.asarray(first[0]), np.asarray(first[1]))
    background_change = np.abs(np.asarray(first[0], float) - np.asarray(image, float))[~mask].mean()
    assert background_change > 5.0  # the background was repainted


def test_a_lora_version_paints_with_its_scale(kit):
    """The eval fuses a LoRA into the UNet for speed: scale 0 must paint exactly the base images, scale 1
    what the unfused adapter paints."""
    from diffusers import StableDiffusionInpaintPipeline

    from hfpc_reward.images import load_mask, load_rgb

    row = json.loads(kit["manifest"].read_text().splitlines()[0])
    image = load_rgb(kit["manifest"].parent / row["origin"])
    mask = load_mask(kit["manifest"].parent / row["mask"], size=image.size)
    product = Product("p0", row["origin"], image, mask, "a photo on a wooden table", "toy")
    generation = _config(kit, kit["root"] / "unused").generation
    base = InpaintPipelineGenerator(str(kit["pipeline"]), generation).generate(product, [0], [5])[0]
    lora = str(kit["lora"])
    muted = InpaintPipelineGenerator(str(kit["pipeline"]), generation, lora, 0.0).generate(product, [0], [5])[
        0
    ]
    full = InpaintPipelineGenerator(str(kit["pipeline"]), generation, lora).generate(product, [0], [5])[0]
    unfused = StableDiffusionInpaintPipeline.from_pretrained(str(kit["pipeline"]), safety_checker=None)
    unfused.load_lora_weights(lora)
    unfused.set_progress_bar_config(disable=True)
    expected = InpaintPipelineGenerator(str(kit["pipeline"]), generation)
    expected.pipe = unfused
    reference = expected.generate(product, [0], [5])[0]
    assert np.array_equal(np.asarray(muted), np.asarray(base))
    assert np.abs(np.asarray(full, float) - np.asarray(reference, float)).max() <= 2
    assert np.abs(np.asarray(full, float) - np.asarray(base, float)).max() > 10


def test_base_and_lora_versions_end_to_end(kit, tmp_path_factory, capsys):
    """`hfpc eval run` on the tiny kit: real pipelines, real HFPCScorer (reward model + consistency), ITM."""
    from hfpc_reward.cli import main

    tmp_path = tmp_path_factory.mktemp("run")  # the output folder; the config file lives outside it

    from hfpc_reward.scorer import HFPCScorer

    overrides = {
        "held_out.raw_consistency": "true",
        "held_out.itm_model": kit["itm"],
        "scorer.reward_model.path": kit["reward_model"],
    }
    config = _config(kit, tmp_path, **overrides)
    config_file = tmp_path.parent / f"{tmp_path.name}.yaml"
    config_file.write_text(yaml.safe_dump(config_to_dict(config)))
    assert main(["eval", "run", "--config", str(config_file), "stats.n_resamples=300"]) == 0
    printed, bars = capsys.readouterr()
    assert "Loading pipeline components" not in bars  # the libraries' loading bars are off (no -v)
    assert "lora - base:" in printed and str(tmp_path / "report.html") in printed
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["meta"]["config"]["stats"]["n_resamples"] == 300  # the override reached the run
    scorer = HFPCScorer.from_config(config.scorer)
    rows = latest_samples(tmp_path / "samples.jsonl")
    assert len(rows) == 2 * 4 * 2 and not any(row.get("error") for row in rows)
    by_key = {(row["version"], row["product_id"], row["k"]): row for row in rows}
    for (version, product_id, k), row in by_key.items():
        assert row["seed"] == by_key[("base", product_id, k)]["seed"]
        assert {"product_drift", "background_brightness", "raw_consistent", "itm_match"} <= set(
            row["held_out"]
        )
        assert isinstance(row["background_score"], float) and isinstance(row["reward"], float)
        assert row["passed"] == (
            row["background_score"] >= scorer.threshold
        )  # consistent: background decides
    base_image = np.asarray(Image.open(tmp_path / by_key[("base", "p0", 0)]["image"]))
    lora_image = np.asarray(Image.open(tmp_path / by_key[("lora", "p0", 0)]["image"]))
    assert not np.array_equal(base_image, lora_image)  # the LoRA changes the generator
    # paste-back: the product pixels of every judged image are the original's
    original = np.asarray(Image.open(kit["manifest"].parent / "product_0.png").convert("RGB"))
    mask = np.asarray(Image.open(kit["manifest"].parent / "product_0_mask.png")) > 127
    assert np.array_equal(base_image[mask], original[mask])
    assert all(row["consistent"] for row in rows)  # pasted back => the product is consistent
    for name in ("base", "lora"):
        assert results["versions"][name]["n_samples"] == 8
        assert 0.0 <= results["versions"][name]["pass_rate"]["estimate"] <= 1.0
    assert (tmp_path / "report.html").is_file()
