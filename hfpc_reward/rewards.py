"""HFPC as reward functions for RL trainers, best-of-N sampling and reward backpropagation.

- `HFPCReward`, `BackgroundReward`, `ConsistencyReward`: picklable callable classes in TRL's reward-function
  convention: `fn(*, prompts, completions, image, mask_image=None, log_metric=None, log_extra=None, **kwargs)
  -> list[float | None]`. `completions` are the generated images (PIL list or (B,3,H,W) tensor in [0,1]),
  `image` the originals and `mask_image` the product masks (diffusers' inpainting argument names).
  `None` means abstain (the item could not be judged); the trainer decides what to do with it.
  The scorer (models) loads lazily on first call and is not pickled: a pickled reward is just its config.
- `as_ddpo_reward_fn(reward)`: the ddpo-pytorch family's `fn(images, prompts, metadata) -> (np.ndarray, dict)`.
- `DifferentiableHFPCReward`: a reward with gradients to the generated pixels (AlignProp / DRaFT style).
- `select_best(pipe, ...)`: generate n candidates with a diffusers inpainting pipeline, keep the best.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hfpc_reward.config import load_config
from hfpc_reward.scorer import HFPCResult, HFPCScorer, ScorerConfig

logger = logging.getLogger(__name__)


class HFPCReward:
    """The combined HFPC reward (the scorer's reward policy). Build from a ScorerConfig or a YAML path."""

    __name__ = "hfpc"

    def __init__(self, config: ScorerConfig | str | Path | None = None, overrides: Sequence[str] = ()):
        if isinstance(config, ScorerConfig):
            if overrides:
                raise ValueError("overrides apply to a config file; edit the ScorerConfig object instead")
            self.config = config
        else:
            self.config = load_config(ScorerConfig, config, overrides)
        self._scorer: HFPCScorer | None = None

    @classmethod
    def from_scorer(cls, scorer: HFPCScorer) -> HFPCReward:
        """A reward around an already-built scorer (shares its models and cache)."""
        reward = cls(scorer.config)
        reward._scorer = scorer
        return reward

    @property
    def scorer(self) -> HFPCScorer:
        if self._scorer is None:
            self._scorer = HFPCScorer.from_config(self.config)
        return self._scorer

    def __getstate__(self) -> dict:
        return {"config": self.config, "_scorer": None}

    def __call__(
        self,
        *,
        prompts: Sequence[str | None] | None,
        completions: Any,
        image: Any,
        mask_image: Any = None,
        category: Sequence[str | None] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        log_extra: Callable[[str, list], None] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        """Rewards for `completions[i]` generated from original `image[i]` (its product mask `mask_image[i]`,
        product name `category[i]` when known); None where an item could not be judged."""
        results = self.scorer.score(
            image, completions, masks=mask_image, prompts=prompts, categories=category
        )
        _log_components(results, log_metric, log_extra)
        return [None if result.error is not None else self.value(result) for result in results]

    def value(self, result: HFPCResult) -> float | None:
        """The scalar this reward gives one judged item."""
        return result.reward


class BackgroundReward(HFPCReward):
    """The background judge alone: the reward model's standardised score (needs `reward_model.path`)."""

    __name__ = "hfpc_background"

    def __init__(self, config: ScorerConfig | str | Path | None = None, overrides: Sequence[str] = ()):
        super().__init__(config, overrides)
        if not self.config.reward_model.path:
            raise ValueError(
                "BackgroundReward needs a reward model: set reward_model.path in the scorer config"
            )

    def value(self, result: HFPCResult) -> float | None:
        return result.background_score


class ConsistencyReward(HFPCReward):
    """The product judge alone: the consistency score in [0,1] (>= 0.5 when the product was kept)."""

    __name__ = "hfpc_consistency"

    def value(self, result: HFPCResult) -> float | None:
        return float(result.consistency.score)


def _log_components(results: list[HFPCResult], log_metric, log_extra) -> None:
    judged = [r for r in results if r.error is None]
    if log_metric is not None and judged:
        log_metric("hfpc/pass_rate", float(np.mean([r.passed for r in judged])))
        log_metric("hfpc/consistent_rate", float(np.mean([r.consistency.consistent for r in judged])))
        log_metric("hfpc/consistency_score", float(np.mean([r.consistency.score for r in judged])))
        backgrounds = [r.background_score for r in judged if r.background_score is not None]
        if backgrounds:
            log_metric("hfpc/background_score", float(np.mean(backgrounds)))
        log_metric("hfpc/error_rate", 1.0 - len(judged) / len(results))
    if log_extra is not None:
        log_extra("hfpc_passed", [r.passed for r in results])
        log_extra("hfpc_background_score", [r.background_score for r in results])
        log_extra(
            "hfpc_consistency_score",
            [None if r.consistency is None else r.consistency.score for r in results],
        )
        log_extra("hfpc_reasons", ["; ".join(r.reasons or ([r.error] if r.error else [])) for r in results])


class _DdpoRewardFn:
    """ddpo-pytorch-style adapter (a class, so it pickles): see `as_ddpo_reward_fn`."""

    def __init__(self, reward: HFPCReward):
        self.reward = reward

    def __call__(
        self, images: Any, prompts: Sequence[str], metadata: Sequence[dict]
    ) -> tuple[np.ndarray, dict]:
        if len(metadata) != len(prompts):
            raise ValueError(f"got {len(metadata)} metadata dicts for {len(prompts)} prompts")
        missing = [i for i, meta in enumerate(metadata) if "image" not in meta]
        if missing:
            raise KeyError(
                f"metadata of samples {missing[:5]} has no 'image' (the original); add it per sample"
            )
        extras: dict[str, list] = {}
        values = self.reward(
            prompts=list(prompts),
            completions=images,
            image=[meta["image"] for meta in metadata],
            mask_image=[meta.get("mask_image") for meta in metadata],
            category=[meta.get("category") for meta in metadata],
            log_extra=extras.__setitem__,
        )
        rewards = np.array([np.nan if v is None else v for v in values], dtype=np.float32)
        return rewards, extras


def as_ddpo_reward_fn(
    reward: HFPCReward | None = None,
) -> Callable[[Any, Sequence[str], Sequence[dict]], tuple]:
    """`fn(images, prompts, metadata) -> (rewards np.ndarray (B,), info dict)` for ddpo-pytorch-style trainers.

    `metadata[i]` must carry the original as `"image"` and may carry the product mask as `"mask_image"`.
    Abstentions are NaN in the array; `info` holds the per-sample columns (passed, scores, reasons).
    """
    return _DdpoRewardFn(reward if reward is not None else HFPCReward())


class DifferentiableHFPCReward:
    """A reward with gradients to the generated pixels, for reward-backprop trainers (AlignProp, DRaFT).

    reward = background_weight * reward_model(original, generated)
             - preservation_weight * mean squared difference to the original inside the product mask.
    The second term is a differentiable stand-in for the consistency checker: it keeps the product's pixels.
    """

    def __init__(self, reward_model: Any, background_weight: float = 1.0, preservation_weight: float = 10.0):
        self.reward_model = reward_model
        self.background_weight = background_weight
        self.preservation_weight = preservation_weight

    def __call__(self, original_pixels, generated_pixels, mask, prompts: Sequence[str | None] | None = None):
        """(B,3,H,W) originals and generations in [0,1], (B,1,H,W) or (B,H,W) product masks -> (B,) rewards."""
        if original_pixels.shape != generated_pixels.shape:
            raise ValueError(
                f"original {tuple(original_pixels.shape)} and generated {tuple(generated_pixels.shape)} pixels "
                "must have the same shape; resize the originals to the generation size first"
            )
        mask = mask.to(generated_pixels.dtype)
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
        squared = (generated_pixels - original_pixels.detach()) ** 2 * mask
        preservation = squared.flatten(1).sum(1) / (3 * mask.flatten(1).sum(1)).clamp_min(1.0)
        background = self.reward_model(original_pixels.detach(), generated_pixels, prompts)
        return self.background_weight * background - self.preservation_weight * preservation


def differentiable_reward(original_pixels, generated_pixels, mask, reward_model, **weights):
    """Functional form of `DifferentiableHFPCReward(reward_model, **weights)(original, generated, mask)`."""
    return DifferentiableHFPCReward(reward_model, **weights)(original_pixels, generated_pixels, mask)


@dataclass
class BestOfN:
    """What `select_best` found: the best passing candidate (or None), and every candidate with its result."""

    best: Any  # PIL image of the best passing candidate, or None when none passed
    best_index: int | None  # its index in `candidates`
    candidates: list = field(default_factory=list)  # all n generated images (product pasted back if asked)
    results: list[HFPCResult] = field(default_factory=list)  # one per candidate


def select_best(
    pipe: Any,
    image: Any,
    mask_image: Any,
    prompt: str,
    n: int = 8,
    scorer: HFPCScorer | None = None,
    category: str | None = None,
    seed: int = 0,
    paste_back: bool = True,
    **pipe_kwargs: Any,
) -> BestOfN:
    """Rejection sampling for production: n inpainted candidates, the best passing one by reward.

    `image` is the original product photo, `mask_image` its product mask (white = product), `category` the
    product's name for detecting consistency backends; the pipeline
    inpaints the background (the inverse of the product mask). With `paste_back`, the original product
    pixels are pasted onto each candidate before judging, as in production.
    """
    import torch
    from PIL import Image

    from hfpc_reward import images

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    scorer = scorer or HFPCScorer.from_config(ScorerConfig())
    original = images.load_rgb(image)
    product = images.load_mask(mask_image, size=original.size)
    background = Image.fromarray(((~product).astype(np.uint8)) * 255)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    output = pipe(
        prompt=[prompt] * n,
        image=[original] * n,
        mask_image=[background] * n,
        generator=generator,
        height=pipe_kwargs.pop("height", original.size[1] // 8 * 8),
        width=pipe_kwargs.pop("width", original.size[0] // 8 * 8),
        **pipe_kwargs,
    )
    candidates = [images.resize_to(c, original.size) for c in output.images]
    if paste_back:
        candidates = [images.paste_product(c, original, product) for c in candidates]
    results = scorer.score(
        [original] * n, candidates, masks=[product] * n, prompts=[prompt] * n, categories=[category] * n
    )
    passing = [i for i, r in enumerate(results) if r.passed and r.reward is not None]
    best_index = max(passing, key=lambda i: results[i].reward) if passing else None
    return BestOfN(None if best_index is None else candidates[best_index], best_index, candidates, results)
