"""Reward functions for fine-tuning, in the TRL keyword convention: resolving, building, probing, calling.

A reward is any callable `fn(*, prompts, completions, image, product_mask=None, **kwargs) -> list[float | None]`:
`completions` are the generated images (PIL list or a (B,3,H,W) tensor in [0,1]), `image` the originals,
`product_mask` the product masks (white / True = product; a callable that names its argument `mask_image`
gets them under that name). `None` abstains: that sample gets no advantage. Optional
`log_metric(name, value)` / `log_extra(column, values)` callbacks report components (e.g. `hfpc/pass_rate`).

`reward.name` (or each `reward.funcs` entry) is a name from `REWARDS` or `module:attribute` naming any such
callable (a class is built with `kwargs`; a function gets `kwargs` bound). Several terms are summed with
their weights, like TRL's `reward_funcs` + `reward_weights`. Every mistake surfaces before the pipeline loads:
`resolve_reward` imports the names, `build_reward` constructs them, `probe_reward` scores one real batch.

The simple rewards here know their optimum, so they prove that learning happens (tests, demo): they score
the *background* only (NOT the product mask), where the inpainting happens.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from hfpc_finetune.config import RewardConfig, RewardFuncConfig

from hfpc_reward.errors import UsageError
from hfpc_reward.images import ImageLoadError, load_batch, load_mask

logger = logging.getLogger(__name__)

# reward name -> "module:attribute"; imported only when chosen (hfpc pulls in the HFPC judges)
REWARDS: dict[str, str] = {
    "hfpc": "hfpc_reward.rewards:HFPCReward",
    "hfpc_background": "hfpc_reward.rewards:BackgroundReward",
    "hfpc_consistency": "hfpc_reward.rewards:ConsistencyReward",
    "background_brightness": "hfpc_finetune.rewards:BackgroundBrightness",
    "background_colour": "hfpc_finetune.rewards:BackgroundColour",
}
PROBE_ITEMS = 4  # products scored by the probe before any model loads
LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma of RGB


class RewardError(UsageError):
    """The configured reward cannot be used: unknown, not importable, not constructible, or failing."""


@dataclass
class RewardTerm:
    """One resolved term of the reward: what to build (`target`), with which arguments, at which weight."""

    name: str  # as configured: a REWARDS name or module:attribute
    target: Any  # the imported class or function
    weight: float
    kwargs: dict[str, Any]


def resolve_reward(config: RewardConfig) -> list[RewardTerm]:
    """Import every configured reward (no model loads); an unknown or broken name is a RewardError."""
    return [_resolve_term(term) for term in config.terms()]


def _resolve_term(term: RewardFuncConfig) -> RewardTerm:
    spec = REWARDS.get(term.name, term.name)
    if ":" not in spec:
        raise RewardError(
            f"unknown reward {term.name!r}: choose one of {sorted(REWARDS)} or name any callable as module:attribute"
        )
    module_name, attribute = spec.split(":", 1)
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except ImportError as exc:
        raise RewardError(f"reward {term.name!r}: cannot import module {module_name!r} ({exc})") from None
    except AttributeError:
        raise RewardError(f"reward {term.name!r}: module {module_name!r} has no {attribute!r}") from None
    if not callable(target):
        raise RewardError(f"reward {term.name!r}: {spec} is not callable")
    return RewardTerm(term.name, target, float(term.weight), dict(term.kwargs))


def build_reward(terms: list[RewardTerm]) -> WeightedReward:
    """Construct every term (a class with its kwargs; HFPC rewards load their judges here)."""
    built = []
    for term in terms:
        try:
            if inspect.isclass(term.target):
                fn = term.target(**term.kwargs)
            else:
                fn = functools.partial(term.target, **term.kwargs) if term.kwargs else term.target
        except UsageError as exc:
            raise RewardError(f"reward {term.name!r}: {_first_line(exc)}") from None
        except (TypeError, ValueError, OSError) as exc:  # wrong kwargs, a missing file or folder
            raise RewardError(
                f"reward {term.name!r} cannot be built with kwargs {term.kwargs}: {_first_line(exc)}"
            ) from None
        built.append((term.name, term.weight, fn))
    return WeightedReward(built)


class WeightedReward:
    """The weighted sum of the reward terms; a sample abstains (None) when any term abstains on it."""

    __name__ = "reward"

    def __init__(self, terms: Sequence[tuple[str, float, Callable]]):
        self.terms = list(terms)
        self.mask_keywords = [_mask_keyword(fn) for _, _, fn in self.terms]  # read once, not per batch

    def __call__(self, *, prompts, completions, image, product_mask=None, log_metric=None, **kwargs) -> list:
        total: list[float | None] = [0.0] * len(prompts)
        for (name, weight, fn), mask_keyword in zip(self.terms, self.mask_keywords):
            values = list(
                fn(
                    prompts=prompts,
                    completions=completions,
                    image=image,
                    **{mask_keyword: product_mask},
                    log_metric=log_metric,
                    **kwargs,
                )
            )
            if len(values) != len(prompts):
                raise ValueError(f"reward {name!r} returned {len(values)} values for {len(prompts)} samples")
            values = finite_or_none(values)
            valid = [v for v in values if v is not None]
            if len(self.terms) > 1 and log_metric is not None and valid:
                log_metric(name, float(np.mean(valid)))
            total = [None if t is None or v is None else t + weight * v for t, v in zip(total, values)]
        return total


def finite_or_none(values) -> list[float | None]:
    """Floats, with None for abstentions and for NaN / inf (never reported as a reward)."""
    return [None if v is None or not np.isfinite(v) else float(v) for v in values]


def _mask_keyword(fn: Callable) -> str:
    """`product_mask`, unless the callable names its product-mask argument `mask_image` (the older name)."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return "product_mask"
    return "mask_image" if "mask_image" in parameters and "product_mask" not in parameters else "product_mask"


@dataclass
class RewardBatch:
    """What one reward call gave: a value per sample (None = abstained) and the first error, if it failed."""

    values: list[float | None]
    error: str | None = None
    extras: dict[str, list] | None = None  # per-sample columns the reward reported through log_extra


def call_reward(
    reward: Callable,
    prompts: list[str],
    completions: list,
    originals: list,
    masks: list,
    log_metric: Callable[[str, float], Any],
    category: list[str | None] | None = None,
) -> RewardBatch:
    """Call a reward on one batch; a failing reward abstains on the batch and reports why (one log line)."""
    extras: dict[str, list] = {}
    try:
        values = reward(
            prompts=prompts,
            completions=completions,
            image=originals,
            product_mask=masks,
            category=category,
            log_metric=log_metric,
            log_extra=extras.__setitem__,
        )
    except Exception as exc:  # one bad batch must not end a long run (the epoch's abstain share decides)
        error = f"{type(exc).__name__}: {_first_line(exc)}"
        logger.warning("reward failed on a batch of %d, abstaining: %s", len(prompts), error)
        logger.debug("reward failure", exc_info=True)
        return RewardBatch([None] * len(prompts), error)
    return RewardBatch(finite_or_none(values), None, extras)


def probe_reward(reward: Callable, items: Sequence[Any]) -> None:
    """Score PROBE_ITEMS products' own photos (as if generated) so a broken reward fails before any model loads.

    The items come from `probe_items`: as many distinct products as the probe holds, not just the first
    rows (a product crossed with several prompts fills them). Raises RewardError with the reward's first
    error, or when it abstains on every probe item.
    """
    batch = probe_items(items)
    try:
        values = reward(
            prompts=[item.prompt for item in batch],
            completions=[item.image for item in batch],
            image=[item.image for item in batch],
            product_mask=[item.product_mask for item in batch],
            category=[item.category for item in batch],
        )
    except Exception as exc:
        logger.debug("reward probe failure", exc_info=True)
        raise RewardError(
            f"the reward failed on a probe batch of {len(batch)} product photos before training: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from None
    if all(value is None for value in values):
        raise RewardError(
            f"the reward abstained (None) on every one of {len(batch)} probe product photos; check its "
            "inputs and settings (reward.kwargs)"
        )
    logger.info("reward probe: %s", ", ".join("abstain" if v is None else f"{v:.4f}" for v in values))


def probe_items(items: Sequence[Any], size: int = PROBE_ITEMS) -> list[Any]:
    """The `size` items the probe scores, covering as many distinct products (`product_id`) as it can:
    each product's first item in manifest order, then the remaining items in manifest order. Deterministic;
    always min(size, len(items)) items, so the probe costs the same whatever the manifest holds."""
    firsts: list[Any] = []
    repeats: list[Any] = []
    seen: set[str] = set()
    for item in items:
        if item.product_id in seen:
            repeats.append(item)
        else:
            seen.add(item.product_id)
            firsts.append(item)
            if len(firsts) == size:
                break
    return (firsts + repeats)[:size]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _BackgroundReward:
    """Shared plumbing: per-sample background pixels (float RGB in [0,1]); subclasses score them."""

    def __call__(self, *, prompts, completions, image, product_mask=None, log_metric=None, **kwargs) -> list:
        generated = load_batch(completions)
        if product_mask is None:
            raise ValueError(f"{self.__name__} needs product_mask (the product masks) to find the background")
        rewards: list[float | None] = []
        for picture, mask in zip(generated, product_mask):
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
        luminance = float((background @ np.array(LUMINANCE_WEIGHTS, dtype=np.float32)).mean())
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
