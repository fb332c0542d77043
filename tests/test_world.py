"""The mini product-photo world, its oracle and the mini generator's training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hfpc_reward.sample.oracle import Oracle, validate
from hfpc_reward.sample.world import (
    FLAWS,
    SCENE_KINDS,
    SCENES,
    prompt_for,
    render,
    scene_of_prompt,
    world_products,
)


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    return Oracle.fit(renders_per_kind=60, seed=0)


def test_splits_are_disjoint_and_reproducible():
    train, heldout = world_products("train", 30), world_products("heldout", 30)
    assert not {p.product_id for p in train} & {p.product_id for p in heldout}
    assert not {p.spec for p in train} & {p.spec for p in heldout}
    assert world_products("train", 5) == train[:5]
    first = render(train[0], "lawn", np.random.default_rng(3))
    again = render(train[0], "lawn", np.random.default_rng(3))
    np.testing.assert_array_equal(first.image, again.image)
    assert first.image.shape == (64, 64, 3) and first.product_mask.any() and not first.product_mask.all()


def test_prompts_name_their_scene_and_wrong_scene_renders_lie():
    assert len(SCENE_KINDS) >= 6
    for kind in SCENE_KINDS:
        assert scene_of_prompt(prompt_for("bottle", kind)) == kind
    assert scene_of_prompt("a bottle on the moon") is None
    product = world_products("train", 1)[0]
    item = render(product, "night", np.random.default_rng(0), flaw="wrong_scene")
    assert item.scene == "night" and scene_of_prompt(item.prompt) not in (None, "night")
    with pytest.raises(ValueError, match="flaw must be one of"):
        render(product, "night", np.random.default_rng(0), flaw="smudge")


def test_oracle_recognises_scenes_and_catches_flaws_on_heldout_products(oracle):
    report = validate(oracle, renders_per_kind=15, seed=5)
    assert report["scene_accuracy"] >= 0.95
    assert report["pass_rate"]["none"] >= 0.95
    assert report["pass_rate"]["wrong_scene"] <= 0.05
    assert report["pass_rate"]["bleed"] <= 0.3
    assert report["pass_rate"]["blotch"] <= 0.3


def test_oracle_reasons_name_the_failure(oracle):
    product = world_products("heldout", 3)[2]
    item = render(product, "brick", np.random.default_rng(1))
    original = np.where(item.product_mask[..., None], item.image, 1.0)
    good = oracle.judge(item.image, original, item.product_mask, item.prompt)
    assert good.passed and good.reasons == [] and good.scene_predicted == "brick"
    wrong = oracle.judge(item.image, original, item.product_mask, prompt_for("box", "beach"))
    assert not wrong.passed and "wrong scene" in wrong.reasons[0]
    uint8 = oracle.judge((item.image * 255).astype(np.uint8), original, item.product_mask, item.prompt)
    assert uint8.passed


def test_oracle_json_round_trip(oracle, tmp_path):
    path = oracle.save(tmp_path / "oracle.json")
    assert json.loads(path.read_text())["limits"]["bleed"] > 0
    loaded = Oracle.load(path)
    item = render(world_products("heldout", 1)[0], "flowers", np.random.default_rng(2), flaw="blotch")
    original = np.where(item.product_mask[..., None], item.image, 1.0)
    assert (
        loaded.judge(item.image, original, item.product_mask, item.prompt).to_record()
        == oracle.judge(item.image, original, item.product_mask, item.prompt).to_record()
    )
    assert set(FLAWS) >= {"none", "wrong_scene", "bleed", "blotch"} and set(SCENES) == set(SCENE_KINDS)


def test_generator_training_loss_falls_resumes_and_loads_as_a_pipeline(tmp_path):
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    from hfpc_reward.sample.generator import GeneratorConfig, train_generator

    config = GeneratorConfig(
        out_dir=str(tmp_path / "gen"),
        renders=96,
        vae_steps=30,
        vae_batch_size=8,
        unet_steps=40,
        unet_batch_size=16,
        log_every=5,
        save_every=20,
    )
    path = train_generator(config)
    rows = [json.loads(line) for line in (tmp_path / "gen" / "metrics.jsonl").read_text().splitlines()]
    vae = [r["mse"] for r in rows if r["stage"] == "vae"]
    unet = [r["loss"] for r in rows if r["stage"] == "unet"]
    assert vae[-1] < 0.6 * vae[0]
    assert np.mean(unet[-3:]) < 0.8 * unet[0]
    # a finished run extends from its saved state when asked for more steps (no VAE retraining)
    config.unet_steps = 50
    train_generator(config)
    rows = [json.loads(line) for line in (tmp_path / "gen" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["stage"] == "unet"][-1] == 50
    assert sum(r["stage"] == "vae" for r in rows) == len(vae)

    pipe = StableDiffusionInpaintPipeline.from_pretrained(path, safety_checker=None)
    assert pipe.unet.config.in_channels == 9
    assert pipe.tokenizer.tokenize("a jar on a lawn") == ["a</w>", "jar</w>", "on</w>", "a</w>", "lawn</w>"]
    product = world_products("train", 1)[0]
    item = render(product, "lawn", np.random.default_rng(0))
    image = Image.fromarray((item.image * 255).astype(np.uint8))
    mask = Image.fromarray(np.where(item.product_mask, 0, 255).astype(np.uint8))
    out = pipe(prompt=item.prompt, image=image, mask_image=mask, height=64, width=64, num_inference_steps=2)
    assert out.images[0].size == (64, 64)


def test_training_inputs_reach_the_unet_in_the_order_the_pipeline_uses():
    """inpainting_inputs feeds denoising_loss directly: on the committed generator (trained with the
    pipeline's [latents, mask, masked latents] layout) that loss is far below the one with mask and masked
    latents swapped, as an earlier version of inpainting_inputs returned them."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionInpaintPipeline

    from hfpc_reward.sample.generator import (
        GeneratorConfig,
        denoising_loss,
        inpainting_inputs,
        training_renders,
    )

    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        Path(__file__).resolve().parents[1] / "assets" / "mini_world" / "pipeline", safety_checker=None
    )
    images, masks, prompts = training_renders(GeneratorConfig(), 32, stream=9)
    inputs = inpainting_inputs(pipe.vae, images, masks)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    def loss(parts) -> float:
        with torch.no_grad():
            generator = torch.Generator().manual_seed(0)
            return float(
                denoising_loss(
                    pipe.unet, pipe.text_encoder, pipe.tokenizer, scheduler, parts, prompts, generator, 0.0
                )
            )

    latents, repaint, masked = inputs
    assert repaint.shape[1] == 1 and masked.shape[1] == 4
    assert loss(inputs) < 0.7 * loss((latents, masked, repaint))  # the earlier, wrong layout


def test_labelling_refuses_rows_whose_generations_would_share_file_names(oracle, tmp_path):
    """Without product_id (default: the origin's name) or with one repeated, every row's generations were
    saved under one name, each overwriting the last while the labels described other images."""
    from hfpc_reward.data.manifest import ManifestError
    from hfpc_reward.sample.annotators import label_generations

    manifest = tmp_path / "products.jsonl"
    rows = [
        {"origin": "t0.png", "mask": "m0.png", "prompt": f"a bottle on a {scene}"}
        for scene in ("lawn", "beach")
    ]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(
        ManifestError, match=r"products.jsonl:2: product_id 't0' also names line 1's generations"
    ):
        label_generations(tmp_path / "no-pipeline-needed", manifest, oracle, tmp_path / "out")


def test_generator_resumed_in_its_vae_stage_equals_an_uninterrupted_run_and_other_settings_are_refused(
    tmp_path, monkeypatch
):
    """The VAE's posterior draws come from torch's global generator: its state is saved with the checkpoint
    (a resume drew other noise and trained other weights). A resume with other settings is refused (it
    returned the old run's pipeline)."""
    from safetensors.torch import load_file

    from hfpc_reward.runs import ResumeMismatchError
    from hfpc_reward.sample.generator import GeneratorConfig, GeneratorTrainer, train_generator

    sizes = {"renders": 16, "vae_steps": 6, "vae_batch_size": 4, "unet_steps": 2, "unet_batch_size": 4}
    sizes |= {"train_products": 4, "save_every": 3, "log_every": 1}
    whole = train_generator(GeneratorConfig(out_dir=str(tmp_path / "whole"), **sizes))
    log = GeneratorTrainer._log

    def interrupt_at_vae_step_5(self, record):
        if record == {**record, "stage": "vae", "step": 5}:
            raise KeyboardInterrupt
        log(self, record)

    config = GeneratorConfig(out_dir=str(tmp_path / "resumed"), **sizes)
    with monkeypatch.context() as patch:
        patch.setattr(GeneratorTrainer, "_log", interrupt_at_vae_step_5)
        with pytest.raises(KeyboardInterrupt):
            train_generator(config)
    with pytest.raises(ResumeMismatchError, match=r"seed \(0 -> 1\)"):
        train_generator(GeneratorConfig(out_dir=str(tmp_path / "resumed"), **{**sizes, "seed": 1}))
    resumed = train_generator(config)
    for part in ("vae", "unet"):
        a = load_file(next((Path(whole) / part).glob("*.safetensors")))
        b = load_file(next((Path(resumed) / part).glob("*.safetensors")))
        assert all(torch.equal(a[key], b[key]) for key in a), part
