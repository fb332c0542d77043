"""Shared test setup: one thread per op (2 threads on a busy 2-core box can be 50x slower), offline hub."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hfpc44k"


@pytest.fixture(scope="session", autouse=True)
def _single_thread_torch():
    try:
        import torch
    except ImportError:
        yield
        return
    torch.set_num_threads(1)
    yield


@pytest.fixture
def hfpc44k_dir() -> Path:
    """The real HFPC-44k manifests in ../shared/data/hfpc44k (skips when this checkout has none)."""
    if not (SHARED_DATA / "test.json").is_file():
        pytest.skip(f"HFPC-44k manifests not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_reward_kit(tmp_path_factory) -> dict:
    """The tiny kit's reward model, written once per session: {"blip": folder, "reward": folder, "root": dir}."""
    from hfpc_reward.testing.tiny_blip import write_tiny_reward_model

    root = tmp_path_factory.mktemp("tiny_reward")
    configs = write_tiny_reward_model(root)
    return {
        "blip": configs["reward_tiny"]["model"],
        "reward": configs["reward_model_tiny"]["path"],
        "root": root,
    }
