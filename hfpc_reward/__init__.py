"""hfpc-reward: HFPC judges (BLIP reward model + product consistency) as reward functions.

The public names load lazily (PEP 562), so `import hfpc_reward` stays light (no torch, no diffusers):

    from hfpc_reward import HFPCReward, HFPCScorer, HFPCRewardModel, ProductConsistencyChecker, select_best
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC = {
    "HFPCReward": "hfpc_reward.rewards",
    "BackgroundReward": "hfpc_reward.rewards",
    "ConsistencyReward": "hfpc_reward.rewards",
    "DifferentiableHFPCReward": "hfpc_reward.rewards",
    "as_ddpo_reward_fn": "hfpc_reward.rewards",
    "select_best": "hfpc_reward.best_of_n",
    "HFPCScorer": "hfpc_reward.scorer",
    "HFPCResult": "hfpc_reward.scorer",
    "ScorerConfig": "hfpc_reward.scorer",
    "HFPCRewardModel": "hfpc_reward.reward.model",
    "ProductConsistencyChecker": "hfpc_reward.consistency.checker",
    "ConsistencyReport": "hfpc_reward.consistency.verdict",
    "ConsistencyConfig": "hfpc_reward.consistency.config",
    "load_config": "hfpc_reward.config",
    "read_manifest": "hfpc_reward.data.manifest",
    "UsageError": "hfpc_reward.errors",
}
__all__ = [
    "BackgroundReward",
    "ConsistencyConfig",
    "ConsistencyReport",
    "ConsistencyReward",
    "DifferentiableHFPCReward",
    "HFPCResult",
    "HFPCReward",
    "HFPCRewardModel",
    "HFPCScorer",
    "ProductConsistencyChecker",
    "ScorerConfig",
    "UsageError",
    "__version__",
    "as_ddpo_reward_fn",
    "load_config",
    "read_manifest",
    "select_best",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from hfpc_reward.best_of_n import select_best
    from hfpc_reward.config import load_config
    from hfpc_reward.consistency.checker import ProductConsistencyChecker
    from hfpc_reward.consistency.config import ConsistencyConfig
    from hfpc_reward.consistency.verdict import ConsistencyReport
    from hfpc_reward.data.manifest import read_manifest
    from hfpc_reward.errors import UsageError
    from hfpc_reward.reward.model import HFPCRewardModel
    from hfpc_reward.rewards import (
        BackgroundReward,
        ConsistencyReward,
        DifferentiableHFPCReward,
        HFPCReward,
        as_ddpo_reward_fn,
    )
    from hfpc_reward.scorer import HFPCResult, HFPCScorer, ScorerConfig


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'hfpc_reward' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
