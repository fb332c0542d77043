"""A fine-tuning run of an SD-inpainting pipeline with LoRA: what every algorithm shares.

Before the pipeline loads, the reward is resolved, built and probed on real product photos and the tracker
is checked; once everything loaded, the run takes `run.out_dir` (the run contract of `hfpc_reward.runs`: a
lock, the settings stamp `run.json`, a resume that refuses changed settings outside `SAFE_RESUME_KEYS`), so
a run that cannot start leaves nothing behind. Every epoch appends one record to `metrics.jsonl`, the LoRA
and the resumable state are saved every `run.save_every` epochs. `train.algorithm` picks what an epoch
does: `ddpo` (`ddpo.py`) or `reward_filtered` (`reward_filtered.py`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hfpc_finetune.checkpoint import load_state, save_lora, save_state
from hfpc_finetune.config import FinetuneConfig
from hfpc_finetune.data import ProductPrompt, load_products
from hfpc_finetune.pipeline import load_lora_pipeline
from hfpc_finetune.rewards import (
    RewardBatch,
    RewardError,
    build_reward,
    call_reward,
    probe_reward,
    resolve_reward,
)
from hfpc_finetune.run_folder import METRICS_FILE, keep_epochs_before, own_run_folder, run_input_hashes
from hfpc_finetune.tracking import (
    TRACKER_PROJECT,
    model_card,
    primary_reasons,
    progress_bar,
    push_lora,
    resolve_tracker,
    save_grid,
    tracker_config,
)
from PIL import Image
from tqdm.contrib.logging import logging_redirect_tqdm

from hfpc_reward.config import config_to_dict
from hfpc_reward.data.manifest import append_jsonl, read_jsonl
from hfpc_reward.runs import flatten_settings, settings_hash

logger = logging.getLogger(__name__)

PREVIEW_SAMPLES = 8  # samples shown per grid (the first ones of the main process)


@dataclass
class RunSummary:
    out_dir: str
    epochs: int  # epochs finished in total (including before a resume)
    first_reward: float  # mean reward of the first epoch (before any update)
    last_reward: float  # mean reward of the last epoch
    lora_dir: str  # load with pipe.load_lora_weights(lora_dir)

    @property
    def reward_gain(self) -> float:
        return self.last_reward - self.first_reward


def seed_for(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, epoch, index, ...), stable across processes and runs."""
    return int(
        np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1)
    )


def with_rewards(pairs: list[tuple[Image.Image, Image.Image]], results) -> list[tuple]:
    """(original, image) pairs of consecutive samples with each one's reward and primary failure reason."""
    values = [v for batch, _, _ in results for v in batch.values]
    reasons = [r for batch, _, _ in results for r in primary_reasons(batch.extras, len(batch.values))]
    return [(o, s, v, r) for (o, s), v, r in zip(pairs, values, reasons)]


class Trainer:
    """One fine-tuning run: everything checked and loaded at construction, `fit()` trains to train.epochs.
    An algorithm implements `_run_epoch` (one epoch's record) and the hooks below."""

    def __init__(self, config: FinetuneConfig, resume: bool = False, overwrite: bool = False):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.config = config
        self.out_dir = Path(config.run.out_dir)
        reward_terms = resolve_reward(config.reward)  # imports only: a wrong name fails in milliseconds
        self.tracker = resolve_tracker(config.run.report_to)
        self.accelerator = Accelerator(
            mixed_precision=config.run.mixed_precision,
            cpu=config.run.cpu,
            log_with=self.tracker,
            project_config=ProjectConfiguration(
                project_dir=str(self.out_dir), logging_dir=str(self.out_dir / "logs")
            ),
        )
        self.device = self.accelerator.device
        logger.info(
            "process %d of %d on %s",
            self.accelerator.process_index,
            self.accelerator.num_processes,
            self.device,
        )
        self._check_sizes()
        self.products = load_products(config.data)
        self.reward_fn = build_reward(reward_terms)
        probe_reward(self.reward_fn, self.products)  # a broken reward stops here, before the pipeline
        self.pipe, optimizer = load_lora_pipeline(config, self.device)
        self.optimizer = self.accelerator.prepare(optimizer)
        # the run takes its folder only now: a run that cannot start leaves nothing behind
        self.settings = {**config_to_dict(config), "input_sha256": run_input_hashes(config)}
        self._closing = contextlib.ExitStack()
        self.run = own_run_folder(
            config,
            self.settings,
            self.accelerator,
            self._closing,
            resume or config.run.resume == "latest",
            overwrite,
        )
        self.unet, self.scheduler = self.pipe.unet, self.pipe.scheduler
        self.lora_params = [p for p in self.unet.parameters() if p.requires_grad]
        self.reward_name = " + ".join(f"{t.weight:g} x {t.name}" for t in reward_terms)
        self._setup()

    # ---- what an algorithm provides --------------------------------------------------------------------
    def _check_sizes(self) -> None:
        """Refuse sizes this algorithm cannot run with (ConfigError), before anything loads."""

    def _setup(self) -> None:
        """Build the algorithm's own parts once the pipeline, optimizer and run folder are there."""

    def _units_per_epoch(self) -> int:
        raise NotImplementedError

    def _run_epoch(self, epoch: int, pool: ThreadPoolExecutor, progress) -> dict:
        raise NotImplementedError

    def _describe(self, record: dict) -> str:
        """The algorithm's part of the epoch's log line."""
        return ""

    def _trainer_state(self) -> dict:
        """What a resume needs besides the LoRA and optimizer (JSON)."""
        return {}

    def _load_trainer_state(self, state: dict) -> None:
        """Restore what `_trainer_state` saved."""

    # ---- rewards ---------------------------------------------------------------------------------------
    def _timed_reward(self, batch: list[ProductPrompt], images: list[Image.Image]):
        started = time.perf_counter()
        metrics: dict[str, list[float]] = {}
        result = call_reward(
            self.reward_fn,
            [b.prompt for b in batch],
            images,
            [b.image for b in batch],
            [b.product_mask for b in batch],
            lambda name, value: metrics.setdefault(name, []).append(float(value)),
            category=[b.category for b in batch],
        )
        return result, metrics, time.perf_counter() - started

    def _reward_record(
        self, epoch: int, rewards: np.ndarray, results: list[tuple[RewardBatch, dict, float]]
    ) -> dict:
        """The epoch's reward statistics; stops the run (every process alike: `rewards` is gathered) when
        too many rewards abstained."""
        abstained = int((~np.isfinite(rewards)).sum())
        limit = self.config.reward.max_abstain_fraction
        if abstained > limit * len(rewards) or abstained == len(rewards):
            first_error = next((batch.error for batch, _, _ in results if batch.error), None)
            raise RewardError(
                f"epoch {epoch}: the reward abstained on {abstained} of {len(rewards)} samples (more than "
                f"reward.max_abstain_fraction={limit}); first error: "
                f"{first_error or 'none raised (the reward returned None)'}"
            )
        valid = rewards[np.isfinite(rewards)]
        metrics: dict[str, list[float]] = {}
        for _, batch_metrics, _ in results:
            for name, values in batch_metrics.items():
                metrics.setdefault(name, []).extend(values)
        return {
            "reward_mean": float(valid.mean()),
            "reward_std": float(valid.std()),
            "reward_abstained": abstained,
            **{f"reward/{name}": float(np.mean(values)) for name, values in metrics.items()},
            "time_reward_compute": sum(seconds for _, _, seconds in results),
        }

    def _save_grid(
        self, epoch: int, previews: list[tuple[Image.Image, Image.Image, float | None, str | None]]
    ):
        """Every `run.grid_every` epochs: (original, image, reward, primary reason) previews as a grid."""
        cfg = self.config
        if self.accelerator.is_main_process and cfg.run.grid_every and epoch % cfg.run.grid_every == 0:
            path = self.out_dir / "grids" / f"epoch_{epoch:04d}.png"
            save_grid(path, previews[:PREVIEW_SAMPLES], self.accelerator, epoch)

    # ---- the run --------------------------------------------------------------------------------------
    def fit(self) -> RunSummary:
        """Train to `train.epochs` (continuing a resumed run), then release the output folder."""
        try:
            return self._fit()
        finally:
            self.accelerator.end_training()
            self._closing.close()

    def _fit(self) -> RunSummary:
        cfg, acc = self.config, self.accelerator
        metrics_path = self.out_dir / METRICS_FILE
        start_epoch = self._restore() if self.run.resuming else 0
        if acc.is_main_process:
            keep_epochs_before(metrics_path, start_epoch)
        acc.init_trackers(TRACKER_PROJECT, config=tracker_config(flatten_settings(self.settings)))
        per_epoch = self._units_per_epoch()
        bar = progress_bar((cfg.train.epochs - start_epoch) * per_epoch, acc.is_main_process)
        with logging_redirect_tqdm(), bar, ThreadPoolExecutor(max_workers=cfg.reward.num_workers) as pool:
            for epoch in range(start_epoch, cfg.train.epochs):
                bar.set_postfix_str(f"epoch {epoch + 1}/{cfg.train.epochs}")
                record = self._run_epoch(epoch, pool, bar)
                if acc.is_main_process:
                    append_jsonl(metrics_path, [record])
                acc.log(record, step=epoch)
                logger.info(
                    "epoch %d: reward %.4f +- %.4f, %s",
                    epoch,
                    record["reward_mean"],
                    record["reward_std"],
                    self._describe(record),
                )
                last = epoch + 1 == cfg.train.epochs
                if acc.is_main_process and ((epoch + 1) % cfg.run.save_every == 0 or last):
                    self._save(epoch + 1, read_jsonl(metrics_path))
                acc.wait_for_everyone()
        records = read_jsonl(metrics_path)
        summary = RunSummary(
            str(self.out_dir),
            len(records),
            records[0]["reward_mean"],
            records[-1]["reward_mean"],
            str(self.out_dir / "lora"),
        )
        if acc.is_main_process:
            self.run.update_stamp(finished_epochs=summary.epochs, reward_gain=summary.reward_gain)
            if cfg.run.push_to_hub:
                push_lora(self.out_dir / "lora", cfg.run.hub_model_id)
        return summary

    def _restore(self) -> int:
        state = load_state(self.out_dir / "state", self.unet, self.optimizer)
        if state is None:
            logger.info("resume: no saved state under %s yet, starting at epoch 0", self.out_dir / "state")
            return 0
        self._load_trainer_state(state)
        logger.info("resumed after epoch %d", state["epoch"])
        return state["epoch"]

    def _save(self, finished_epochs: int, records: list[dict]) -> None:
        card = model_card(
            self.config.model.pretrained,
            self.reward_name,
            settings_hash(self.settings),
            self.settings,
            records,
        )
        save_lora(self.unet, self.out_dir / "lora", card)
        save_state(
            self.out_dir / "state",
            finished_epochs,
            self.unet,
            self.optimizer,
            self._trainer_state(),
        )


def train(config: FinetuneConfig, resume: bool = False, overwrite: bool = False) -> RunSummary:
    """Fine-tune per `config` (see configs/finetune/); returns the first/last epoch rewards and the LoRA path."""
    from hfpc_finetune.ddpo import DDPOTrainer
    from hfpc_finetune.reward_filtered import RewardFilteredTrainer

    algorithm = {"ddpo": DDPOTrainer, "reward_filtered": RewardFilteredTrainer}[config.train.algorithm]
    return algorithm(config, resume=resume, overwrite=overwrite).fit()
