"""Reward functions for fine-tuning, in the TRL keyword convention, and loading them by name.

A reward is any callable `fn(*, prompts, completions, image, mask_image=None, **kwargs) -> list[float | None]`:
`completions` are the generated images (PIL list or a (B,3,H,W) tensor in [0,1]), `image` the originals,
`mask_image` the product masks (white / True = product). `None` abstains: that sample gets no advantage.
Optional `log_metric(name, value)` callbacks report components (e.g. `pass_rate`).

The simple rewards here know their optimum, so they prove that learning happens (tests, demo): they score
the *background* only (NOT the product mask), where the inpainting happens.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hfpc_finetune.config import RewardConfig

from hfpc_reward.images import ImageLoadError, load_batch, load_mask

logger = logging.getLogger(__name__)

# reward name -> "module:class"; imported only when chosen (hfpc pulls in the HFPC judges)
REWARDS: dict[str, str] = {
    "hfpc": "hfpc_reward.rewards:HFPCReward",
    "hfpc_background": "hfpc_reward.rewards:BackgroundReward",
    "hfpc_consistency": "hfpc_reward.rewards:ConsistencyReward",
    "background_brightness": "hfpc_finetune.rewards:BackgroundBrightness",
    "background_colour": "hfpc_finetune.rewards:BackgroundColour",
}


def load_reward(config: RewardConfig) -> Callable[..., list]:
    """Instantiate the configured reward (e.g. `HFPCReward(config=path)` for name `hfpc`)."""
    if config.name not in REWARDS:
        raise ValueError(f"unknown reward.name {config.name!r}; choose one of {sorted(REWARDS)}")
    module_name, class_name = REWARDS[config.name].split(":")
    try:
        reward_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"reward {config.name!r} ({REWARDS[config.name]}) is not available: {exc}") from None
    return reward_class(**config.kwargs)


class _BackgroundReward:
    """Shared plumbing: per-sample background pixels (float RGB in [0,1]); subclasses score them."""

    def __call__(self, *, prompts, completions, image, mask_image=None, log_metric=None, **kwargs) -> list:
        generated = load_batch(completions)
        if mask_image is None:
            raise ValueError(f"{self.__name__} needs mask_image (the product masks) to find the background")
        rewards: list[float | None] = []
        for picture, mask in zip(generated, mask_image):
            try:
                product = load_mask(mask, size=picture.size)
            except ImageLoadError as exc:
                logger.warning("%s abstains on a sample: %s", self.__name__, exc)
                rewards.append(None)
                continue
            background = np.asarray(picture, dtype=np.float32)[~product] / 255.0  # (N,3)
            rewards.append(self.score(background) if len(background) else None)
        valid = [value for value in rewards if value is not None]
        if log_metric is not None and valid:
            log_metric(f"{self.__name__}_mean", float(np.mean(valid)))
        return rewards

    def score(self, background: np.ndarray) -> float:
        raise NotImplementedError


class BackgroundBrightness(_BackgroundReward):
    """Mean luminance of the background in [0,1]; with `target`, 1 - |luminance - target| instead."""

    __name__ = "background_brightness"

    def __init__(self, target: float | None = None):
        if target is not None and not 0.0 <= target <= 1.0:
            raise ValueError(f"background_brightness target must be in [0, 1], got {target}")
        self.target = target

    def score(self, background: np.ndarray) -> float:
        luminance = float((background @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).mean())
        return luminance if self.target is None else 1.0 - abs(luminance - self.target)


class BackgroundColour(_BackgroundReward):
    """1 - mean RGB distance (scaled to [0,1]) of background pixels to a target colour (RGB in [0,1])."""

    __name__ = "background_colour"

    def __init__(self, target: Sequence[float] = (1.0, 1.0, 1.0)):
        target = np.asarray(target, dtype=np.float32)
        if target.shape != (3,) or target.min() < 0 or target.max() > 1:
            raise ValueError(f"background_colour target must be 3 values in [0, 1], got {list(target)}")
        self.target = target

    def score(self, background: np.ndarray) -> float:
        return 1.0 - float(np.linalg.norm(background - self.target, axis=1).mean() / np.sqrt(3.0))


def call_reward(
    reward: Callable,
    prompts: list[str],
    completions: list,
    originals: list,
    masks: list,
    log_metric: Callable[[str, float], Any],
    category: list[str | None] | None = None,
) -> list[float | None]:
    """Call a reward and check its answer; a failing reward abstains on the whole batch (logged)."""
    try:
        values = list(
            reward(
                prompts=prompts,
                completions=completions,
                image=originals,
                mask_image=masks,
                category=category,
                log_metric=log_metric,
            )
        )
    except Exception:  # one bad batch must not end a long run
        logger.exception(
            "reward %s failed on a batch of %d; abstaining", getattr(reward, "__name__", reward), len(prompts)
        )
        return [None] * len(prompts)
    if len(values) != len(prompts):
        raise ValueError(f"reward returned {len(values)} values for {len(prompts)} samples")
    return [None if value is None or not np.isfinite(value) else float(value) for value in values]
