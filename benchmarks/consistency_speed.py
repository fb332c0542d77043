"""Speed of the classic consistency backend on 512x512 pairs, on one thread.

    python benchmarks/consistency_speed.py [--originals 6] [--per-original 8] [--size 512]

Prints CPU milliseconds per pair (process time, best of 3: robust on a shared machine) for (a) one `check` call per pair from files (what a naive caller does),
(b) one call per pair on decoded images (the checker's own compute), and (c) batches that share an
original (`per-original` generations each, as in manifest mode and RL sampling), plus `hfpc check
--manifest` end to end; the ratios are the speed-up of sharing the original-side work. Last, the appearance
metrics alone on the product's window (what the checker does) against the same metrics on the whole image,
run alternately in this process.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np

from hfpc_reward.consistency import appearance
from hfpc_reward.consistency.checker import ANALYSIS_KEY, ProductConsistencyChecker
from hfpc_reward.consistency.commands import check_manifest
from hfpc_reward.consistency.config import ConsistencyConfig
from hfpc_reward.data.manifest import read_manifest
from hfpc_reward.images import load_mask, load_rgb
from hfpc_reward.sample.pairs import generate_pairs


def timed(function, repeats: int = 3) -> float:
    """Best of `repeats` runs, in CPU seconds of this process (one thread: a busy shared machine does not count)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        function()
        best = min(best, time.process_time() - start)
    return best


def appearance_window_speed(checker, products, generated) -> tuple[float, float]:
    """CPU seconds per pair of the appearance metrics on the product's window and on the whole image (a
    window margin past the image's size), measured alternately (best of 3 rounds each)."""
    config, window, whole = checker.config.metrics, [], []
    for product in products:
        window.append(checker._analysis_original(product))
        product.cache.pop(ANALYSIS_KEY)
        default, appearance.WINDOW_MARGIN = appearance.WINDOW_MARGIN, 10 * max(product.mask.shape)
        whole.append(checker._analysis_original(product))
        appearance.WINDOW_MARGIN = default
        product.cache[ANALYSIS_KEY] = window[-1]
    small = [
        [
            cv2.resize(np.asarray(g.convert("RGB")), o.rgb.shape[1::-1], interpolation=cv2.INTER_AREA)
            for g in gs
        ]
        for o, gs in zip(window, generated)
    ]
    n = sum(len(gs) for gs in small)
    best = {"window": float("inf"), "whole": float("inf")}
    for _ in range(3):
        for name, originals in (("window", window), ("whole", whole)):
            start = time.process_time()
            for original, gs in zip(originals, small):
                for g in gs:
                    appearance.appearance_metrics(original, g, config)
            best[name] = min(best[name], (time.process_time() - start) / n)
    return best["window"], best["whole"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--originals", type=int, default=6)
    parser.add_argument("--per-original", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cv2.setNumThreads(1)
    checker = ProductConsistencyChecker.from_config(ConsistencyConfig())
    with tempfile.TemporaryDirectory() as tmp:
        rows = read_manifest(
            generate_pairs(Path(tmp) / "pairs", n_pairs=4 * args.originals, seed=0, size=args.size)
        )
        by_origin: dict[str, list] = {}
        for row in rows:
            by_origin.setdefault(row.origin, []).append(row)
        # each original with `per_original` generations (its sample generations, repeated as needed)
        groups = [
            (origin, group[0].mask, [group[k % len(group)].generation for k in range(args.per_original)])
            for origin, group in by_origin.items()
        ]
        pairs = [
            (origin, mask, generation) for origin, mask, generations in groups for generation in generations
        ]
        n = len(pairs)
        checker.check([pairs[0][0]], [pairs[0][2]], masks=[pairs[0][1]])  # warm-up

        from_files = timed(lambda: [checker.check([o], [g], masks=[m]) for o, m, g in pairs]) / n
        decoded = [(load_rgb(o), load_mask(m), load_rgb(g)) for o, m, g in pairs]
        in_memory = timed(lambda: [checker.check([o], [g], masks=[m]) for o, m, g in decoded]) / n
        shared = (
            timed(lambda: [checker.check([o] * len(gs), gs, masks=[m] * len(gs)) for o, m, gs in groups]) / n
        )
        products = checker.prepare_originals(
            [load_rgb(o) for o, _, _ in groups], [load_mask(m) for _, m, _ in groups]
        )
        generated = [[load_rgb(g) for g in gs] for _, _, gs in groups]
        cached = (
            timed(lambda: [checker.check_prepared([p] * len(gs), gs) for p, gs in zip(products, generated)])
            / n
        )
        manifest_rows = [row for origin, _, gs in groups for row in rows if row.origin == origin]
        manifest = timed(
            lambda: check_manifest(manifest_rows, ConsistencyConfig(), Path(tmp) / f"r{time.time()}.jsonl"), 1
        )
        manifest /= len(manifest_rows)
        window, whole = appearance_window_speed(checker, products, generated)

    print(
        f"classic backend, {args.size}x{args.size}, one thread, {n} pairs, {args.per_original} per original"
    )
    print(f"  one call per pair, from files           {1000 * from_files:7.1f} ms/pair")
    print(f"  one call per pair, decoded images       {1000 * in_memory:7.1f} ms/pair")
    print(
        f"  shared originals, from files            {1000 * shared:7.1f} ms/pair   speed-up x{from_files / shared:.2f}"
    )
    print(
        f"  prepared originals, decoded generations {1000 * cached:7.1f} ms/pair   speed-up x{in_memory / cached:.2f}"
    )
    print(
        f"  hfpc check --manifest (files, JSONL)    {1000 * manifest:7.1f} ms/pair   speed-up x{from_files / manifest:.2f}"
    )
    print(
        f"  appearance metrics on the window        {1000 * window:7.1f} ms/pair   vs whole image {1000 * whole:.1f}, "
        f"speed-up x{whole / window:.2f}"
    )


if __name__ == "__main__":
    main()
