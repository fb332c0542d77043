"""Strict configuration: nested dataclasses with defaults, YAML deltas, dotted command-line overrides.

Every component declares its settings as a dataclass next to the code it configures. A YAML file under
`configs/` holds only the fields it changes; `section.field=value` overrides given on the command line
win over the file. Unknown keys and wrong types are errors that name the key (OmegaConf structured
configs do the merging, type checks and close-match suggestions). `__post_init__` of each dataclass
validates values, so a config object that exists is a valid one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hfpc_reward.errors import UsageError

logger = logging.getLogger(__name__)

T = TypeVar("T")

RESOLVED_CONFIG_NAME = "config.resolved.yaml"


class ConfigError(UsageError):
    """A configuration file or override is invalid; the message says which key and how to fix it."""


def load_config(schema: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Build a `schema` instance from its defaults, an optional YAML delta and dotted overrides.

    `overrides` are strings like `"thresholds.max_expansion=0.1"`; they are applied after the file.
    `key=` sets an empty string; `key=null` sets None.
    Raises ConfigError naming the offending key (with a close match when it is a typo).
    """
    merged = OmegaConf.structured(schema)
    layers = []
    if path is not None:
        layers.append((str(path), _read_yaml(Path(path))))
    overrides = [
        f'{item}""' if item.endswith("=") else item for item in overrides
    ]  # `key=` means an empty string
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.field=value")
    if overrides:
        layers.append(("command line", OmegaConf.to_container(OmegaConf.from_dotlist(overrides))))
    for source, layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as exc:
            raise ConfigError(
                f"invalid config in {source}: {_first_line(exc)} (key: {exc.full_key})"
            ) from None
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid config: {_first_line(exc)} (key: {exc.full_key})") from None
    except ValueError as exc:  # a dataclass __post_init__ rejected a value
        raise ConfigError(f"invalid config: {exc}") from None


def config_to_dict(config: Any) -> dict:
    """A plain, YAML-safe dict of a config dataclass (nested dataclasses become dicts)."""
    return OmegaConf.to_container(OmegaConf.structured(config), enum_to_str=True)


def save_resolved_config(config: Any, out_dir: str | Path) -> Path:
    """Write the fully resolved config next to a run's outputs, so the run can be reproduced."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / RESOLVED_CONFIG_NAME
    target.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return target


def config_from_dict(schema: type[T], values: dict) -> T:
    """Rebuild a config dataclass from a dict (e.g. one stored in a checkpoint), strictly."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid stored config: {_first_line(exc)} (key: {exc.full_key})") from None
    except ValueError as exc:  # a dataclass __post_init__ rejected a value
        raise ConfigError(f"invalid stored config: {exc}") from None


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]
