"""The run contract: a run owns its output, stamps its settings next to it, and resumes only what it made.

Every command that writes results (train-reward, finetune, finetune-segmenter, eval run, check, score)
wraps its work in `RunOutput`:

```python
with RunOutput(out, settings, resume=args.resume, overwrite=args.overwrite,
               safe_keys=("training.epochs", "training.batch_size"), inputs=[manifest]) as run:
    if not run.resuming:
        ...  # start the output from scratch
    ...      # write results into `out`
```

On enter, in this order:
1. `out` equal to an input, inside an input folder, or a folder holding an input -> `OutputIsInputError`.
2. An exclusive non-blocking lock (`fcntl.flock` on `.<name>.lock` beside `out`; the OS drops it when the
   process dies, so a crashed run never leaves a stale lock) -> `RunLockedError` when another run holds it.
3. The stamp: a JSON file next to the output, named after it (`results.jsonl` -> `results.run.json`; a
   folder `out/` -> `out/run.json`), so results sharing a folder never overwrite each other's stamp. It
   holds the resolved settings, their `settings_hash`, the hfpc version and times.
4. The policy:
   - `resume=True` and a stamp exists: the settings are compared key by key (dotted keys of the nested
     dict). A difference outside `safe_keys` (dotted prefixes: "training" covers "training.epochs")
     raises `ResumeMismatchError` naming the keys; safe differences (more epochs, batch size, workers,
     devices, ...) are logged and the stamp is updated. `run.resuming` is True.
   - `resume=True` and no output at all: a fresh run (so a preemptible job can always pass --resume).
   - `resume=True`, the output exists but carries no stamp: refused (nothing to compare with).
   - `resume=False` and the output exists (a file, or a non-empty folder): refused with `OutputExistsError`
     unless `overwrite=True`; with overwrite the command starts its output from scratch (`run.resuming`
     is False). RunOutput itself deletes nothing: each command knows which of its files to replace.
Only the main process (`is_main_process`) locks, writes the stamp and refuses a fresh run over an existing
output; every process compares a resume with the stamp, so all ranks agree on refusing a mismatch (the main
process may already have stamped a fresh run, which then compares equal). `hints` add a sentence to the
refusal of a key (e.g. how to make a change safe); `run.update_stamp(**facts)` records facts at the end.

Also here: `refuse_output_over_inputs` (the same check for one-shot writers such as `eval-reward`),
`CheckpointFolder` (atomic, pruned accelerate `save_state` checkpoints with the loop's own state),
`add_run_arguments` (--resume / --overwrite), `replace_directory` and `write_json_atomic` (the one JSON writer
of files a reader or a crash must never see half of).
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Self

from hfpc_reward.errors import UsageError

logger = logging.getLogger(__name__)

STAMP_SUFFIX = ".run.json"  # results.jsonl -> results.run.json
FOLDER_STAMP_NAME = "run.json"  # a folder output stamps itself inside
MAX_SHOWN_VALUE_CHARS = 60  # a changed value longer than this is shortened in messages


class RunLockedError(UsageError):
    """Another run holds this output."""


RESUME_ADVICE = (
    "resume with the original settings, or start a new run with another --out (or drop --resume and pass "
    "--overwrite)"
)


class ResumeMismatchError(UsageError):
    """--resume with settings that change results, or nothing to compare with."""


class OutputIsInputError(UsageError):
    """The output path is (or contains, or lies inside) an input."""


class OutputExistsError(UsageError):
    """A fresh run would write over a previous run's output."""


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A stable short hash of a nested settings dict (sorted JSON; Paths and other objects as str)."""
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flatten_settings(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves (JSON-normalised, so Path == str)."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_settings(value, f"{name}."))
        else:
            flat[name] = json.loads(json.dumps(value, default=str))
    return flat


def changed_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (old, new) for every leaf that differs (a missing leaf reads as None)."""
    old_flat, new_flat = flatten_settings(old), flatten_settings(new)
    return {
        key: (old_flat.get(key), new_flat.get(key))
        for key in sorted(old_flat.keys() | new_flat.keys())
        if old_flat.get(key) != new_flat.get(key)
    }


def is_safe_key(key: str, safe_keys: Iterable[str]) -> bool:
    """True when `key` is one of `safe_keys` or lies under one of them ("train" covers "train.epochs")."""
    return any(key == safe or key.startswith(f"{safe}.") for safe in safe_keys)


def stamp_path(out: Path, folder: bool | None = None) -> Path:
    """Where the stamp of output `out` lives (see the module docstring)."""
    out = Path(out)
    if _is_folder(out, folder):
        return out / FOLDER_STAMP_NAME
    return out.with_name(out.stem + STAMP_SUFFIX)


def refuse_output_over_inputs(out: Path, inputs: Iterable[Path | str | None], name: str) -> None:
    """OutputIsInputError when `out` is an input, lies inside an input folder, or is a folder holding one."""
    resolved = Path(out).resolve()
    for source in (Path(p).resolve() for p in inputs if p not in (None, "")):
        if (
            resolved == source
            or resolved in source.parents
            or (source.is_dir() and source in resolved.parents)
        ):
            raise OutputIsInputError(
                f"{name}: the output {out} is (or contains, or lies inside) the input {source}; "
                "choose an --out outside the inputs"
            )


def _is_folder(out: Path, folder: bool | None) -> bool:
    return folder if folder is not None else (out.is_dir() or not out.suffix)


def check_resume(
    name: str,
    out: Path,
    previous: Mapping[str, Any],
    settings: Mapping[str, Any],
    safe_keys: Iterable[str],
    hints: Mapping[str, str] | None = None,
    advice: str = RESUME_ADVICE,
) -> None:
    """ResumeMismatchError naming every setting outside `safe_keys` that differs from the stamped `previous`
    (with its hint, then `advice`); the safe changes are logged."""
    changes = changed_settings(previous, settings)
    unsafe = {key: change for key, change in changes.items() if not is_safe_key(key, safe_keys)}
    if unsafe:
        shown = ", ".join(f"{key} ({_shown(a)} -> {_shown(b)})" for key, (a, b) in unsafe.items())
        hinted = "".join(f"; {(hints or {})[key]}" for key in unsafe if key in (hints or {}))
        raise ResumeMismatchError(
            f"{name}: cannot --resume {out}: settings that change results differ from the run's stamp: "
            f"{shown}{hinted}; {advice}"
        )
    for key, (old, new) in changes.items():
        logger.info("%s: resuming with %s changed (%s -> %s)", name, key, _shown(old), _shown(new))


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= MAX_SHOWN_VALUE_CHARS else text[: MAX_SHOWN_VALUE_CHARS - 3] + "..."


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class RunOutput:
    """Owns one run's output for the duration of a `with` block (see the module docstring).

    Attributes after enter: `resuming` (a previous run of the same settings is being continued),
    `previous` (the stamp's settings, or None), `stamp` (the stamp file's path).
    """

    def __init__(
        self,
        out: Path,
        settings: Mapping[str, Any],
        *,
        resume: bool,
        overwrite: bool = False,
        safe_keys: Iterable[str] = (),
        inputs: Iterable[Path | str | None] = (),
        is_main_process: bool = True,
        name: str = "run",
        folder: bool | None = None,
        hints: Mapping[str, str] | None = None,
        advice: str = RESUME_ADVICE,
    ):
        self.out = Path(out)
        self.settings = dict(settings)
        self.resume = resume
        self.overwrite = overwrite
        self.safe_keys = tuple(safe_keys)
        self.inputs = [Path(p) for p in inputs if p not in (None, "")]
        self.is_main_process = is_main_process
        self.name = name
        self.folder = _is_folder(self.out, folder)
        self.hints = dict(hints or {})  # dotted key -> what to do instead, added to a mismatch message
        self.advice = advice  # how to go on, ending a mismatch message
        self.stamp = stamp_path(self.out, self.folder)
        self.resuming = False
        self.previous: dict[str, Any] | None = None
        self._lock_file = None

    def __enter__(self) -> Self:
        self._refuse_output_over_input()
        if self.is_main_process:
            self._lock()
        try:
            self._apply_policy()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._unlock()

    def update_stamp(self, **fields: Any) -> None:
        """Record extra facts in the stamp (e.g. finished=True, rows=N); main process only."""
        if self.is_main_process:
            self._write_stamp({**(self._read_stamp() or {}), **fields})

    def _read_stamp(self) -> dict[str, Any] | None:
        return json.loads(self.stamp.read_text(encoding="utf-8")) if self.stamp.exists() else None

    def _refuse_output_over_input(self) -> None:
        refuse_output_over_inputs(self.out, self.inputs, self.name)

    def _lock(self) -> None:
        lock_path = self.out.parent / f".{self.out.name}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(lock_path, "a+")  # noqa: SIM115 (held for the run's lifetime)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise RunLockedError(
                f"{self.name}: another run is writing {self.out} right now; wait for it to finish or "
                "choose another --out"
            ) from None

    def _unlock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def _output_exists(self) -> bool:
        if self.folder:
            return self.out.is_dir() and any(self.out.iterdir())
        return self.out.exists() or self.stamp.exists()

    def _apply_policy(self) -> None:
        stamp = self._read_stamp()
        self.previous = stamp["settings"] if stamp else None
        if self.resume and stamp is not None:
            self._check_resume(stamp["settings"])
            self.resuming = True
        elif self.resume and self._output_exists():
            raise ResumeMismatchError(
                f"{self.name}: {self.out} holds no run stamp ({self.stamp.name}) to resume against; "
                "start a new run with another --out, or drop --resume and pass --overwrite"
            )
        elif not self.resume and not self.overwrite and self.is_main_process and self._output_exists():
            raise OutputExistsError(
                f"{self.name}: {self.out} already holds a previous run's output; pass --resume to continue "
                "it, --overwrite to start over, or choose another --out"
            )
        elif self.resume:
            logger.info("%s: nothing to resume at %s, starting a new run", self.name, self.out)
        if self.is_main_process:
            created = stamp.get("created") if stamp and self.resuming else _now()
            self._write_stamp(
                {
                    "name": self.name,
                    "output": str(self.out),
                    "settings_hash": settings_hash(self.settings),
                    "settings": self.settings,
                    "hfpc_version": _version(),
                    "created": created,
                    "updated": _now(),
                    "resumes": (stamp.get("resumes", 0) + 1) if self.resuming else 0,
                }
            )

    def _check_resume(self, previous: Mapping[str, Any]) -> None:
        check_resume(self.name, self.out, previous, self.settings, self.safe_keys, self.hints, self.advice)

    def _write_stamp(self, data: Mapping[str, Any]) -> None:
        write_json_atomic(self.stamp, data, default=str)


class CheckpointFolder:
    """Resumable checkpoints of an accelerate loop: `root/step-N` folders written atomically by
    `accelerator.save_state` (model, optimizer, scheduler, RNG states) plus the loop's own state as
    `trainer_state.json`; `root/latest` names the newest; the oldest beyond `keep` are deleted."""

    STATE_NAME = "trainer_state.json"

    def __init__(self, root: Path, keep: int):
        self.root, self.keep = Path(root), keep

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text().strip()
        return path if (path / self.STATE_NAME).is_file() else None

    def load(self, accelerator, path: Path) -> dict[str, Any]:
        """Restore accelerate's states from `path` and return the loop state saved with them."""
        accelerator.load_state(str(path))
        return json.loads((path / self.STATE_NAME).read_text())

    def save(self, accelerator, step: int, state: Mapping[str, Any]) -> None:
        """All processes call this (save_state gathers); the main process writes and prunes."""
        staging = self.root / f".step-{step}.tmp"
        if accelerator.is_main_process and staging.exists():
            shutil.rmtree(staging)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        if accelerator.is_main_process:
            (staging / self.STATE_NAME).write_text(json.dumps(dict(state)))
            final = self.root / f"step-{step}"
            replace_directory(staging, final)
            pointer = self.root / "latest.tmp"
            pointer.write_text(final.name)
            os.replace(pointer, self.root / "latest")
            steps = sorted(int(p.name.split("-")[1]) for p in self.root.glob("step-*"))
            for old in steps[: -self.keep]:
                shutil.rmtree(self.root / f"step-{old}")
        accelerator.wait_for_everyone()


def add_run_arguments(parser) -> None:
    """The run flags every command shares: --resume and --overwrite (their meaning: the module docstring)."""
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue this output's run (refused if a result setting changed)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="start over an existing output instead of refusing"
    )


def _version() -> str:
    from hfpc_reward import __version__

    return __version__


def replace_directory(staging: Path, target: Path) -> None:
    """Move a fully written `staging` folder to `target`, replacing any old one (never a half-written target)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old)


def write_json_atomic(
    path: Path, data: Any, *, indent: int | None = 2, default: Callable[[Any], Any] | None = None
) -> Path:
    """Write `data` as JSON (UTF-8, one final newline) to `path`, creating its folder: into `<name>.tmp` beside
    it, then os.replace, so readers never see half a file and a failed write leaves the old one as it was.
    `default` converts what JSON cannot hold (e.g. str for Paths); without it such a value raises TypeError."""
    path = Path(path)
    text = json.dumps(data, indent=indent, default=default) + "\n"  # a TypeError here touches no file
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    try:
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path
