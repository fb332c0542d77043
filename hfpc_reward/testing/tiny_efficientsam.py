"""Tiny random EfficientSAM for the offline kit: 64 px input, width 32, two ViT blocks (~0.1M parameters)."""

from __future__ import annotations

from pathlib import Path

import torch

from hfpc_reward.consistency.efficientsam import save_efficientsam
from hfpc_reward.consistency.efficientsam_model import EfficientSam, EfficientSamConfig

TINY_EFFICIENTSAM = {
    "image_size": 64,
    "patch_size": 8,
    "encoder_dim": 32,
    "encoder_depth": 2,
    "encoder_heads": 2,
    "pretrain_image_size": 64,
    "neck_dim": 32,
    "decoder_depth": 2,
    "decoder_heads": 2,
    "decoder_mlp_dim": 64,
    "upscaling_dims": [16, 8],
    "iou_head_hidden_dim": 32,
}


def tiny_efficientsam(seed: int = 0) -> EfficientSam:
    """A seeded random tiny EfficientSAM in eval mode."""
    torch.manual_seed(seed)
    return EfficientSam(EfficientSamConfig(**TINY_EFFICIENTSAM)).eval()


def write_tiny_efficientsam(out_dir: Path) -> dict:
    """Save the tiny model under out_dir/efficientsam and return the configs that point at it.

    `segmenter_efficientsam`: a `hfpc finetune-segmenter` config delta that fine-tunes it (add
    data.train_manifest). When the tiny GroundingDINO of the grounded_sam kit sits next to this kit
    (written first by `write_tiny_models`), also `consistency_grounded_efficientsam`: a consistency config
    using both.
    """
    out_dir = Path(out_dir)
    checkpoint = save_efficientsam(tiny_efficientsam(), out_dir / "efficientsam").resolve()
    configs: dict[str, dict] = {
        "segmenter_efficientsam": {
            "model": {"kind": "efficientsam", "checkpoint": str(checkpoint), "train_encoder_blocks": 2},
            "train": {"epochs": 10, "batch_size": 8, "learning_rate": 3e-3, "cpu": True},
        }
    }
    detector = out_dir.parent / "grounded_sam" / "grounding_dino"
    if (detector / "config.json").is_file():
        configs["consistency_grounded_efficientsam"] = {
            "backend": "grounded-efficientsam",
            "grounded": {"detector_id": str(detector.resolve()), "efficientsam_checkpoint": str(checkpoint)},
        }
    return configs
