"""Settings of `hfpc train-reward`: data, optimisation and the model to start from (YAML under configs/reward/)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hfpc_reward.reward.model import RewardModelConfig

LR_SCHEDULERS = ("cosine", "linear", "constant_with_warmup")  # transformers.get_scheduler names we test


@dataclass
class RewardDataConfig:
    """Where the labelled rows come from and how the held-out originals are chosen."""

    train_manifest: str = ""  # labelled manifest (ours or HFPC-44k); pairs are formed within each original
    valid_manifest: str | None = (
        None  # held-out manifest; null = split `valid_fraction` of train originals off
    )
    valid_fraction: float = 0.1  # share of originals held out when valid_manifest is null
    split_seed: int = 0  # seed of that split (by original, never by row)
    cluster_assignment: str | None = None  # `hfpc data clusters` JSON: draw pairs balanced over clusters
    max_stats_rows: int = 5000  # training rows scored (seeded sample) for the score mean/std at the end

    def __post_init__(self):
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"data.valid_fraction must be in (0, 1), got {self.valid_fraction}")
        if self.max_stats_rows < 2:
            raise ValueError(f"data.max_stats_rows must be >= 2, got {self.max_stats_rows}")


@dataclass
class RewardTrainingConfig:
    """Optimisation, checkpointing and logging (ImageReward's recipe by default)."""

    out_dir: str = "outputs/reward"  # checkpoints, best model, final model, metrics.jsonl, run.json stamp
    epochs: int = 10  # passes over all training pairs
    schedule_epochs: int | None = None  # epochs the LR schedule spans; null = epochs (fix it to extend runs)
    lr_scheduler: str = "cosine"  # transformers scheduler after warmup: cosine, linear, constant_with_warmup
    batch_size: int = 8  # pairs per process per micro-batch
    gradient_accumulation_steps: int = (
        8  # micro-batches per optimizer step (effective batch 8 x 8 = 64 on 1 GPU)
    )
    learning_rate: float = 1e-5  # AdamW peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_ratio: float = 0.05  # share of the schedule's optimizer steps with linear warmup before the decay
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    freeze_fraction: float = 0.7  # lowest share of BLIP layers (+ embeddings) frozen; 1.0 = head only
    cache_features: bool = (
        True  # with freeze_fraction 1.0: compute fused features once, train the head on them
    )
    pointwise_weight: float = (
        0.0  # weight of the pointwise BCE term (sigmoid(r) vs label) added to the pair loss
    )
    mixed_precision: str = "no"  # accelerate mixed precision: "no", "fp16" or "bf16"
    eval_every_steps: int = 100  # validate every N optimizer steps (and after every epoch)
    save_every_steps: int = (
        100  # write a resumable checkpoint every N optimizer steps (and after every epoch)
    )
    keep_checkpoints: int = 2  # resumable checkpoints kept on disk (oldest deleted first)
    eval_batch_size: int = 32  # rows per batch when scoring for validation, caching and statistics
    num_workers: int = 0  # DataLoader worker processes loading images
    seed: int = 42  # seeds model init, data order and dropout
    log_with: str | None = (
        None  # accelerate tracker, e.g. "tensorboard" (needs that package); null = JSONL only
    )

    def __post_init__(self):
        checks = {
            "epochs": self.epochs >= 1,
            "schedule_epochs": self.schedule_epochs is None or self.schedule_epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "gradient_accumulation_steps": self.gradient_accumulation_steps >= 1,
            "learning_rate": self.learning_rate > 0,
            "eval_every_steps": self.eval_every_steps >= 1,
            "save_every_steps": self.save_every_steps >= 1,
            "keep_checkpoints": self.keep_checkpoints >= 1,
            "eval_batch_size": self.eval_batch_size >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"training.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.freeze_fraction <= 1.0:
            raise ValueError(f"training.freeze_fraction must be in [0, 1], got {self.freeze_fraction}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"training.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.pointwise_weight < 0:
            raise ValueError(f"training.pointwise_weight must be >= 0, got {self.pointwise_weight}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(
                f"training.lr_scheduler must be one of {LR_SCHEDULERS}, got {self.lr_scheduler!r}"
            )
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(
                f"training.mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}"
            )


@dataclass
class TrainRewardConfig:
    """`hfpc train-reward` settings: YAML deltas under configs/reward/ plus dotted overrides."""

    model: str = "Salesforce/blip-itm-base-coco"  # BLIP ITM checkpoint (new head) or reward-model folder
    architecture: RewardModelConfig = field(default_factory=RewardModelConfig)  # used only for a new head
    data: RewardDataConfig = field(default_factory=RewardDataConfig)
    training: RewardTrainingConfig = field(default_factory=RewardTrainingConfig)
