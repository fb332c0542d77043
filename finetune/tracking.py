"""What a fine-tune shows while it runs and leaves behind: trackers, sample grids, the progress bar, the model card.

- Trackers go through accelerate (`run.report_to`: tensorboard, offline under `run.out_dir/logs`; wandb;
  trackio; none). The default, tensorboard, falls back to none with one info line when it is not installed;
  a tracker asked for by name that is not installed is a usage error before any model loads.
- Every `run.grid_every` epochs a grid of samples (originals on top, the rewarded images below, each
  captioned with its reward and the reward's primary reason) is saved under `grids/` and sent to the tracker.
- One progress bar per run (sampling batches and PPO minibatches, with an ETA), on the main process only,
  off when stderr is not a terminal; log lines are routed around it so it never breaks.
- `lora/README.md`: a model card (base model, reward, settings hash, metrics) next to the LoRA weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from huggingface_hub import ModelCard, ModelCardData
from PIL import Image, ImageDraw

from hfpc_reward.errors import UsageError
from hfpc_reward.runs import flatten_settings

logger = logging.getLogger(__name__)

GRID_CELL_MIN = 128  # px: small samples are enlarged (nearest) so their captions fit
CAPTION_HEIGHT = 26  # px of caption below each sample: reward, then the primary reason
CAPTION_CHARS = 22  # a reason longer than this is shortened in the caption
TRACKER_PROJECT = "hfpc-finetune"  # the project / run-folder name the trackers log under


class TrackerError(UsageError):
    """The tracker asked for in run.report_to cannot be used here."""


def resolve_tracker(report_to: str) -> str | None:
    """The accelerate tracker name to use, or None (no tracker)."""
    from accelerate.utils import is_tensorboard_available, is_trackio_available, is_wandb_available

    if report_to == "none":
        return None
    available = {
        "tensorboard": is_tensorboard_available,
        "wandb": is_wandb_available,
        "trackio": is_trackio_available,
    }[report_to]()
    if available:
        return report_to
    if report_to == "tensorboard":
        logger.info(
            "tensorboard is not installed: no tracker (pip install tensorboard, or set run.report_to=none)"
        )
        return None
    raise TrackerError(f"run.report_to={report_to} but {report_to} is not installed: pip install {report_to}")


def tracker_config(flat_settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as tracker hyperparameters (scalars only: lists and dicts become their text)."""
    return {
        key: value if isinstance(value, (bool, int, float, str)) or value is None else str(value)
        for key, value in flat_settings.items()
    }


def progress_bar(total: int, is_main_process: bool):
    """The run's one progress bar (with ETA): main process only, off when stderr is not a terminal."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc="finetune",
        unit="batch",
        leave=False,
        dynamic_ncols=True,
        disable=None if is_main_process else True,  # None: off when not a terminal
    )


def save_grid(path: Path, previews: list, accelerator, epoch: int) -> None:
    """Write the captioned sample grid (see `sample_grid`) and send it to every tracker that takes images."""
    grid = sample_grid(previews)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    for tracker in accelerator.trackers:  # tensorboard wants NHWC arrays, wandb PIL images
        if tracker.name == "tensorboard":
            tracker.log_images({"samples": np.asarray(grid)[None]}, step=epoch, dataformats="NHWC")
        elif hasattr(tracker, "log_images"):
            tracker.log_images({"samples": [grid]}, step=epoch)


def sample_grid(previews: list[tuple[Image.Image, Image.Image, float | None, str | None]]) -> Image.Image:
    """Originals on the top row, the rewarded samples below, each sample captioned (reward, primary reason)."""
    width, height = previews[0][0].size
    scale = max(1, -(-GRID_CELL_MIN // width))
    cell_w, cell_h = width * scale, height * scale
    grid = Image.new("RGB", (cell_w * len(previews), 2 * cell_h + CAPTION_HEIGHT), "white")
    draw = ImageDraw.Draw(grid)
    for column, (original, sample, reward, reason) in enumerate(previews):
        x = column * cell_w
        grid.paste(original.resize((cell_w, cell_h), Image.NEAREST), (x, 0))
        grid.paste(sample.resize((cell_w, cell_h), Image.NEAREST), (x, cell_h))
        reward_text = "abstained" if reward is None else f"reward {reward:.3f}"
        reason = reason or ""
        if len(reason) > CAPTION_CHARS:
            reason = reason[: CAPTION_CHARS - 1] + "…"
        draw.text((x + 2, 2 * cell_h + 1), reward_text, fill="black")
        draw.text((x + 2, 2 * cell_h + CAPTION_HEIGHT // 2), reason, fill="dimgray")
    return grid


def primary_reasons(extras: dict[str, list] | None, count: int) -> list[str | None]:
    """Each sample's primary failure reason from a reward's log_extra columns (None where it gave none)."""
    extras = extras or {}
    for column, values in extras.items():
        if column.endswith("primary_reason"):
            return [None if v is None else str(v) for v in values][:count]
    for column, values in extras.items():
        if column.endswith("reasons"):
            return [(_first_reason(v) or None) for v in values][:count]
    return [None] * count


def _first_reason(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return str(value[0]) if value else ""
    return str(value or "").split(";")[0].strip()


def model_card(
    base_model: str, reward: str, settings_hash: str, settings: dict[str, Any], records: list[dict]
) -> ModelCard:
    """The LoRA's README.md: what it was trained from and against (settings), and how it did (epoch records)."""
    metrics = {
        "epochs": len(records),
        "first_reward_mean": records[0]["reward_mean"],
        "last_reward_mean": records[-1]["reward_mean"],
        "reward_gain": records[-1]["reward_mean"] - records[0]["reward_mean"],
        "product_drift": records[-1]["product_drift"],
    }
    data = ModelCardData(
        base_model=base_model if not Path(base_model).exists() else None,
        library_name="diffusers",
        tags=["stable-diffusion", "inpainting", "lora", "ddpo", "hfpc-reward"],
    )
    metric_lines = "\n".join(f"| {key} | {_shown(value)} |" for key, value in metrics.items())
    setting_lines = "\n".join(
        f"| `{key}` | {_shown(value)} |" for key, value in flatten_settings(settings).items()
    )
    body = f"""
# DDPO-LoRA of `{base_model}`

Fine-tuned with DDPO (PPO-clip on each DDIM step's likelihood ratio) by `hfpc finetune`, rewarded by
**{reward}**. Settings hash `{settings_hash}` (the run's `run.json` stamp holds the same settings).

```python
from diffusers import StableDiffusionInpaintPipeline

pipe = StableDiffusionInpaintPipeline.from_pretrained("{base_model}")
pipe.load_lora_weights("THIS_FOLDER")
```

## Metrics

| metric | value |
| --- | --- |
{metric_lines}

## Settings

| setting | value |
| --- | --- |
{setting_lines}
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def push_lora(lora_dir: Path, repo_id: str) -> str:
    """Upload the LoRA folder (weights + model card) to the hub repository `repo_id`; returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(lora_dir), commit_message="hfpc finetune LoRA")
    logger.info("pushed %s to %s", lora_dir, repo_id)
    return str(getattr(info, "commit_url", repo_id))
