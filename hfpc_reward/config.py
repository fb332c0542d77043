"""Strict configuration: nested dataclasses with defaults, YAML deltas, dotted command-line overrides.

Every component declares its settings as a dataclass next to the code it configures. A YAML file under
`configs/` holds only the fields it changes; `section.field=value` overrides given on the command line
win over the file. Unknown keys and wrong types are errors that name the key (OmegaConf structured
configs do the merging, type checks and close-match suggestions). `__post_init__` of each dataclass
validates values, so a config object that exists is a valid one.

Overrides are typed by their field: a string field keeps the text as given (`run.mixed_precision=no` is
"no", not False), other fields parse it as YAML. An override inside a dict-valued field (`reward.kwargs.x=1`)
replaces that dict: the file's entries are dropped, the command line's are kept. `describe_fields(schema)`
lists every field with its default and the one-line comment from the source, for `--help`.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import logging
import textwrap
import tokenize
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf, StringNode
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
    if path is not None:
        merged = _merge(merged, _read_yaml(Path(path)), str(path))
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.field=value")
    if overrides:
        merged = _apply_overrides(merged, overrides)
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid config: {_first_line(exc)} (key: {exc.full_key})") from None
    except ValueError as exc:  # a dataclass __post_init__ rejected a value
        raise ConfigError(f"invalid config: {exc}") from None


def _merge(merged: DictConfig, layer: dict, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(merged, layer)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid config in {source}: {_first_line(exc)} (key: {exc.full_key})") from None


def _apply_overrides(merged: DictConfig, overrides: list[str]) -> DictConfig:
    """Merge `key=value` overrides, each typed by its field; dicts they reach into are replaced, not merged."""
    layer: dict = {}
    replaced: set[str] = set()
    for item in overrides:
        key, text = item.split("=", 1)
        parts = key.split(".")
        dict_prefix = _dict_field_prefix(merged, parts)
        if dict_prefix is not None and dict_prefix not in replaced:
            replaced.add(dict_prefix)
            OmegaConf.update(merged, dict_prefix, {}, merge=False)
        value = _override_value(text, _is_string_field(merged, parts))
        target = layer
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {item!r} reaches into {part!r}, which an earlier override set")
        target[parts[-1]] = value
    return _merge(merged, layer, "command line")


def _override_value(text: str, string_field: bool) -> Any:
    """`key=` is "", `null` is None; a string field keeps the text (unless quoted), others parse as YAML."""
    if text in ("null", "~"):
        return None
    quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
    return text if string_field and not quoted else yaml.safe_load(text) if text else ""


def _node(merged: DictConfig, parts: list[str]) -> Any:
    node: Any = merged
    for part in parts:
        if not isinstance(node, DictConfig) or part not in node:
            return None
        node = node._get_node(part)
    return node


def _is_string_field(merged: DictConfig, parts: list[str]) -> bool:
    return isinstance(_node(merged, parts), StringNode)


def _dict_field_prefix(merged: DictConfig, parts: list[str]) -> str | None:
    """The dotted key of the first plain-dict field (not a dataclass section) the override reaches into."""
    for end in range(1, len(parts)):
        node = _node(merged, parts[:end])
        if isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict:
            return ".".join(parts[:end])
        if node is None:
            return None
    return None


def resolve_device(device: str) -> str:
    """A torch device name; "auto" is CUDA when a GPU is present, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def field_comments(schema: type) -> dict[str, str]:
    """{field name: the comment on its line in the source} of a config dataclass (empty when unavailable)."""
    try:
        source = textwrap.dedent(inspect.getsource(schema))
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(schema)}
    comments: dict[str, str] = {}
    current: str | None = None
    depth = 0
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NAME and depth == 0 and current is None and token.string in names:
            if token.start[1] == _body_indent(source):
                current = token.string
        elif token.type == tokenize.OP and token.string in "([{":
            depth += 1
        elif token.type == tokenize.OP and token.string in ")]}":
            depth -= 1
        elif token.type == tokenize.COMMENT and current is not None:
            comments.setdefault(current, token.string.lstrip("#").strip())
        elif token.type == tokenize.NEWLINE:
            current = None
    return comments


def _body_indent(source: str) -> int:
    """The indentation of a class body: that of the first line after `class ...:` (decorators skipped)."""
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("class "))
    body = [line for line in lines[start + 1 :] if line.strip()]
    return len(body[0]) - len(body[0].lstrip()) if body else 4


def describe_fields(schema: type, prefix: str = "") -> list[str]:
    """One line per config field, nested sections included: `key = default  # comment`."""
    comments = field_comments(schema)
    lines: list[str] = []
    for item in dataclasses.fields(schema):
        key = f"{prefix}{item.name}"
        value = _field_default(item)
        if dataclasses.is_dataclass(value):
            lines.append(f"{key}:  # {comments.get(item.name, 'section')}")
            lines.extend(describe_fields(type(value), prefix=f"{key}."))
            continue
        shown = (
            yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
        )
        comment = comments.get(item.name, "")
        lines.append(f"{key} = {shown}" + (f"  # {comment}" if comment else ""))
    return lines


def _field_default(item: dataclasses.Field) -> Any:
    """A field's default without building the whole schema (whose own defaults may be incomplete on purpose,
    e.g. a required manifest path)."""
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return None


def add_config_arguments(parser: argparse.ArgumentParser, schema: type, example: str = "") -> None:
    """`--config FILE`, `--print-config` and positional `section.field=value` overrides for `schema`, with
    every field, its default and its comment listed in `--help`."""
    parser.add_argument(
        "--config",
        type=Path,
        help=f"YAML delta over the defaults below{f', e.g. {example}' if example else ''}",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config (file + overrides) and exit"
    )
    parser.add_argument("overrides", nargs="*", metavar="section.field=value", help="config overrides")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "config fields (section.field = default  # meaning):\n" + "\n".join(
        f"  {line}" for line in describe_fields(schema)
    )
    parser.set_defaults(config_schema=schema)


def print_config_if_asked(args: argparse.Namespace) -> bool:
    """With `--print-config`: write the resolved config of `args` as YAML to stdout and return True."""
    if not getattr(args, "print_config", False):
        return False
    config = load_config(args.config_schema, args.config, args.overrides)
    print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")  # the command's output
    return True


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
