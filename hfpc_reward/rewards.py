"""HFPC as reward functions for RL trainers, best-of-N sampling and reward backpropagation.

- `HFPCReward`, `BackgroundReward`, `ConsistencyReward`: picklable callable classes in TRL's reward-function
  convention: `fn(*, prompts, completions, image, product_mask=None, log_metric=None, log_extra=None,
  **kwargs) -> list[float | None]`. `completions` are the generated images (PIL list or (B,3,H,W) tensor),
  `image` the originals and `product_mask` the product masks (white = PRODUCT: the opposite of diffusers'
  `mask_image`, white = repaint; a mask that looks inverted is refused). `None` means abstain (the item
  could not be judged); the trainer decides what to do with it.
  Each reward loads its models when it is built (or unpickled): a missing or broken model is a UsageError
  there, never a run of silent abstentions. A pickled reward is just its config.
- One-liners: `HFPCReward.from_pretrained(dir_or_id, device="auto")`, `reward.score(original, image) ->
  float` for one pair, `reward.rank(original, candidates) -> Ranking` (best first, with every result).
- `as_ddpo_reward_fn(reward)`: the ddpo-pytorch family's `fn(images, prompts, metadata) -> (np.ndarray, dict)`.
- `DifferentiableHFPCReward`: a reward with gradients to the generated pixels (AlignProp / DRaFT style).
- best-of-N sampling with a diffusers pipeline: `hfpc_reward.best_of_n.select_best`.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hfpc_reward import images
from hfpc_reward.config import load_config
from hfpc_reward.errors import UsageError
from hfpc_reward.scorer import HFPCResult, HFPCScorer, ScorerConfig

logger = logging.getLogger(__name__)

JUDGES = (
    "both",
    "consistency",
)  # which judges a reward uses: the background reward model + product, or product only


class RewardSetupError(UsageError):
    """A reward cannot be built as configured (no reward model, a model folder that does not load, ...)."""


class PairNotJudgedError(UsageError):
    """`HFPCReward.score` could not judge its one pair; the message says why."""


class HFPCReward:
    """The combined HFPC reward (the scorer's reward policy). Build from a ScorerConfig or a YAML path.

    `judges="both"` (the default) needs `reward_model.path`; `judges="consistency"` judges the product alone.
    """

    __name__ = "hfpc"
    default_judges = "both"

    def __init__(
        self,
        config: ScorerConfig | str | Path | None = None,
        overrides: Sequence[str] = (),
        judges: str | None = None,
    ):
        if isinstance(config, ScorerConfig):
            if overrides:
                raise UsageError("overrides apply to a config file; edit the ScorerConfig object instead")
            self.config = config
        else:
            self.config = load_config(ScorerConfig, config, overrides)
        self.judges = judges or self.default_judges
        if self.judges not in JUDGES:
            raise RewardSetupError(f"judges must be one of {JUDGES}, got {self.judges!r}")
        if self.judges == "consistency":
            self.config = replace(self.config, reward_model=replace(self.config.reward_model, path=""))
        elif not self.config.reward_model.path:
            raise RewardSetupError(
                f"{type(self).__name__} judges the background with a reward model but reward_model.path is "
                "empty: set reward_model.path=FOLDER (a trained HFPCRewardModel), or pass judges='consistency' "
                "(or use ConsistencyReward) to judge the product alone"
            )
        self._scorer = _build_scorer(self.config)

    @classmethod
    def from_pretrained(
        cls, path_or_id: str | Path, device: str = "auto", overrides: Sequence[str] = ()
    ) -> HFPCReward:
        """The reward around a trained reward model (folder or hub id) and the default consistency judge;
        `overrides` are ScorerConfig dotted overrides (e.g. "consistency.backend=grounded-sam")."""
        config = load_config(
            ScorerConfig,
            None,
            [f"reward_model.path={path_or_id}", f"reward_model.device={device}", *overrides],
        )
        return cls(config)

    @classmethod
    def from_scorer(cls, scorer: HFPCScorer) -> HFPCReward:
        """A reward around an already-built scorer (shares its models and cache)."""
        reward = cls.__new__(cls)
        reward.config, reward._scorer = scorer.config, scorer
        reward.judges = "both" if scorer.reward_model is not None else "consistency"
        return reward

    @property
    def scorer(self) -> HFPCScorer:
        return self._scorer

    def __getstate__(self) -> dict:
        return {"config": self.config, "judges": self.judges}

    def __setstate__(self, state: dict) -> None:  # an unpickled reward loads its models now, like a new one
        self.config, self.judges = state["config"], state["judges"]
        self._scorer = _build_scorer(self.config)

    def __call__(
        self,
        *,
        prompts: Sequence[str | None] | str | None,
        completions: Any,
        image: Any,
        product_mask: Any = None,
        category: Sequence[str | None] | str | None = None,
        value_range: str = "0,1",
        log_metric: Callable[[str, float], Any] | None = None,
        log_metrics: Callable[[dict], Any] | None = None,
        log_extra: Callable[[str, list], Any] | None = None,
        mask_image: Any = None,
        **kwargs: Any,
    ) -> list[float | None]:
        """Rewards for `completions[i]` generated from original `image[i]` (its product mask
        `product_mask[i]`, product name `category[i]` when known); None where an item could not be judged.

        A single image, original, mask, prompt or category applies to every completion. `value_range`
        declares float tensors' range: "0,1", "-1,1" (a VAE decode) or "0,255"; values outside it are
        refused. `mask_image`, if given, is the pipeline's repaint mask: a product mask equal to it is
        refused (passing `mask_image` alone as the product mask is deprecated). Diagnostics go to
        `log_metric(name, value)` (TRL) and/or `log_metrics(dict)` once per call (`accelerator.log`,
        `wandb.log`), and per-item columns to `log_extra(column, values)`.
        """
        if product_mask is None and mask_image is not None:
            warnings.warn(
                "mask_image as the product mask is deprecated: it is diffusers' name for the repaint mask "
                "(white = repaint); pass product_mask (white = product)",
                DeprecationWarning,
                stacklevel=2,
            )
            product_mask, mask_image = mask_image, None
        generated = images.as_batch(completions)
        count = len(generated)
        originals = _broadcast(images.as_batch(image), count, "image (originals)")
        masks = (
            None
            if product_mask is None
            else _broadcast(images.as_batch(product_mask, masks=True), count, "product_mask")
        )
        if masks is not None and mask_image is not None:
            _refuse_masks_equal_to_repaint(
                masks, _broadcast(images.as_batch(mask_image, masks=True), count, "mask_image")
            )
        results = self._score(originals, generated, masks, prompts, category, value_range)
        _log_components(results, log_metric, log_metrics, log_extra)
        return self._values(results)

    def value(self, result: HFPCResult) -> float | None:
        """The scalar this reward gives one judged item."""
        return result.reward

    def _values(self, results: list[HFPCResult]) -> list[float | None]:
        """`value` of each result; None (abstain) where the item could not be judged."""
        return [None if result.error is not None else self.value(result) for result in results]

    def score(
        self,
        original: Any,
        image: Any,
        prompt: str | None = None,
        product_mask: Any = None,
        category: str | None = None,
        value_range: str = "0,1",
    ) -> float:
        """The reward of one generated `image` of `original`: a float, or PairNotJudgedError saying why not."""
        result = self.judge(original, [image], prompt, product_mask, category, value_range)[0]
        if result.error is not None:
            raise PairNotJudgedError(f"the pair could not be judged: {result.error}")
        return float(self.value(result))

    def rank(
        self,
        original: Any,
        candidates: Any,
        prompt: str | None = None,
        product_mask: Any = None,
        category: str | None = None,
        value_range: str = "0,1",
    ) -> Ranking:
        """Candidates of one original, best first: passing ones by reward, then failing ones by reward, then
        the ones that could not be judged."""
        results = self.judge(original, candidates, prompt, product_mask, category, value_range)
        values = self._values(results)

        def key(i: int) -> tuple:
            return (values[i] is None, not results[i].passed, -(values[i] or 0.0), i)

        return Ranking(order=sorted(range(len(results)), key=key), rewards=values, results=results)

    def judge(
        self,
        original: Any,
        candidates: Any,
        prompt: str | None = None,
        product_mask: Any = None,
        category: str | None = None,
        value_range: str = "0,1",
    ) -> list[HFPCResult]:
        """The full judgement (HFPCResult) of each candidate generated from one original."""
        generated = images.as_batch(candidates)
        masks = None if product_mask is None else [product_mask] * len(generated)
        return self._score([original] * len(generated), generated, masks, prompt, category, value_range)

    def _score(self, originals, generated, masks, prompts, categories, value_range) -> list[HFPCResult]:
        """The scorer's judgement; a reward refuses (raises on) a product mask that looks inverted."""
        return self.scorer.score(
            originals,
            generated,
            masks=masks,
            prompts=prompts,
            categories=categories,
            value_range=value_range,
            inverted_masks="raise",
        )


@dataclass
class Ranking:
    """`HFPCReward.rank`'s answer: candidate indices best first, and each candidate's reward and result."""

    order: list[int]  # candidate indices, best first
    rewards: list[float | None]  # reward of each candidate in input order (None = not judged)
    results: list[HFPCResult]  # full judgement of each candidate in input order

    @property
    def best_index(self) -> int | None:
        """The best passing candidate's index, or None when none passed."""
        first = self.order[0] if self.order else None
        return first if first is not None and self.results[first].passed else None


class BackgroundReward(HFPCReward):
    """The background judge alone: the reward model's standardised score (needs `reward_model.path`)."""

    __name__ = "hfpc_background"

    def value(self, result: HFPCResult) -> float | None:
        return result.background_score


class ConsistencyReward(HFPCReward):
    """The product judge alone: the consistency score in [0,1] (>= 0.5 when the product was kept)."""

    __name__ = "hfpc_consistency"
    default_judges = "consistency"

    def value(self, result: HFPCResult) -> float | None:
        return float(result.consistency.score)


def _build_scorer(config: ScorerConfig) -> HFPCScorer:
    """The scorer's models, loaded now: anything that keeps them from loading is a RewardSetupError."""
    try:
        return HFPCScorer.from_config(config)
    except UsageError:
        raise
    except (OSError, ValueError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RewardSetupError(
            f"the reward's models do not load (reward_model.path={config.reward_model.path!r}, consistency "
            f"backend {config.consistency.backend!r}): {first}"
        ) from exc


def _broadcast(items: list, count: int, name: str) -> list:
    if len(items) == 1 and count > 1:
        return items * count
    if len(items) != count:
        raise UsageError(
            f"got {len(items)} {name} for {count} completions: pass one per completion, or one for all"
        )
    return items


def _refuse_masks_equal_to_repaint(product_masks: list, repaint_masks: list) -> None:
    for index, (product, repaint) in enumerate(zip(product_masks, repaint_masks)):
        if product is not None and repaint is not None:
            product = images.load_mask(product)
            repaint = images.load_mask(repaint, size=(product.shape[1], product.shape[0]))
            images.refuse_repaint_mask(product, repaint, name=f"item {index}")


def _log_components(results: list[HFPCResult], log_metric, log_metrics, log_extra) -> None:
    judged = [r for r in results if r.error is None]
    metrics: dict[str, float] = {"hfpc/error_rate": 1.0 - len(judged) / len(results)} if results else {}
    if judged:
        metrics["hfpc/pass_rate"] = float(np.mean([r.passed for r in judged]))
        metrics["hfpc/consistent_rate"] = float(np.mean([r.consistency.consistent for r in judged]))
        metrics["hfpc/consistency_score"] = float(np.mean([r.consistency.score for r in judged]))
        backgrounds = [r.background_score for r in judged if r.background_score is not None]
        if backgrounds:
            metrics["hfpc/background_score"] = float(np.mean(backgrounds))
    metrics = {name: value for name, value in metrics.items() if math.isfinite(value)}  # never a NaN
    if log_metric is not None:
        for name, value in metrics.items():
            log_metric(name, value)
    if log_metrics is not None and metrics:
        log_metrics(metrics)
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
        self, generated: Any, prompts: Sequence[str], metadata: Sequence[dict]
    ) -> tuple[np.ndarray, dict]:
        if len(metadata) != len(prompts):
            raise UsageError(f"got {len(metadata)} metadata dicts for {len(prompts)} prompts")
        missing = [i for i, meta in enumerate(metadata) if "image" not in meta]
        if missing:
            raise KeyError(
                f"metadata of samples {missing[:5]} has no 'image' (the original); add it per sample"
            )
        if any("mask_image" in meta and "product_mask" not in meta for meta in metadata):
            warnings.warn(
                "metadata 'mask_image' as the product mask is deprecated: name it 'product_mask' (white = product)",
                DeprecationWarning,
                stacklevel=2,
            )
        extras: dict[str, list] = {}
        values = self.reward(
            prompts=list(prompts),
            completions=generated,
            image=[meta["image"] for meta in metadata],
            product_mask=[meta.get("product_mask", meta.get("mask_image")) for meta in metadata],
            category=[meta.get("category") for meta in metadata],
            log_extra=extras.__setitem__,
        )
        rewards = np.array([np.nan if v is None else v for v in values], dtype=np.float32)
        return rewards, extras


def as_ddpo_reward_fn(reward: HFPCReward) -> Callable[[Any, Sequence[str], Sequence[dict]], tuple]:
    """`fn(images, prompts, metadata) -> (rewards np.ndarray (B,), info dict)` for ddpo-pytorch-style trainers.

    `metadata[i]` must carry the original as `"image"` and may carry the product mask as `"product_mask"`.
    Abstentions are NaN in the array (that family's convention: mask them out, e.g. `np.isfinite`); `info`
    holds the per-sample columns (passed, scores, reasons).
    """
    return _DdpoRewardFn(reward)


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

    def __call__(
        self, original_pixels, generated_pixels, product_mask, prompts: Sequence[str | None] | None = None
    ):
        """(B,3,H,W) originals and generations in [0,1], (B,1,H,W) or (B,H,W) product masks (1 = product)
        -> (B,) rewards."""
        if original_pixels.shape != generated_pixels.shape:
            raise UsageError(
                f"original {tuple(original_pixels.shape)} and generated {tuple(generated_pixels.shape)} pixels "
                "must have the same shape; resize the originals to the generation size first"
            )
        mask = product_mask.to(generated_pixels.dtype)
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
        squared = (generated_pixels - original_pixels.detach()) ** 2 * mask
        preservation = squared.flatten(1).sum(1) / (3 * mask.flatten(1).sum(1)).clamp_min(1.0)
        background = self.reward_model(original_pixels.detach(), generated_pixels, prompts)
        return self.background_weight * background - self.preservation_weight * preservation


def differentiable_reward(original_pixels, generated_pixels, product_mask, reward_model, **weights):
    """Functional form of `DifferentiableHFPCReward(reward_model, **weights)(original, generated, product_mask)`."""
    return DifferentiableHFPCReward(reward_model, **weights)(original_pixels, generated_pixels, product_mask)
