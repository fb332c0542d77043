"""HFPCScorer: both HFPC judges on a batch of (original, generated) pairs -> one HFPCResult each.

The background judge is the image-referenced reward model (standardised score, pass threshold stored in
its folder); the product judge is the consistency checker. A verdict policy and a reward policy turn the
two into `passed` and `reward`:

- pass = consistent AND background_score >= threshold (a scorer without a reward model judges consistency
  alone).
- reward policies (config `policy.reward`):
  - "gate": reward = background score when the product is consistent, else `fail_value`. The default for
    RL: a changed product is never worth a nice background, and the scale stays the reward model's.
  - "product": reward = background probability (sigmoid of the standardised score) x consistency score.
    Smooth in both judges; useful for best-of-N ranking where near-misses should still rank.
  - "weighted": reward = w_bg * background score + w_cons * consistency score. For trainers that want
    both signals without a hard gate (e.g. early in training when almost nothing is consistent).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from hfpc_reward import images
from hfpc_reward.consistency.config import ConsistencyConfig

REWARD_POLICIES = ("gate", "product", "weighted")


@dataclass
class RewardModelRef:
    """Which background reward model to load, and how."""

    path: str = ""  # folder or hub id of a trained HFPCRewardModel; "" = no background judge (consistency only)
    device: str = "cpu"  # torch device the reward model runs on
    dtype: str = "float32"  # torch dtype name ("float32", "float16", "bfloat16")
    batch_size: int = 16  # pairs per forward pass

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"reward_model.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class PolicyConfig:
    """How the two judges become a verdict and a scalar reward."""

    reward: str = "gate"  # "gate" | "product" | "weighted" (see module docstring)
    threshold: float | None = None  # background pass threshold; None = the one stored with the reward model
    fail_value: float = -3.0  # "gate": reward of an inconsistent product (scores are standardised, ~N(0,1))
    background_weight: float = 1.0  # "weighted": weight of the background score
    consistency_weight: float = 1.0  # "weighted": weight of the consistency score in [0,1]

    def __post_init__(self):
        if self.reward not in REWARD_POLICIES:
            raise ValueError(f"policy.reward must be one of {REWARD_POLICIES}, got {self.reward!r}")


@dataclass
class ScorerConfig:
    reward_model: RewardModelRef = field(default_factory=RewardModelRef)  # the background judge
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)  # the product judge
    policy: PolicyConfig = field(default_factory=PolicyConfig)  # verdict and reward
    cache_size: int = 64  # distinct originals whose judged side (tokens, product mask) is kept in memory

    def __post_init__(self):
        if self.cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {self.cache_size}")


@dataclass
class HFPCResult:
    """The judgement of one generated image. `reward` is None when the item could not be judged."""

    background_score: float | None = None  # standardised reward-model score (None without a reward model)
    consistency: Any = None  # the ConsistencyReport of the product judge
    passed: bool | None = None  # consistent and background above threshold
    reward: float | None = None  # scalar from the reward policy; None = abstain
    reasons: list[str] = field(default_factory=list)  # human-readable reasons for a fail
    error: str | None = None  # why this item could not be judged (unreadable image, ...)

    def to_record(self) -> dict[str, Any]:
        """A flat JSON-ready dict, as written by `hfpc score` and the eval harness."""
        report = self.consistency
        return {
            "passed": self.passed,
            "reward": self.reward,
            "background_score": self.background_score,
            "consistent": None if report is None else report.consistent,
            "consistency_score": None if report is None else report.score,
            "metrics": {} if report is None else dict(report.metrics),
            "reasons": list(self.reasons),
            "error": self.error,
        }


class HFPCScorer:
    """Both HFPC judges on batches of pairs, with the original side of each pair computed once.

    The original side (consistency product mask and features, reward-model vision tokens) is kept in a
    bounded LRU cache keyed by content (`images.content_key`), so scoring G generations of one original,
    or the same originals again in the next RL step, encodes each original once.
    """

    def __init__(self, reward_model: Any, checker: Any, config: ScorerConfig | None = None):
        self.reward_model = reward_model  # HFPCRewardModel or None (consistency-only judging)
        self.checker = checker  # ProductConsistencyChecker
        self.config = config or ScorerConfig()
        self._originals: OrderedDict[tuple, _OriginalSide] = OrderedDict()
        if reward_model is not None:
            reward_model.eval()

    @classmethod
    def from_config(cls, config: ScorerConfig) -> "HFPCScorer":
        from hfpc_reward.consistency.checker import ProductConsistencyChecker

        reward_model = None
        if config.reward_model.path:
            import torch

            from hfpc_reward.reward_model import HFPCRewardModel

            reward_model = HFPCRewardModel.from_pretrained(
                config.reward_model.path,
                device=config.reward_model.device,
                dtype=getattr(torch, config.reward_model.dtype),
            )
        return cls(reward_model, ProductConsistencyChecker.from_config(config.consistency), config)

    @property
    def threshold(self) -> float | None:
        """The background pass threshold: the config's override, else the reward model's own."""
        if self.config.policy.threshold is not None:
            return self.config.policy.threshold
        return None if self.reward_model is None else float(self.reward_model.threshold)

    def score(
        self,
        originals: Sequence[Any] | Any,
        generated: Sequence[Any] | Any,
        masks: Sequence[Any] | None = None,
        prompts: Sequence[str | None] | None = None,
    ) -> list[HFPCResult]:
        """One HFPCResult per (originals[i], generated[i]); a bad item gets `error` and `reward=None`."""
        originals, generated = _as_list(originals), _as_list(generated)
        count = len(generated)
        masks = [None] * count if masks is None else _as_list(masks)
        prompts = [None] * count if prompts is None else list(prompts)
        if not len(originals) == len(masks) == len(prompts) == count:
            raise ValueError(
                f"got {len(originals)} originals, {count} generated images, {len(masks)} masks and "
                f"{len(prompts)} prompts: pass one of each per generated image (None where unknown)"
            )
        results = [HFPCResult() for _ in range(count)]
        sides = self._original_sides(originals, masks, prompts, results)
        pixels = [_load_or_error(generated[i], results[i]) if sides[i] is not None else None for i in range(count)]
        good = [i for i in range(count) if pixels[i] is not None]
        reports = self.checker.check_prepared([sides[i].product for i in good], [pixels[i] for i in good], errors="report")
        background = self._background_scores([sides[i] for i in good], [pixels[i] for i in good], [prompts[i] for i in good])
        for k, i in enumerate(good):
            self._judge(results[i], reports[k], None if background is None else background[k])
        return results

    def clear_cache(self) -> None:
        self._originals.clear()

    # ------------------------------------------------------------------------------------------ internals
    def _original_sides(self, originals, masks, prompts, results) -> list["_OriginalSide | None"]:
        keys = [
            (images.content_key(o), None if m is None else images.content_key(m), p)
            for o, m, p in zip(originals, masks, prompts)
        ]
        missing = list(dict.fromkeys(key for key in keys if key not in self._originals))
        first = {key: keys.index(key) for key in missing}
        if missing:
            idx = [first[key] for key in missing]
            products = self.checker.prepare_originals(
                [originals[i] for i in idx], [masks[i] for i in idx], [prompts[i] for i in idx], errors="report"
            )
            tokens = self._encode([p.image for p in products if not isinstance(p, Exception)])
            token_iter = iter(tokens) if tokens is not None else None
            for key, product in zip(missing, products):
                if isinstance(product, Exception):
                    side = _OriginalSide(None, None, str(product))
                else:
                    side = _OriginalSide(product, None if token_iter is None else next(token_iter), None)
                self._originals[key] = side
        sides = []
        for key, result in zip(keys, results):
            side = self._originals[key]
            self._originals.move_to_end(key)
            if side.error is not None:
                result.error = f"original: {side.error}"
                sides.append(None)
            else:
                sides.append(side)
        while len(self._originals) > self.config.cache_size:
            self._originals.popitem(last=False)
        return sides

    def _encode(self, pil_images: list) -> list | None:
        """Reward-model vision tokens (one (N,D) tensor per image), batched; None without a reward model."""
        if self.reward_model is None:
            return None
        import torch

        out = []
        batch = self.config.reward_model.batch_size
        with torch.inference_mode():
            for start in range(0, len(pil_images), batch):
                chunk = self.reward_model.load_pixels(pil_images[start : start + batch])
                out.extend(self.reward_model.encode_images(chunk))
        return out

    def _background_scores(self, sides, pixels, prompts) -> list[float] | None:
        if self.reward_model is None or not sides:
            return None
        import torch

        scores: list[float] = []
        batch = self.config.reward_model.batch_size
        with torch.inference_mode():
            for start in range(0, len(sides), batch):
                stop = start + batch
                generated_tokens = torch.stack(self._encode(pixels[start:stop]))
                original_tokens = torch.stack([side.tokens for side in sides[start:stop]])
                chunk = self.reward_model.score_from_tokens(original_tokens, generated_tokens, prompts[start:stop])
                scores.extend(chunk.float().cpu().tolist())
        return scores

    def _judge(self, result: HFPCResult, report: Any, background: float | None) -> None:
        result.consistency = report
        if report.error is not None:
            result.error = report.error
            return
        result.background_score = background
        result.reasons = list(report.reasons) if not report.consistent else []
        threshold = self.threshold
        background_ok = background is None or threshold is None or background >= threshold
        if not background_ok:
            result.reasons.append(f"background score {background:.2f} below threshold {threshold:.2f}")
        result.passed = bool(report.consistent and background_ok)
        result.reward = self._reward(report, background, threshold)

    def _reward(self, report: Any, background: float | None, threshold: float | None) -> float:
        policy = self.config.policy
        if policy.reward == "gate":
            if not report.consistent:
                return float(policy.fail_value)
            return float(report.score if background is None else background)
        if policy.reward == "product":
            if background is None:
                return float(report.score)
            return float(_sigmoid(background - (threshold or 0.0)) * report.score)
        weighted = policy.consistency_weight * report.score
        return float(weighted if background is None else weighted + policy.background_weight * background)


@dataclass
class _OriginalSide:
    product: Any  # OriginalProduct of the consistency checker
    tokens: Any  # reward-model vision tokens (N,D) of the original, or None without a reward model
    error: str | None  # why this original cannot be judged


def _as_list(batch: Any) -> list:
    if isinstance(batch, (str, Path)) or hasattr(batch, "getpixel"):
        raise TypeError("expected a batch (a list of images or a (B,3,H,W) tensor), got a single image")
    return list(batch)  # a (B,3,H,W) tensor or array splits into B images


def _load_or_error(source: Any, result: HFPCResult):
    try:
        return images.load_rgb(source)
    except images.ImageLoadError as exc:
        result.error = f"generated: {exc}"
        return None


def _sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))
