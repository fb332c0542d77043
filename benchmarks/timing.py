"""Wall-clock timing shared by the benchmarks (run them as `python -m benchmarks.NAME` from the repo root)."""

from __future__ import annotations

import statistics
import time

import torch


def timed(fn, device: str, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call; CUDA work is synchronised around each."""
    fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
