"""DDPO mechanics a user's GPU bill depends on: CFG is one batched UNet call per step, `timestep_fraction`
trains a seeded subset of each sample's steps, gradient checkpointing is off unless asked, and the sample
grid captions carry each image's reward and primary reason (tiny pipeline, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hfpc_finetune.ppo import clipped_surrogate, step_choice
from hfpc_finetune.sampling import prepare_conditioning, sample_with_logprob
from hfpc_finetune.tracking import primary_reasons, sample_grid
from PIL import Image


@pytest.fixture(scope="module")
def tiny_pipe():
    from hfpc_reward.testing.tiny_sd import build_tiny_sd_inpaint

    pipe = build_tiny_sd_inpaint()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_guidance_is_one_batched_unet_call_per_denoising_step(tiny_pipe):
    batches = []
    hook = tiny_pipe.unet.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    try:
        image = Image.new("RGB", (32, 32), "grey")
        mask = Image.new("L", (32, 32), 255)
        cond = prepare_conditioning(
            tiny_pipe, ["a", "b"], [image] * 2, [mask] * 2, "", 32, "cpu", torch.float32
        )
        trajectory = sample_with_logprob(tiny_pipe, tiny_pipe.scheduler, cond, [1, 2], 3, 3.0, 1.0)
    finally:
        hook.remove()
    assert batches == [4, 4, 4]  # 3 steps, each one call on [unconditional, conditional] x 2 samples
    assert trajectory.latents.shape[:2] == (2, 4) and trajectory.log_probs.shape == (2, 3)


def test_timestep_fraction_trains_a_seeded_subset_of_distinct_steps_per_sample():
    choice = step_choice(10, 5, lambda g: 1000 + g, range(4, 8))  # 4 samples, 5 of 10 steps each
    assert choice.shape == (4, 5)
    assert all(len(set(row.tolist())) == 5 for row in choice)  # distinct steps within a sample
    assert len({tuple(row.tolist()) for row in choice}) > 1  # samples differ
    assert torch.equal(choice, step_choice(10, 5, lambda g: 1000 + g, range(4, 8)))  # reproducible (resume)
    assert sorted(step_choice(10, 10, lambda g: g, range(1))[0].tolist()) == list(range(10))  # fraction 1


def test_ppo_ratio_is_one_and_clipping_bounds_the_surrogate():
    log_prob = torch.tensor([-1.0, -2.0])
    loss, ratio, _ = clipped_surrogate(log_prob, log_prob.clone(), torch.tensor([1.0, -1.0]), 0.2)
    assert torch.equal(ratio, torch.ones(2)) and loss.item() == 0.0
    # a ratio far above 1 + clip with a positive advantage gains no more than the clipped value
    loss, _, _ = clipped_surrogate(torch.tensor([0.0]), torch.tensor([-1.0]), torch.tensor([1.0]), 0.2)
    assert loss.item() == pytest.approx(-1.2)


def test_gradient_checkpointing_is_off_unless_asked():
    from hfpc_finetune.config import FinetuneConfig

    from hfpc_reward.config import load_config

    assert load_config(FinetuneConfig).model.gradient_checkpointing is False


def test_grid_captions_carry_reward_and_primary_reason():
    reasons = primary_reasons({"hfpc_reasons": ["expanded: product grew 30%; recoloured", ""]}, 2)
    assert reasons == ["expanded: product grew 30%", None]
    assert primary_reasons({"hfpc_primary_reason": ["moved", None]}, 2) == ["moved", None]
    assert primary_reasons(None, 3) == [None, None, None]
    image = Image.new("RGB", (32, 32), "white")
    grid = sample_grid([(image, image, 0.5, "moved"), (image, image, None, None)])
    assert grid.size == (2 * 128, 2 * 128 + 26)
    caption = np.asarray(grid)[256:, :128]
    assert (caption < 128).any()  # text was drawn under the first sample
