"""Best-of-N for production: n inpainted candidates from a diffusers pipeline, the best passing one kept.

`select_best(pipe, image, product_mask, prompt, n, reward=...)` judges every candidate with an HFPCReward
(both judges) and ranks them with `HFPCReward.rank`; without the background judge it refuses to run
unless `judges="consistency"` asks for the product judge alone.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hfpc_reward import images
from hfpc_reward.errors import UsageError
from hfpc_reward.rewards import ConsistencyReward, HFPCReward
from hfpc_reward.scorer import HFPCResult, HFPCScorer, ScorerConfig


@dataclass
class BestOfN:
    """What `select_best` found: the best passing candidate (or None), and every candidate with its result."""

    best: Any  # PIL image of the best passing candidate, or None when none passed
    best_index: int | None  # its index in `candidates`
    candidates: list = field(default_factory=list)  # all n generated images (product pasted back if asked)
    results: list[HFPCResult] = field(default_factory=list)  # one per candidate
    order: list[int] = field(default_factory=list)  # candidate indices, best first (see HFPCReward.rank)


def select_best(
    pipe: Any,
    image: Any,
    product_mask: Any = None,
    prompt: str = "",
    n: int = 8,
    reward: HFPCReward | None = None,
    scorer: HFPCScorer | None = None,
    judges: str = "both",
    category: str | None = None,
    seed: int = 0,
    paste_back: bool = True,
    mask_image: Any = None,
    **pipe_kwargs: Any,
) -> BestOfN:
    """Rejection sampling for production: n inpainted candidates, the best passing one by reward.

    `image` is the original product photo, `product_mask` its product mask (white = product), `category`
    the product's name for detecting consistency backends; the pipeline inpaints the background (the
    inverse of the product mask). With `paste_back`, the original product pixels are pasted onto each
    candidate before judging, as in production. Judge with `reward=` (an HFPCReward, e.g.
    `HFPCReward.from_pretrained(DIR)`) or `scorer=`; without either, or with a judge that has no reward
    model, it refuses to run unless `judges="consistency"` asks for the product judge alone.
    `mask_image` (the product mask under diffusers' repaint-mask name) is deprecated.
    """
    import torch
    from PIL import Image

    if n < 1:
        raise UsageError(f"n must be >= 1, got {n}")
    if product_mask is None and mask_image is not None:
        warnings.warn(
            "select_best(mask_image=...) is deprecated: pass product_mask (white = product)",
            DeprecationWarning,
            stacklevel=2,
        )
        product_mask = mask_image
    if product_mask is None:
        raise UsageError("select_best needs product_mask (white = product): the pipeline repaints the rest")
    reward = _best_of_n_reward(reward, scorer, judges)
    original = images.load_rgb(image)
    product = images.load_mask(product_mask, size=original.size)
    images.refuse_inverted_mask(product, original, name="select_best")
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
    ranking = reward.rank(original, candidates, prompt=prompt, product_mask=product, category=category)
    best_index = ranking.best_index
    best = None if best_index is None else candidates[best_index]
    return BestOfN(best, best_index, candidates, ranking.results, ranking.order)


def _best_of_n_reward(reward: HFPCReward | None, scorer: HFPCScorer | None, judges: str) -> HFPCReward:
    if reward is not None and scorer is not None:
        raise UsageError("select_best takes reward= or scorer=, not both")
    if reward is None and scorer is None:
        if judges != "consistency":
            raise UsageError(
                "select_best needs the background judge: pass reward=HFPCReward.from_pretrained(REWARD_MODEL_DIR) "
                "(or scorer=...), or judges='consistency' to rank candidates by product consistency alone"
            )
        return ConsistencyReward(ScorerConfig())
    chosen = reward if reward is not None else HFPCReward.from_scorer(scorer)
    if chosen.scorer.reward_model is None and judges != "consistency":
        raise UsageError(
            "select_best's judge has no reward model (no background judge): give it one, or pass "
            "judges='consistency' to rank candidates by product consistency alone"
        )
    return chosen
