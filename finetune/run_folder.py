"""The run folder `run.out_dir` under the run contract (`hfpc_reward.runs.RunOutput`), and its metrics log.

The main process locks the folder and stamps the settings in `run.json`; a resume whose settings differ
outside `SAFE_RESUME_KEYS` is refused, naming the keys. Every process applies the same policy to the same
stamp (the others read it before the main process rewrites it), so all ranks refuse or go on together.
`--overwrite` replaces exactly the files a run writes (`RUN_FILES`).
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from hfpc_finetune.config import SAFE_RESUME_KEYS, FinetuneConfig

from hfpc_reward.data.manifest import read_jsonl, write_jsonl
from hfpc_reward.data.results import input_hashes
from hfpc_reward.runs import RunOutput

RUN_FILES = (
    "metrics.jsonl",
    "lora",
    "state",
    "grids",
    "logs",
)  # what a run writes; --overwrite replaces them
METRICS_FILE = "metrics.jsonl"  # one JSON record per finished epoch


def own_run_folder(
    config: FinetuneConfig,
    settings: dict,
    accelerator,
    closing: contextlib.ExitStack,
    resume: bool,
    overwrite: bool,
) -> RunOutput:
    """Enter the run contract on `run.out_dir` (released when `closing` closes)."""
    out = Path(config.run.out_dir)
    run = RunOutput(
        out,
        settings,
        resume=resume,
        overwrite=overwrite,
        safe_keys=SAFE_RESUME_KEYS,
        inputs=[config.data.manifest, *local_folders(config.model.pretrained)],
        is_main_process=accelerator.is_main_process,
        name="finetune",
        folder=True,
    )
    if not accelerator.is_main_process:
        closing.enter_context(run)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        closing.enter_context(run)
        if overwrite and not run.resuming:
            for name in RUN_FILES:
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    return run


def run_input_hashes(config: FinetuneConfig) -> dict[str, str]:
    """sha256 of the files the settings name: the manifest and every reward keyword that is a file (a scorer
    YAML). Stamped with the settings, so a resume refuses them edited in place (their paths stay the same)."""
    files = {"data.manifest": config.data.manifest}
    for index, term in enumerate(config.reward.terms()):
        files |= {
            f"reward.{index}.{key}": value for key, value in term.kwargs.items() if isinstance(value, str)
        }
    return input_hashes(files)


def local_folders(pretrained: str) -> list[str]:
    """The pipeline as an input of the run when it is a local folder (a hub id is not a path)."""
    return [pretrained] if Path(pretrained).exists() else []


def keep_epochs_before(metrics_path: Path, epoch: int) -> None:
    """Rewrite the metrics log with only the epochs before `epoch` (the ones the saved state holds), so a
    resume never duplicates a record and a line torn by an interruption is dropped."""
    write_jsonl(metrics_path, [r for r in read_jsonl(metrics_path) if r.get("epoch", 0) < epoch])
