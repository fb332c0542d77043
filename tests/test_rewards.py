"""Reward functions on the tiny kit: TRL convention, pickling, abstention, ddpo adapter, gradients, best-of-N."""

import pickle

import numpy as np
import pytest
import torch

from hfpc_reward.best_of_n import select_best
from hfpc_reward.config import load_config
from hfpc_reward.data.manifest import read_manifest
from hfpc_reward.images import ImageLoadError, load_mask, load_rgb, pil_to_tensor
from hfpc_reward.rewards import (
    BackgroundReward,
    ConsistencyReward,
    DifferentiableHFPCReward,
    HFPCReward,
    as_ddpo_reward_fn,
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
        "product_mask": [load_mask(r.mask) for r in rows],
    }


@pytest.mark.parametrize("cls", [HFPCReward, BackgroundReward, ConsistencyReward])
def test_reward_classes_pickle_without_models_and_score_the_same(kit, cls):
    reward = cls(kit["config"])
    kwargs = call_kwargs(kit["rows"])
    before = reward(**kwargs)
    state = pickle.dumps(reward)
    assert b"HFPCScorer" not in state  # the models are not pickled: the clone loads them when unpickled
    clone = pickle.loads(state)
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
    metadata = [{"image": o, "product_mask": m} for o, m in zip(kwargs["image"], kwargs["product_mask"])]
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


def scorer_with_threshold(kit, threshold):
    overrides = [f"reward_model.path={kit['reward_path']}", f"policy.threshold={threshold}"]
    return HFPCScorer.from_config(load_config(ScorerConfig, overrides=overrides))


def test_select_best_returns_the_best_passing_candidate(kit, tiny_pipe):
    row = kit["rows"][0]
    small = {"num_inference_steps": 2, "width": 64, "height": 64}
    scorer = scorer_with_threshold(kit, -100)
    found = select_best(
        tiny_pipe, row.origin, row.mask, row.prompt, n=3, reward=HFPCReward.from_scorer(scorer), **small
    )
    assert len(found.candidates) == len(found.results) == 3
    passing = [i for i, r in enumerate(found.results) if r.passed]
    assert passing, "with the product pasted back and a threshold of -100, candidates pass"
    assert found.best_index == max(passing, key=lambda i: found.results[i].reward)
    assert found.best is found.candidates[found.best_index]
    assert found.best.size == load_rgb(row.origin).size
    strict = scorer_with_threshold(kit, 100)
    none = select_best(tiny_pipe, row.origin, row.mask, row.prompt, n=2, scorer=strict, **small)
    assert none.best is None and none.best_index is None and len(none.results) == 2


# ---------------------------------------------------------------- issue 13: fail loudly, conventions, one-liners
def studio_pair(size=64):
    """An original on a white studio backdrop with a red box product, a generation on a new background."""
    from PIL import Image

    mask = np.zeros((size, size), bool)
    mask[20:44, 24:40] = True
    original = np.full((size, size, 3), 255, np.uint8)
    original[mask] = (200, 30, 30)
    generated = np.zeros((size, size, 3), np.uint8)
    generated[..., 1] = np.linspace(40, 160, size, dtype=np.uint8)[None, :]
    generated[mask] = (200, 30, 30)
    return Image.fromarray(original), Image.fromarray(generated), mask


def test_a_reward_whose_model_does_not_load_fails_at_construction(tmp_path):
    from hfpc_reward.errors import UsageError

    missing = tmp_path / "no_such_model"
    with pytest.raises(UsageError, match="no_such_model"):  # the model's own load error, or RewardSetupError
        HFPCReward(load_config(ScorerConfig, overrides=[f"reward_model.path={missing}"]))
    with pytest.raises(UsageError, match="judges='consistency'"):
        HFPCReward(ScorerConfig())  # no reward model: the background judge would be silently off
    assert HFPCReward(ScorerConfig(), judges="consistency").scorer.reward_model is None


def test_value_range_is_declared_and_out_of_range_tensors_are_refused(kit):
    from hfpc_reward.images import ImageLoadError

    reward = HFPCReward(kit["config"])
    kwargs = call_kwargs(kit["rows"][:3])
    unit = pil_to_tensor(kwargs.pop("completions"))
    expected = reward(**kwargs, completions=unit)
    with pytest.raises(ImageLoadError, match="value_range='-1,1'"):
        reward(**kwargs, completions=unit * 2 - 1)  # a VAE decode, not declared
    with pytest.raises(ImageLoadError, match="value_range='0,255'"):
        reward(**kwargs, completions=unit * 255)
    assert reward(**kwargs, completions=unit * 2 - 1, value_range="-1,1") == pytest.approx(expected, abs=1e-5)
    assert reward(**kwargs, completions=unit * 255, value_range="0,255") == pytest.approx(expected, abs=1e-5)


def test_an_inverted_product_mask_is_refused(kit):
    from hfpc_reward.images import InvertedMaskError

    reward = HFPCReward(kit["config"])
    original, generated, mask = studio_pair()
    call = {"prompts": "on grass", "completions": [generated], "image": [original]}
    assert reward(**call, product_mask=[mask])[0] is not None
    with pytest.raises(InvertedMaskError, match="looks inverted"):
        reward(**call, product_mask=[~mask])  # diffusers' mask_image: white = repaint
    with pytest.raises(InvertedMaskError, match="equals the pipeline's repaint mask"):
        reward(**call, product_mask=[mask], mask_image=[mask])
    with pytest.warns(DeprecationWarning, match="product_mask"), pytest.raises(InvertedMaskError):
        reward(**call, mask_image=[~mask])  # the old keyword still works, and the repaint mask is caught


def test_a_string_prompt_broadcasts_and_a_single_image_is_a_batch_of_one(kit):
    reward = HFPCReward(kit["config"])
    kwargs = call_kwargs(kit["rows"][:2])
    prompt = kit["rows"][0].prompt
    same = reward(**{**kwargs, "prompts": [prompt] * 2})
    assert reward(**{**kwargs, "prompts": prompt}) == pytest.approx(same, abs=1e-6)
    single = reward(
        prompts=prompt,
        completions=kwargs["completions"][0],
        image=kwargs["image"][0],
        product_mask=kwargs["product_mask"][0],
    )
    assert isinstance(single, list) and single == pytest.approx(same[:1], abs=1e-6)


def test_one_liners_score_and_rank_one_original(kit):
    reward = HFPCReward.from_pretrained(kit["reward_path"], overrides=["policy.reward=weighted"])
    assert reward.scorer.reward_model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = call_kwargs(kit["rows"][:1])
    original, mask, prompt = kwargs["image"][0], kwargs["product_mask"][0], kit["rows"][0].prompt
    value = reward.score(original, kwargs["completions"][0], prompt=prompt, product_mask=mask)
    assert isinstance(value, float)
    assert value == pytest.approx(reward(**{**kwargs, "prompts": [prompt]})[0], abs=1e-6)
    candidates = [kwargs["completions"][0], original, load_rgb(kit["rows"][1].generation)]
    ranking = reward.rank(original, candidates, prompt=prompt, product_mask=mask)
    assert sorted(ranking.order) == [0, 1, 2] and len(ranking.results) == 3
    passing_first = [ranking.results[i].passed for i in ranking.order]
    assert passing_first == sorted(passing_first, reverse=True)
    for a, b in zip(ranking.order, ranking.order[1:]):
        if ranking.results[a].passed == ranking.results[b].passed:
            assert ranking.rewards[a] >= ranking.rewards[b]


def test_tensors_reach_the_reward_model_as_they_are(kit):
    """Device-agnostic: float pixels go to the model without an 8-bit image trip (on a GPU they stay there)."""
    reward = BackgroundReward(kit["config"])
    model = reward.scorer.reward_model
    torch.manual_seed(0)
    originals = torch.rand(2, 3, 40, 40)
    generated = torch.rand(2, 3, 40, 40)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 12:28] = True
    seen = []
    encode = model.encode_images
    model.encode_images = lambda pixels: seen.append(pixels) or encode(pixels)  # records, then runs
    values = reward(prompts=["a", "b"], completions=generated, image=originals, product_mask=mask)
    del model.encode_images
    assert any(torch.equal(pixels, generated) for pixels in seen)  # the very values: no 8-bit round trip
    with torch.no_grad():
        direct = model(originals, generated, ["a", "b"])
    assert values == pytest.approx(direct.tolist(), abs=1e-6)


def test_8_bit_tensors_score_like_the_same_pixels_as_floats(kit):
    """uint8 tensors are 0..255: the consistency judge read them so, the reward model took 200 for 200.0."""
    reward = BackgroundReward(kit["config"])
    torch.manual_seed(0)
    originals = (torch.rand(2, 3, 40, 40) * 255).round().to(torch.uint8)
    generated = (torch.rand(2, 3, 40, 40) * 255).round().to(torch.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 12:28] = True
    as_bytes = reward(prompts=["a", "b"], completions=generated, image=originals, product_mask=mask)
    as_floats = reward(
        prompts=["a", "b"], completions=generated / 255.0, image=originals / 255.0, product_mask=mask
    )
    assert as_bytes == pytest.approx(as_floats, abs=1e-5)


def test_one_nan_image_in_a_tensor_batch_abstains_alone(kit):
    """A diverged decode (NaN pixels) in one completion: that item abstains, the others keep their rewards;
    a batch outside the declared value range is still refused whole (a wrong declaration, not a bad image)."""
    reward = HFPCReward(kit["config"])
    torch.manual_seed(0)
    originals, generated = torch.rand(3, 3, 40, 40), torch.rand(3, 3, 40, 40)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 12:28] = True
    clean = reward(prompts=["a", "b", "c"], completions=generated, image=originals, product_mask=mask)
    broken = generated.clone()
    broken[1, :, :8, :8] = float("nan")
    values = reward(prompts=["a", "b", "c"], completions=broken, image=originals, product_mask=mask)
    assert values[1] is None and values[0] == pytest.approx(clean[0]) and values[2] == pytest.approx(clean[2])
    with pytest.raises(ImageLoadError, match="outside the declared value_range"):
        reward(prompts=["a", "b", "c"], completions=generated * 255, image=originals, product_mask=mask)


def test_a_nan_score_abstains_instead_of_being_reported(kit):
    reward = HFPCReward(kit["config"])
    reward.scorer.reward_model.score_std = float("nan")
    logged = {}
    values = reward(**call_kwargs(kit["rows"][:2]), log_metrics=logged.update)
    assert values == [None, None]
    assert logged == {"hfpc/error_rate": 1.0}


def test_log_metrics_takes_a_dict_once_per_call(kit):
    calls = []
    HFPCReward(kit["config"])(**call_kwargs(kit["rows"][:2]), log_metrics=calls.append)
    assert len(calls) == 1 and {"hfpc/pass_rate", "hfpc/background_score"} <= set(calls[0])


def test_select_best_refuses_to_drop_the_background_judge(kit, tiny_pipe):
    from hfpc_reward.errors import UsageError

    row = kit["rows"][0]
    args = (tiny_pipe, row.origin, row.mask, row.prompt)
    small = {"n": 2, "num_inference_steps": 2, "width": 64, "height": 64}
    with pytest.raises(UsageError, match="background judge"):
        select_best(*args, **small)
    with pytest.raises(UsageError, match="no reward model"):
        select_best(*args, scorer=HFPCScorer.from_config(ScorerConfig()), **small)
    found = select_best(*args, judges="consistency", **small)
    assert len(found.results) == 2 and all(r.background_score is None for r in found.results)
    reward = HFPCReward(kit["config"])
    judged = select_best(*args, reward=reward, **small)  # reward= judges; it is not passed to the pipeline
    assert all(r.background_score is not None for r in judged.results)


@pytest.mark.gpu
def test_cuda_tensors_stay_on_the_gpu_through_the_reward_model(kit):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    reward = BackgroundReward(kit["config"])  # reward_model.device: auto -> cuda
    model = reward.scorer.reward_model
    assert model.device.type == "cuda"
    generated, originals = torch.rand(2, 3, 40, 40, device="cuda"), torch.rand(2, 3, 40, 40, device="cuda")
    mask = np.zeros((40, 40), bool)
    mask[10:30, 12:28] = True
    seen = []
    encode = model.encode_images
    model.encode_images = lambda pixels: seen.append(pixels) or encode(pixels)
    values = reward(prompts="a", completions=generated, image=originals, product_mask=mask)
    del model.encode_images
    assert seen and all(pixels.device.type == "cuda" for pixels in seen)
    assert all(isinstance(v, float) for v in values)
