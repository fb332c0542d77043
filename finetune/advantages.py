"""Group-normalised advantages (DDPO's per-prompt stat tracking, GRPO-style groups).

Each sample's reward is standardised by the mean/std of its group key (product, mask, prompt). A group
with fewer than `min_count` valid rewards falls back to the whole batch's statistics. Rewards of past
epochs can be kept per key (`history`) to steady the statistics. Abstained rewards (NaN) get advantage 0.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

STD_EPSILON = 1e-6  # added to every std, so a group of equal rewards gives advantages 0, not a division by 0


class GroupAdvantages:
    def __init__(self, min_count: int, history: int = 0):
        self.min_count = min_count
        self.history = history  # past epochs of rewards kept per key
        self.past: dict[str, list[list[float]]] = defaultdict(list)  # key -> rewards of recent epochs

    def __call__(self, keys: list[str], rewards: np.ndarray) -> np.ndarray:
        """Advantages (N,) for rewards (N,) with NaN = abstained; updates the per-key history."""
        rewards = np.asarray(rewards, dtype=np.float64)
        valid = np.isfinite(rewards)
        advantages = np.zeros_like(rewards)
        if not valid.any():
            return advantages
        batch_mean, batch_std = rewards[valid].mean(), rewards[valid].std() + STD_EPSILON
        by_key: dict[str, list[int]] = defaultdict(list)
        for index, key in enumerate(keys):
            by_key[key].append(index)
        for key, indices in by_key.items():
            current = [rewards[i] for i in indices if valid[i]]
            pool = current + [value for epoch in self.past.get(key, []) for value in epoch]
            if len(pool) >= self.min_count:
                mean, std = np.mean(pool), np.std(pool) + STD_EPSILON
            else:
                mean, std = batch_mean, batch_std
            for i in indices:
                if valid[i]:
                    advantages[i] = (rewards[i] - mean) / std
            if self.history:
                self.past[key] = (self.past.get(key, []) + [current])[-self.history :]
        return advantages

    def state_dict(self) -> dict:
        return {"past": dict(self.past)}

    def load_state_dict(self, state: dict) -> None:
        self.past = defaultdict(list, {key: list(value) for key, value in state["past"].items()})
