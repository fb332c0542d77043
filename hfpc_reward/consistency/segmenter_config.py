"""Settings of `hfpc finetune-segmenter`: data, training, the whole run, and the keys a resume may change."""

from __future__ import annotations

from dataclasses import dataclass, field

from hfpc_reward.consistency.segmenter_models import SegmenterModelConfig

SEGMENTER_SAFE_KEYS = (
    "out_dir",
    "train.cpu",
    "train.cache_embeddings",
)  # --resume may change: place, device, speed


@dataclass
class SegmenterDataConfig:
    train_manifest: str = ""  # JSONL: origin (image) + mask, optional box [x0, y0, x1, y1] in image pixels
    val_manifest: str = ""  # held-out rows; "" = hold out val_fraction of the training images (by original)
    val_fraction: float = 0.2  # share of originals held out when val_manifest is ""
    box_jitter: float = 0.1  # training boxes: each side moves by up to this fraction of the box width/height
    seed: int = 0  # seed of the train/val split, the initial validation and the box jitter

    def __post_init__(self):
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 <= self.box_jitter < 0.5:
            raise ValueError(f"data.box_jitter must be in [0, 0.5), got {self.box_jitter}")


@dataclass
class SegmenterTrainConfig:
    epochs: int = 10  # passes over the training images
    batch_size: int = 8  # images (one box each) per optimizer step
    learning_rate: float = 1e-4  # AdamW learning rate, cosine-decayed to 0 over the run
    weight_decay: float = 1e-4  # AdamW weight decay
    focal_weight: float = 20.0  # weight of the focal loss (SAM uses 20:1 focal:dice)
    dice_weight: float = 1.0  # weight of the dice loss
    iou_weight: float = 1.0  # weight of the MSE between predicted and actual mask IoU
    focal_alpha: float = 0.25  # focal loss weight of product pixels (background gets 1 - alpha)
    focal_gamma: float = 2.0  # focal loss focusing exponent
    mixed_precision: str = "no"  # accelerate mixed precision: "no", "fp16" (GPU) or "bf16"
    cpu: bool = False  # train on CPU even when an accelerator is available
    cache_embeddings: bool = (
        True  # frozen encoder: encode each image once (memory: 4 MB per image at 1024 px)
    )
    boundary_tolerance: float = 0.01  # boundary F tolerance, as a fraction of the product box diagonal

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("train.epochs and train.batch_size must be >= 1 and train.learning_rate > 0")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(
                f"train.mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}"
            )


@dataclass
class SegmenterFinetuneConfig:
    model: SegmenterModelConfig = field(default_factory=SegmenterModelConfig)  # what to fine-tune
    data: SegmenterDataConfig = field(default_factory=SegmenterDataConfig)  # product images and masks
    train: SegmenterTrainConfig = field(default_factory=SegmenterTrainConfig)  # optimisation and loss
    out_dir: str = "runs/segmenter"  # where checkpoints, metrics, summary.json and the run.json stamp go
