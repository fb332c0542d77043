"""`hfpc` command line: one subcommand per job, each implemented next to the code it drives.

Every command lives in its domain's `commands.py` as `add_<stem>_arguments(parser)` + `run_<stem>(args) -> int`. Only the chosen command's
module is imported, so `hfpc --help` and light commands stay fast (no torch import unless needed).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.machinery
import logging
import sys
import types
from collections.abc import Callable
from typing import Any

from hfpc_reward import __version__
from hfpc_reward.config import print_config_if_asked
from hfpc_reward.errors import UsageError

# command name -> (module implementing it, function name stem, one-line help); the module defines
# add_<stem>_arguments(parser) and run_<stem>(args) -> exit code
COMMANDS: dict[str, tuple[str, str, str]] = {
    "sample-data": (
        "hfpc_reward.sample.commands",
        "sample_data",
        "generate sample product pairs with known ground truth",
    ),
    "world": (
        "hfpc_reward.sample.commands",
        "world",
        "mini product-photo world: oracle, products, generator training, simulated labels",
    ),
    "tiny-models": (
        "hfpc_reward.testing.commands",
        "tiny_models",
        "write tiny random offline checkpoints and configs",
    ),
    "check": ("hfpc_reward.consistency.commands", "check", "check product consistency of generated images"),
    "calibrate-consistency": (
        "hfpc_reward.consistency.commands",
        "calibrate_consistency",
        "fit consistency thresholds on a manifest",
    ),
    "finetune-segmenter": (
        "hfpc_reward.consistency.commands",
        "finetune_segmenter",
        "fine-tune a segmenter on product masks",
    ),
    "data": (
        "hfpc_reward.data.commands",
        "data",
        "manifest statistics, fetching, splits and category clusters",
    ),
    "train-reward": (
        "hfpc_reward.reward.commands",
        "train_reward",
        "train the image-referenced reward model",
    ),
    "eval-reward": (
        "hfpc_reward.reward.commands",
        "eval_reward",
        "evaluate a reward model on a labelled manifest",
    ),
    "calibrate-reward": (
        "hfpc_reward.reward.commands",
        "calibrate_reward",
        "pick the reward model's pass threshold",
    ),
    "score": ("hfpc_reward.commands", "score", "score a manifest with both HFPC judges"),
    "feedback": (
        "hfpc_reward.feedback.commands",
        "feedback",
        "human feedback: select, Label Studio, agreement",
    ),
}
# commands that parse their own arguments: name -> (module with main(argv) -> int, one-line help)
OWN_PARSER_COMMANDS: dict[str, tuple[str, str]] = {
    "finetune": (
        "hfpc_finetune.__main__",
        "DDPO-LoRA fine-tuning of an inpainting pipeline (hfpc finetune --help)",
    ),
    "eval": ("hfpc_eval.__main__", "pass rates of generator versions: run, compare, judges, screenshot"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbosity = _pop_verbosity(argv)  # -v / -q may stand anywhere on the line
    everything = {name: help_text for name, (*_, help_text) in COMMANDS.items()}
    everything.update({name: help_text for name, (_, help_text) in OWN_PARSER_COMMANDS.items()})
    top = argparse.ArgumentParser(
        prog="hfpc",
        description="HFPC reward toolkit. Commands:\n"
        + "\n".join(f"  {name:22s} {help_text}" for name, help_text in everything.items()),
        epilog="-v (debug logging, library chatter included) and -q (warnings only) may stand anywhere.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"hfpc-reward {__version__}")
    top.add_argument("command", choices=everything, metavar="COMMAND", help="see the list above")
    top.add_argument("args", nargs=argparse.REMAINDER, help="the command's arguments (hfpc COMMAND --help)")
    if not argv:
        top.print_help()
        return 2
    parsed = top.parse_args(argv)
    configure_logging(verbosity)
    if parsed.command in OWN_PARSER_COMMANDS:
        module = importlib.import_module(OWN_PARSER_COMMANDS[parsed.command][0])
        return module.main(parsed.args)
    module_name, stem, help_text = COMMANDS[parsed.command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"hfpc {parsed.command}", description=help_text)
    getattr(module, f"add_{stem}_arguments")(parser)
    if "--print-config" in parsed.args:  # printing the config needs none of the command's other inputs
        for action in parser._actions:
            action.required = False
    try:  # options may follow positional overrides (hfpc check A B --mask M thresholds.x=1)
        args = parser.parse_intermixed_args(parsed.args)
    except TypeError:  # a command with its own subcommands (hfpc data ...) cannot intermix
        args = parser.parse_args(parsed.args)
    return run_reporting_user_errors(_print_config_or_run, getattr(module, f"run_{stem}"), args)


def _print_config_or_run(run: Callable[..., int | None], args: argparse.Namespace) -> int | None:
    """`--print-config` (commands built with config.add_config_arguments) prints and exits; else run."""
    return 0 if print_config_if_asked(args) else run(args)


def _pop_verbosity(argv: list[str]) -> int:
    """Remove -v/--verbose and -q/--quiet from argv (before a `--`); +1 per -v, -1 per -q."""
    level = 0
    end = argv.index("--") if "--" in argv else len(argv)
    for index in reversed(range(end)):
        if argv[index] in ("-v", "--verbose", "-q", "--quiet"):
            level += 1 if argv.pop(index) in ("-v", "--verbose") else -1
    return level


# libraries whose INFO lines (accelerate's "Saving current state", transformers' fallbacks) are chatter
# for our users: shown only with -v
CHATTY_LIBRARIES = ("accelerate", "transformers", "diffusers", "peft", "urllib3", "matplotlib", "PIL")


class _TorchvisionFallbackFilter(logging.Filter):
    """Drops transformers' "X requires torchvision (not installed); falling back to XPil" notes: we never install
    torchvision (it breaks CPU torch here), so the Pil processors are the intended ones. diffusers' pipeline
    modules import CLIPImageProcessor / SiglipImageProcessor at import time, which logs the note in every
    process that imports them; shown with -v."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


TORCHVISION_FALLBACK_FILTER = _TorchvisionFallbackFilter()


# the logging modules of the libraries whose loading bars ("Loading pipeline components...", "Loading weights")
# are chatter beside a command's own bar: shown only with -v
LOADING_BAR_MODULES = ("diffusers.utils.logging", "transformers.utils.logging")


class _LoadingBarsHook(importlib.abc.MetaPathFinder):
    """Sets the loading bars of a LOADING_BAR_MODULES module the moment it is imported (if ever), so that
    light commands never import diffusers or transformers for it."""

    def __init__(self) -> None:
        self.shown = True  # the libraries' own default

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name not in LOADING_BAR_MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None:
            return None  # left to the other finders, unchanged
        run_module = spec.loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            run_module(module)
            _set_loading_bars(module, self.shown)

        spec.loader.exec_module = exec_module  # this module's own loader instance only
        return spec


LOADING_BARS_HOOK = _LoadingBarsHook()


def show_loading_bars(shown: bool) -> None:
    """Turn diffusers' and transformers' loading bars on or off without importing either: set now in a library
    already imported, at import in one imported later. The hub's download bars stay as they are."""
    LOADING_BARS_HOOK.shown = shown
    if LOADING_BARS_HOOK not in sys.meta_path:
        sys.meta_path.insert(0, LOADING_BARS_HOOK)
    for name in LOADING_BAR_MODULES:
        if name in sys.modules:
            _set_loading_bars(sys.modules[name], shown)


def _set_loading_bars(library_logging: types.ModuleType, shown: bool) -> None:
    if shown:
        library_logging.enable_progress_bar()
        return
    hub = sys.modules.get("huggingface_hub.utils")
    downloads_shown = hub is not None and not hub.are_progress_bars_disabled()
    library_logging.disable_progress_bar()  # transformers' turns the hub's bars off too: not a loading bar
    if downloads_shown:
        hub.enable_progress_bars()


def configure_logging(verbosity: int = 0) -> None:
    """One log format for every command: INFO for hfpc's own loggers, WARNING for libraries, DEBUG with -v;
    the libraries' loading bars only with -v."""
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    show_loading_bars(verbosity > 0)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # no-op when a handler exists (pytest)
    logging.getLogger().setLevel(level)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity > 0 else logging.WARNING)
    fallback_notes = logging.getLogger("transformers.utils.import_utils")
    if verbosity > 0:
        fallback_notes.removeFilter(TORCHVISION_FALLBACK_FILTER)
    else:
        fallback_notes.addFilter(TORCHVISION_FALLBACK_FILTER)


def run_reporting_user_errors(run: Callable[..., int | None], *args: Any) -> int:
    """run(*args) as an exit code; a user's mistake (any UsageError) is logged as one clear line and exits 2."""
    try:
        return int(run(*args) or 0)
    except UsageError as exc:  # the user's input is wrong: say what, without a traceback
        logging.getLogger("hfpc").error("%s", str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
