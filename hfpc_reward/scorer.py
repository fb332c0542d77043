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

from dataclasses import dataclass, field
from typing import Any

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
