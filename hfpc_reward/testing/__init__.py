"""The offline tiny-model kit shared by tests, the demo and benchmarks.

Each builder writes a tiny random checkpoint with the library's own `save_pretrained`, so everything
downstream loads it through the same `from_pretrained` code path a real checkpoint takes.
`write_tiny_models(dir)` writes every model plus YAML configs pointing at them.
"""

from __future__ import annotations

import importlib
from pathlib import Path

# kit name -> "module:function"; each function(out_dir: Path) writes its checkpoint(s) and returns
# {config_name: dict} of YAML configs (deltas over dataclass defaults) that point at them.
TINY_BUILDERS: dict[str, str] = {
    "grounded_sam": "hfpc_reward.testing.tiny_detection:write_tiny_grounded_sam",
    "efficientsam": "hfpc_reward.testing.tiny_efficientsam:write_tiny_efficientsam",
    "reward_model": "hfpc_reward.testing.tiny_blip:write_tiny_reward_model",
    "sd_inpaint": "hfpc_reward.testing.tiny_sd:write_tiny_sd_inpaint",
}


def write_tiny_models(out_dir: str | Path, only: list[str] | None = None) -> dict[str, Path]:
    """Write the tiny checkpoints and their configs under `out_dir`; returns {config name: yaml path}."""
    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, target in TINY_BUILDERS.items():
        if only and name not in only:
            continue
        module_name, function_name = target.split(":")
        configs = getattr(importlib.import_module(module_name), function_name)(out / name)
        for config_name, values in configs.items():
            path = out / f"{config_name}.yaml"
            path.write_text(yaml.safe_dump(values, sort_keys=False))
            written[config_name] = path
    return written
