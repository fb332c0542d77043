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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from hfpc_reward import images
from hfpc_reward.config import resolve_device
from hfpc_reward.consistency.config import ConsistencyConfig
from hfpc_reward.errors import UsageError

REWARD_POLICIES = ("gate", "product", "weighted")


@dataclass
class RewardModelRef:
    """Which background reward model to load, and how."""

    path: str = (
        ""  # folder or hub id of a trained HFPCRewardModel; "" = no background judge (consistency only)
    )
    device: str = "auto"  # torch device the reward model runs on; "auto" = CUDA when present, else CPU
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
    cache_size: int = (
        16  # distinct originals kept: product mask + cross-attention K/V (~42 MB each at BLIP-base fp32)
    )
    # threads checking consistency while the reward model scores (a batch's items split between them;
    # OpenCV/numpy release the GIL); 0 = check in the calling thread before the reward model runs
    consistency_threads: int = 1

    def __post_init__(self):
        if self.cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {self.cache_size}")
        if self.consistency_threads < 0:
            raise ValueError(f"consistency_threads must be >= 0, got {self.consistency_threads}")


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
            "failed_checks": [] if report is None else list(report.failed_checks),
            "primary_reason": None if report is None else report.primary_reason,
            "reasons": list(self.reasons),
            "error": self.error,
        }


class HFPCScorer:
    """Both HFPC judges on batches of pairs, with the original side of each pair computed once.

    The original side (consistency product mask and features; for the reward model, the original's
    cross-attention keys/values in every text layer, its `OriginalMemory`) is kept in a bounded LRU cache
    keyed by content (`images.content_key`), so scoring G generations of one original, or the same
    originals again in the next RL step, encodes and projects each original once.
    """

    def __init__(self, reward_model: Any, checker: Any, config: ScorerConfig | None = None):
        self.reward_model = reward_model  # HFPCRewardModel or None (consistency-only judging)
        self.checker = checker  # ProductConsistencyChecker
        self.config = config or ScorerConfig()
        self._products = _LRU(
            self.config.cache_size
        )  # (image, mask, category) key -> OriginalProduct or error
        self._memories = _LRU(self.config.cache_size)  # image key -> reward model's OriginalMemory
        if reward_model is not None:
            reward_model.eval()

    @classmethod
    def from_config(cls, config: ScorerConfig) -> HFPCScorer:
        from hfpc_reward.consistency.checker import ProductConsistencyChecker

        reward_model = None
        if config.reward_model.path:
            import torch

            from hfpc_reward.reward.model import HFPCRewardModel

            reward_model = HFPCRewardModel.from_pretrained(
                config.reward_model.path,
                device=resolve_device(config.reward_model.device),
                dtype=getattr(torch, config.reward_model.dtype),
                trained=True,
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
        prompts: Sequence[str | None] | str | None = None,
        categories: Sequence[str | None] | str | None = None,
        value_range: str = "0,1",
        inverted_masks: str = "error",
    ) -> list[HFPCResult]:
        """One HFPCResult per (originals[i], generated[i]); a bad item gets `error` and `reward=None`.

        `masks` are product masks (white = product). `prompts` are the background prompts (the reward
        model's query text); `categories` name the product for detecting backends (grounded-*; else
        `grounded.default_prompt`); a single string applies to every item. A single image is a batch of
        one. `value_range` declares float tensors' range ("0,1", "-1,1" or "0,255"); tensors reach the
        reward model on their own device, without a trip through 8-bit images. A given mask that looks
        inverted (`images.refuse_inverted_mask`) errors its item, or raises with `inverted_masks="raise"`.
        """
        originals = _unit_batch(originals, value_range, "originals")
        generated = _unit_batch(generated, value_range, "generated images", per_item=True)
        count = len(generated)
        masks = [None] * count if masks is None else images.as_batch(masks, masks=True)
        prompts = _per_item(prompts, count)
        categories = _per_item(categories, count)
        if not len(originals) == len(masks) == len(prompts) == len(categories) == count:
            raise UsageError(
                f"got {len(originals)} originals, {count} generated images, {len(masks)} masks, {len(prompts)} "
                f"prompts and {len(categories)} categories: pass one of each per generated image (None where unknown)"
            )
        results = [HFPCResult() for _ in range(count)]
        sides = self._original_sides(originals, masks, categories, results, inverted_masks)
        pixels = [
            _load_or_error(generated[i], results[i]) if sides[i] is not None else None for i in range(count)
        ]
        good = [i for i in range(count) if pixels[i] is not None]
        # tensors go to the reward model as they are (their device); the rest as decoded above, not again
        sources = [generated[i] if images.is_tensor(generated[i]) else pixels[i] for i in good]
        reports, background = self._both_judges(
            [sides[i][0] for i in good],
            [pixels[i] for i in good],
            lambda: self._background_scores([sides[i][1] for i in good], sources, [prompts[i] for i in good]),
        )
        for k, i in enumerate(good):
            self._judge(results[i], reports[k], None if background is None else background[k])
        return results

    def clear_cache(self) -> None:
        self._products.clear()
        self._memories.clear()

    # ------------------------------------------------------------------------------------------ internals
    def _original_sides(self, originals, masks, categories, results, inverted_masks) -> list[tuple | None]:
        """(OriginalProduct, reward-model OriginalMemory or None) per item, from the caches or computed for the
        missing ones (an unreferenced reward model needs no original side)."""
        image_keys = [images.content_key(o) for o in originals]
        keys = [
            (image_key, None if m is None else images.content_key(m), c)
            for image_key, m, c in zip(image_keys, masks, categories)
        ]
        current = {key: self._products.get(key) for key in keys if key in self._products}  # this call's sides
        missing = [keys.index(key) for key in dict.fromkeys(keys) if key not in current]
        if missing:
            products = self.checker.prepare_originals(
                [originals[i] for i in missing],
                [masks[i] for i in missing],
                [categories[i] for i in missing],
                errors="report",
            )
            for i, product in zip(missing, products):
                current[keys[i]] = _refusing_inverted(product, originals[i], inverted_masks)
        for key, product in current.items():
            self._products.put(key, product)
        memories = {key: self._memories.get(key) for key in image_keys if key in self._memories}
        if self.reward_model is not None and self.reward_model.config.referenced:
            need = {  # tensors go to the model as they are (their device, no 8-bit trip); others as decoded
                image_key: original if images.is_tensor(original) else current[key].image
                for image_key, key, original in zip(image_keys, keys, originals)
                if image_key not in memories and not isinstance(current[key], Exception)
            }
            memories.update(zip(need, self._encode_originals(list(need.values()))))
            for image_key, value in memories.items():
                self._memories.put(image_key, value)
        sides: list[tuple | None] = []
        for image_key, key, result in zip(image_keys, keys, results):
            product = current[key]
            if isinstance(product, Exception):
                result.error = f"original: {product}"
                sides.append(None)
            else:
                sides.append((product, memories.get(image_key)))
        return sides

    def _both_judges(self, products: list, pixels: list, background_scores) -> tuple[list, list | None]:
        """Consistency reports of `pixels` against `products` and the reward model's `background_scores()`,
        the consistency check running in `config.consistency_threads` threads beside the reward model."""
        threads = min(self.config.consistency_threads, len(pixels))
        if threads == 0:
            return self.checker.check_prepared(products, pixels, errors="report"), background_scores()
        bounds = [len(pixels) * k // threads for k in range(threads + 1)]
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hfpc-consistency") as pool:
            futures = [
                pool.submit(self.checker.check_prepared, products[a:b], pixels[a:b], errors="report")
                for a, b in pairwise(bounds)
            ]
            background = background_scores()
            return [report for future in futures for report in future.result()], background

    def _encode_originals(self, sources: list) -> list:
        """The reward model's `OriginalMemory` of each original (one per image), encoded in batches."""
        import torch

        out = []
        batch = self.config.reward_model.batch_size
        with torch.inference_mode():
            for start in range(0, len(sources), batch):
                chunk = self._model_pixels(sources[start : start + batch])
                out.extend(self.reward_model.encode_original(chunk).split())
        return out

    def _model_pixels(self, sources: list):
        """(B,3,H,W) pixels in [0,1] for the reward model: same-size tensors are stacked where they are (a
        CUDA batch stays on its GPU; the model resizes on its device), anything else is decoded."""
        import torch

        if all(images.is_tensor(s) for s in sources) and len({tuple(s.shape) for s in sources}) == 1:
            return torch.stack(sources)
        decoded = [images.load_rgb(s) for s in sources]
        return self.reward_model.load_pixels(decoded)

    def _background_scores(self, original_memories, pixels, prompts) -> list[float] | None:
        """Standardised background scores of the generated sources `pixels` (tensors stay on their device)."""
        if self.reward_model is None or not pixels:
            return None
        import torch

        from hfpc_reward.reward.memory import OriginalMemory

        model = self.reward_model
        scores: list[float] = []
        batch = self.config.reward_model.batch_size
        with torch.inference_mode():
            for start in range(0, len(pixels), batch):
                stop = start + batch
                originals = None
                if model.config.referenced:
                    originals = OriginalMemory.cat(original_memories[start:stop])
                generated = model.encode_images(self._model_pixels(pixels[start:stop]))
                chunk = model.score_from_tokens(originals, generated, prompts[start:stop])
                scores.extend(chunk.float().cpu().tolist())
        return scores

    def _judge(self, result: HFPCResult, report: Any, background: float | None) -> None:
        result.consistency = report
        if report.error is not None:
            result.error = report.error
            return
        if background is not None and not math.isfinite(background):  # a NaN is never reported as a score
            result.error = (
                f"the reward model returned {background} (overflow? try reward_model.dtype=float32)"
            )
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


class _LRU(OrderedDict):
    """A bounded mapping that forgets the least recently used entry first."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def get(self, key, default=None):
        if key not in self:
            return default
        self.move_to_end(key)
        return self[key]

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


def _unit_batch(batch: Any, value_range: str, name: str, per_item: bool = False) -> list[Any]:
    """A batch (or one image) as a list of items; float tensors / arrays rescaled into [0,1] where they are.
    `per_item`: an item with NaN or infinite values (a diverged decode) becomes an ImageLoadError in its
    place, for that item alone to fail; values outside the declared range still raise (a wrong declaration)."""
    items = []
    for item in images.as_batch(batch):
        if not (images.is_floating(item) or images.is_tensor(item)):  # an integer tensor is 0..255 as well
            items.append(item)
        elif per_item and not images.all_finite(item):
            items.append(images.ImageLoadError(f"pixels of shape {tuple(item.shape)} are NaN or infinite"))
        else:
            items.append(images.to_unit_range(item, value_range, name=name))
    return items


def _per_item(values: Sequence[str | None] | str | None, count: int) -> list[str | None]:
    """One value per item: None -> Nones, a single string -> that string for every item."""
    if values is None or isinstance(values, str):
        return [values] * count
    return list(values)


def _refusing_inverted(product: Any, original: Any, inverted_masks: str) -> Any:
    """`product`, or an InvertedMaskError in its place when its given mask looks inverted (raised if asked)."""
    if isinstance(product, Exception) or product.source != "given":
        return product
    try:
        images.refuse_inverted_mask(product.mask, product.image, name=images.describe(original))
    except images.InvertedMaskError as exc:
        if inverted_masks == "raise":
            raise
        return exc
    return product


def _load_or_error(source: Any, result: HFPCResult):
    try:
        if isinstance(source, images.ImageLoadError):  # refused by _unit_batch
            raise source
        return images.load_rgb(source)
    except images.ImageLoadError as exc:
        result.error = f"generated: {exc}"
        return None


def _sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))
