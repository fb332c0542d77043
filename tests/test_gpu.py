"""CUDA paths (run with `make test-gpu` on a machine with a GPU; skipped elsewhere).

They check what CPU tests cannot: device and dtype placement of the judges and the DDPO step, and that
half precision stays close to float32.
"""

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def reward_path(tmp_path_factory):
    import yaml

    from hfpc_reward.testing import write_tiny_models

    configs = write_tiny_models(tmp_path_factory.mktemp("gpu"), only=["reward_model"])
    return yaml.safe_load(configs["reward_model_tiny"].read_text())["path"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reward_model_on_cuda_matches_cpu_and_has_pixel_gradients(reward_path, dtype):
    from hfpc_reward.reward.model import HFPCRewardModel

    torch.manual_seed(0)
    original, generated = torch.rand(4, 3, 64, 64), torch.rand(4, 3, 64, 64)
    cpu = HFPCRewardModel.from_pretrained(reward_path).eval()
    gpu = HFPCRewardModel.from_pretrained(reward_path, device="cuda", dtype=dtype).eval()
    expected = cpu(original, generated)
    pixels = generated.cuda().requires_grad_(True)
    scores = gpu(original.cuda(), pixels)
    assert scores.device.type == "cuda"
    torch.testing.assert_close(scores.float().cpu(), expected.detach(), atol=0.05, rtol=0.05)
    (grad,) = torch.autograd.grad(scores.float().sum(), pixels)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_scorer_on_cuda_gives_the_cpu_results(reward_path, tmp_path):
    from hfpc_reward.config import load_config
    from hfpc_reward.data.manifest import read_manifest
    from hfpc_reward.sample.pairs import generate_pairs
    from hfpc_reward.scorer import HFPCScorer, ScorerConfig

    rows = read_manifest(generate_pairs(tmp_path, n_pairs=8, size=96))
    columns = (
        [r.origin for r in rows],
        [r.generation for r in rows],
        [r.mask for r in rows],
        [r.prompt for r in rows],
    )
    results = {}
    for device in ("cpu", "cuda"):
        config = load_config(
            ScorerConfig, overrides=[f"reward_model.path={reward_path}", f"reward_model.device={device}"]
        )
        results[device] = HFPCScorer.from_config(config).score(*columns)
    for a, b in zip(results["cpu"], results["cuda"]):
        assert a.background_score == pytest.approx(b.background_score, abs=1e-3)
        assert a.consistency.consistent == b.consistency.consistent


def test_ddim_logprob_step_on_cuda_matches_the_scheduler():
    from diffusers import DDIMScheduler
    from hfpc_finetune.ddim_logprob import ddim_step_with_logprob

    scheduler = DDIMScheduler(steps_offset=1, set_alpha_to_one=False)  # as SD checkpoints ship it
    scheduler.set_timesteps(5)
    gen = torch.Generator(device="cuda").manual_seed(0)
    sample, output, noise = (torch.randn(2, 4, 16, 16, device="cuda", generator=gen) for _ in range(3))
    for t in scheduler.timesteps:
        expected = scheduler.step(output, t, sample, eta=1.0, variance_noise=noise).prev_sample
        ours = ddim_step_with_logprob(scheduler, output, t, sample, eta=1.0, noise=noise)
        assert ours.log_prob.device.type == "cuda" and torch.isfinite(ours.log_prob).all()
        torch.testing.assert_close(ours.prev_sample, expected, rtol=0, atol=1e-5)
