"""Judging the samples of an eval: the HFPC judges, the held-out checks, and which judge it was.

One process loads each judge once (`build_scorer`, `build_itm_judge`): the HFPC scorer (reward model on this process's device)
and, when configured, the BLIP ITM held-out judge. The classic consistency checker is CPU work; with
`consistency_workers > 1` its per-image comparisons run in a `concurrent.futures` process pool, so the CPU
side keeps pace with a GPU generating the next batch's images. Pooled or not, the reports are the same.

`judge_samples` fills the judged fields of a batch of sample rows (`JUDGED_FIELDS`, plus the scorer-made
held-out fields `raw_consistent` / `raw_consistency_score`); `judge_stamp` says which judge made them.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from hfpc_eval.generators import Product
from PIL import Image

from hfpc_reward.config import config_to_dict
from hfpc_reward.runs import settings_hash

logger = logging.getLogger(__name__)

# the fields of a sample row the HFPC judges write (HFPCResult.to_record, and `passed` made strict)
JUDGED_FIELDS = (
    "passed",
    "reward",
    "background_score",
    "consistent",
    "consistency_score",
    "metrics",
    "failed_checks",
    "reasons",
    "error",
    "retry",
)
SCORER_HELD_OUT_FIELDS = ("raw_consistent", "raw_consistency_score")  # held-out, but made by the scorer
# scorer settings that do not change a verdict (left out of the judge's hash)
NON_JUDGING_KEYS = frozenset({"device", "dtype", "batch_size", "cache_size"})


def build_scorer(scorer_config, consistency_workers: int = 1) -> Any:
    """The HFPCScorer of a scorer config whose devices are this process's (consistency pooled if asked)."""
    from hfpc_reward.scorer import HFPCScorer

    scorer = HFPCScorer.from_config(scorer_config)
    if consistency_workers > 1:
        scorer.checker = PooledConsistencyChecker(scorer.checker, consistency_workers)
    return scorer


def build_itm_judge(held_out) -> Any:
    """The BLIP ITM held-out judge of a HeldOutConfig, or None when it is off."""
    if not held_out.itm_model:
        return None
    from hfpc_eval.itm import BlipITMJudge

    return BlipITMJudge(held_out.itm_model, held_out.itm_device)


def close_judges(scorer: Any) -> None:
    """Stop a scorer's consistency worker pool, if it has one."""
    if isinstance(getattr(scorer, "checker", None), PooledConsistencyChecker):
        scorer.checker.close()


def judge_stamp(scorer_config) -> dict[str, Any]:
    """Which judge made a run's verdicts: reward model, pass threshold in effect (the config's, else the one
    stored in a local reward-model folder), consistency backend, reward policy, and the hash of every scorer
    setting that changes a verdict (devices, dtypes, batch sizes left out)."""
    threshold = scorer_config.policy.threshold
    stored = Path(scorer_config.reward_model.path or ".") / "config.json"
    if threshold is None and scorer_config.reward_model.path and stored.is_file():
        threshold = json.loads(stored.read_text(encoding="utf-8")).get("threshold")
    return {
        "reward_model": scorer_config.reward_model.path or None,
        "threshold": threshold,
        "consistency_backend": scorer_config.consistency.backend,
        "reward_policy": scorer_config.policy.reward,
        "scorer_hash": settings_hash(_without_keys(config_to_dict(scorer_config), NON_JUDGING_KEYS)),
    }


def _without_keys(value: Any, keys: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {key: _without_keys(item, keys) for key, item in value.items() if key not in keys}
    return value


def judge_samples(
    scorer: Any,
    itm_judge: Any,
    product: Product,
    judged: Sequence[tuple[dict, Image.Image | None, Image.Image]],
    raw_check: bool,
) -> None:
    """Fill the judged fields of each (row, raw image or None, final image): the HFPC judges on the final
    images; with `raw_check`, consistency before paste-back too; ITM when a judge is given. A judge that
    raises marks the rows `retry` (redone on resume) instead of stopping the run."""
    if not judged:
        return
    n = len(judged)
    masks = None if product.mask is None else [product.mask] * n
    finals = [final for _, _, final in judged]
    sides = {"masks": masks, "prompts": [product.prompt] * n, "categories": [product.category or None] * n}
    try:
        results = scorer.score([product.image] * n, finals, **sides)
        for (row, _, _), result in zip(judged, results):
            row.pop("retry", None)
            row.update(result.to_record())
            row["passed"] = bool(result.passed)  # an item the judges could not judge is not a pass
        if raw_check:
            raws = [raw for _, raw, _ in judged]
            for (row, _, _), result in zip(judged, scorer.score([product.image] * n, raws, **sides)):
                report = result.consistency
                row["held_out"]["raw_consistent"] = None if report is None else report.consistent
                row["held_out"]["raw_consistency_score"] = None if report is None else float(report.score)
        if itm_judge is not None:
            for (row, _, _), value in zip(judged, itm_judge.score(finals, [product.prompt] * n)):
                row["held_out"]["itm_match"] = float(value)
    except Exception as exc:  # recorded and retried on resume
        logger.exception("judging %s failed", product.product_id)
        for row, _, _ in judged:
            row.update(passed=False, reward=None, reasons=[], error=f"judging failed: {exc}", retry=True)


def pixel_checks(raw: Image.Image, final: Image.Image, product: Product) -> dict[str, float]:
    """Held-out pixel statistics: product drift before paste-back, background brightness and saturation.

    `product_drift` = mean |raw - original| over product pixels, in [0, 1]: how much the generator itself
    changed the product (paste-back hides it from the judges). Brightness / saturation of the background
    expose a reward model that is being gamed by global colour tricks.
    """
    original = np.asarray(product.image, dtype=np.float32) / 255.0
    raw_px = np.asarray(raw, dtype=np.float32) / 255.0
    hsv = np.asarray(final.convert("HSV"), dtype=np.float32) / 255.0
    background = ~product.mask if product.mask is not None else np.ones(original.shape[:2], bool)
    checks = {}
    if product.mask is not None and product.mask.any():
        checks["product_drift"] = float(np.abs(raw_px - original)[product.mask].mean())
    if background.any():
        checks["background_brightness"] = float(hsv[..., 2][background].mean())
        checks["background_saturation"] = float(hsv[..., 1][background].mean())
    return checks


class PooledConsistencyChecker:
    """A ProductConsistencyChecker whose per-image checks run in worker processes (each builds the same
    checker from the config once); the original side stays in this process, where the scorer caches it."""

    def __init__(self, checker: Any, workers: int):
        self.checker = checker
        self.config = checker.config
        self.workers = workers
        self.pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),  # never fork a process that holds CUDA or gloo
            initializer=_init_worker,
            initargs=(checker.config,),
        )

    def prepare_originals(self, *args, **kwargs):
        return self.checker.prepare_originals(*args, **kwargs)

    def check_prepared(
        self, products: Sequence[Any], generated: Sequence[Any], errors: str = "raise"
    ) -> list:
        """The same reports as the checker's own `check_prepared`, computed `workers` items at a time."""
        products, generated = list(products), list(generated)
        size = max(1, -(-len(products) // self.workers))  # ceil: one chunk per worker
        futures = [
            self.pool.submit(
                _check_chunk, products[start : start + size], generated[start : start + size], errors
            )
            for start in range(0, len(products), size)
        ]
        return [report for future in futures for report in future.result()]

    def close(self) -> None:
        self.pool.shutdown()


_WORKER: dict[str, Any] = {}  # the checker of a pool worker, built once


def _init_worker(config) -> None:
    from hfpc_reward.consistency.checker import ProductConsistencyChecker

    _WORKER["checker"] = ProductConsistencyChecker.from_config(config)


def _check_chunk(products: list, generated: list, errors: str) -> list:
    return _WORKER["checker"].check_prepared(products, generated, errors=errors)
