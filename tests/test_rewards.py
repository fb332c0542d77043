"""Reward functions on the tiny kit: TRL convention, pickling, abstention, ddpo adapter, gradients, best-of-N."""

import pickle

import numpy as np
import pytest
import torch

from hfpc_reward.config import load_config
from hfpc_reward.data.manifest import read_manifest
from hfpc_reward.images import load_mask, load_rgb, pil_to_tensor
from hfpc_reward.rewards import (
    BackgroundReward,
    ConsistencyReward,
    DifferentiableHFPCReward,
    HFPCReward,
    as_ddpo_reward_fn,
    select_best,
)
from hfpc_reward.sample.pairs import generate_pairs
from hfpc_reward.scorer import HFPCScorer, ScorerConfig


@pytest.fixture(scope="module")
def kit(tmp_path_factory, tiny_reward_kit):
    root = tmp_path_factory.mktemp("rewards")
    reward_path = tiny_reward_kit["reward"]
    rows = read_manifest(generate_pairs(root / "pairs", n_pairs=6, seed=5, size=96))
    config = load_config(
        ScorerConfig, overrides=[f"reward_model.path={reward_path}", "policy.reward=weighted"]
    )
    return {"config": config, "rows": rows, "reward_path": reward_path}


def call_kwargs(rows):
    return {
        "prompts": [r.prompt for r in rows],
        "completions": [load_rgb(r.generation) for r in rows],
        "image": [load_rgb(r.origin) for r in rows],
        "mask_image": [load_mask(r.mask) for r in rows],
    }


@pytest.mark.parametrize("cls", [HFPCReward, BackgroundReward, ConsistencyReward])
def test_reward_classes_pickle_without_models_and_score_the_same(kit, cls):
    reward = cls(kit["config"])
    kwargs = call_kwargs(kit["rows"])
    before = reward(**kwargs)
    clone = pickle.loads(pickle.dumps(reward))
    assert clone._scorer is None  # the models are not pickled; they load again lazily
    assert clone.__name__ == reward.__name__ and reward.__name__.startswith(
        "hfpc"
    )  # trainers log by __name__
    assert clone(**kwargs) == pytest.approx(before, abs=1e-6)
    assert all(isinstance(v, float) for v in before)


def test_unknown_kwargs_are_accepted_and_missing_image_names_it(kit):
    reward = ConsistencyReward(kit["config"])
    kwargs = call_kwargs(kit["rows"][:2])
    values = reward(**kwargs, trainer_state=object(), completion_ids=[[1], [2]], product_id=["a", "b"])
    assert len(values) == 2
    del kwargs["image"]
    with pytest.raises(TypeError, match="image"):
        reward(**kwargs)


def test_a_corrupt_item_abstains_and_the_others_score(kit, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    kwargs = call_kwargs(kit["rows"][:3])
    kwargs["completions"][1] = str(bad)
    logged, extra = {}, {}
    values = HFPCReward(kit["config"])(**kwargs, log_metric=logged.__setitem__, log_extra=extra.__setitem__)
    assert values[1] is None and values[0] is not None and values[2] is not None
    assert logged["hfpc/error_rate"] == pytest.approx(1 / 3)
    assert {"hfpc/pass_rate", "hfpc/background_score", "hfpc/consistency_score"} <= set(logged)
    assert "corrupt" in extra["hfpc_reasons"][1] or "truncated" in extra["hfpc_reasons"][1]


def test_ddpo_adapter_returns_the_trl_values(kit):
    rows = kit["rows"]
    kwargs = call_kwargs(rows)
    reward = HFPCReward(kit["config"])
    expected = reward(**kwargs)
    tensors = pil_to_tensor(kwargs["completions"])
    metadata = [{"image": o, "mask_image": m} for o, m in zip(kwargs["image"], kwargs["mask_image"])]
    values, info = pickle.loads(pickle.dumps(as_ddpo_reward_fn(reward)))(tensors, kwargs["prompts"], metadata)
    assert isinstance(values, np.ndarray) and values.shape == (len(rows),)
    np.testing.assert_allclose(values, np.array(expected, dtype=np.float32), atol=1e-5)
    assert len(info["hfpc_passed"]) == len(rows)
    with pytest.raises(KeyError, match="'image'"):
        as_ddpo_reward_fn(reward)(tensors, kwargs["prompts"], [{} for _ in rows])


def test_background_reward_needs_a_reward_model():
    with pytest.raises(ValueError, match="reward_model.path"):
        BackgroundReward(ScorerConfig())


def test_differentiable_reward_has_correct_gradients_to_generated_pixels(kit):
    from hfpc_reward.reward.model import HFPCRewardModel

    model = HFPCRewardModel.from_pretrained(kit["reward_path"], dtype=torch.float64).eval()
    reward = DifferentiableHFPCReward(model, preservation_weight=5.0)
    torch.manual_seed(0)
    original = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    generated = torch.rand(2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(2, 32, 32, dtype=torch.float64)
    mask[:, 8:24, 8:24] = 1
    value = reward(original, generated, mask)
    assert value.shape == (2,)
    (grad,) = torch.autograd.grad(value.sum(), generated)
    assert grad.abs().sum() > 0
    direction = torch.randn_like(generated)
    eps = 1e-6
    with torch.no_grad():
        numeric = (
            reward(original, generated + eps * direction, mask).sum()
            - reward(original, generated - eps * direction, mask).sum()
        ) / (2 * eps)
    assert (grad * direction).sum().item() == pytest.approx(numeric.item(), rel=1e-4, abs=1e-8)
    # inside the product, the preservation term pulls the generation towards the original
    inside = generated.detach().clone().requires_grad_(True)
    only_preservation = DifferentiableHFPCReward(model, background_weight=0.0, preservation_weight=1.0)
    (g,) = torch.autograd.grad(only_preservation(original, inside, mask).sum(), inside)
    assert torch.all(g[:, :, 0, 0] == 0) and torch.all(
        g[:, :, 8:24, 8:24] * (original - inside.detach())[:, :, 8:24, 8:24] >= 0
    )


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory):
    from diffusers import StableDiffusionInpaintPipeline

    from hfpc_reward.testing.tiny_sd import write_tiny_sd_inpaint

    folder = tmp_path_factory.mktemp("sd")
    write_tiny_sd_inpaint(folder)
    pipe_dir = next(p.parent for p in folder.rglob("model_index.json"))
    pipe = StableDiffusionInpaintPipeline.from_pretrained(pipe_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_select_best_returns_the_best_passing_candidate(kit, tiny_pipe):
    row = kit["rows"][0]
    scorer = HFPCScorer.from_config(
        load_config(
            ScorerConfig, overrides=[f"reward_model.path={kit['reward_path']}", "policy.threshold=-100"]
        )
    )
    found = select_best(
        tiny_pipe,
        row.origin,
        row.mask,
        row.prompt,
        n=3,
        scorer=scorer,
        num_inference_steps=2,
        width=64,
        height=64,
    )
    assert len(found.candidates) == len(found.results) == 3
    passing = [i for i, r in enumerate(found.results) if r.passed]
    assert passing, "with the product pasted back and a threshold of -100, candidates pass"
    assert found.best_index == max(passing, key=lambda i: found.results[i].reward)
    assert found.best is found.candidates[found.best_index]
    assert found.best.size == load_rgb(row.origin).size
    strict = HFPCScorer.from_config(
        load_config(
            ScorerConfig, overrides=[f"reward_model.path={kit['reward_path']}", "policy.threshold=100"]
        )
    )
    none = select_best(
        tiny_pipe,
        row.origin,
        row.mask,
        row.prompt,
        n=2,
        scorer=strict,
        num_inference_steps=2,
        width=64,
        height=64,
    )
    assert none.best is None and none.best_index is None and len(none.results) == 2
