"""The segmenters `hfpc finetune-segmenter` trains, behind one small interface: EfficientSAM (ours) and a
transformers SAM, each wrapped to take a square model-frame image and a box and return masks + IoUs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hfpc_reward.config import ConfigError
from hfpc_reward.images import pil_to_tensor

MODEL_KINDS = ("efficientsam", "sam")


@dataclass
class SegmenterModelConfig:
    kind: str = (
        "efficientsam"  # "efficientsam" (ours; official .pt or our folders) or "sam" (transformers SamModel)
    )
    checkpoint: str = (
        "yunyangx/EfficientSAM/efficient_sam_vitt.pt"  # efficientsam: folder/.pt/hub file; sam: hub id/folder
    )
    train_encoder_blocks: int = 0  # also train the image encoder's last N blocks (0 = mask decoder only)

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model.kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if self.train_encoder_blocks < 0:
            raise ValueError("model.train_encoder_blocks must be >= 0 (0 trains the mask decoder only)")


# ---- the two model families ------------------------------------------------


class _PromptedEfficientSam(nn.Module):
    """EfficientSAM for training: image -> square model frame (stretched), box -> 3 masks + IoUs."""

    def __init__(self, checkpoint: str):
        from hfpc_reward.consistency.efficientsam import EfficientSamSegmenter

        super().__init__()
        self.segmenter = EfficientSamSegmenter.from_pretrained(checkpoint)
        self.model = self.segmenter.model
        self.image_size, self.mask_size = self.model.config.image_size, self.model.config.mask_size

    def prepare(self, image) -> tuple[torch.Tensor, tuple[int, int]]:
        """(3, S, S) model input and the (w, h) the image occupies in it (all of it: EfficientSAM stretches)."""
        pixels = self.model.preprocess(pil_to_tensor([image]).to(self.model.pixel_mean.device))[0]
        return pixels, (self.image_size, self.image_size)

    def parts(self) -> tuple[nn.Module, nn.ModuleList, nn.Module]:
        """(image encoder, its blocks, mask decoder): what `load_trainable` freezes and unfreezes."""
        encoder = self.model.image_encoder
        return encoder, encoder.blocks, self.model.mask_decoder

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.image_encoder(pixels)

    def forward(self, inputs: torch.Tensor, boxes: torch.Tensor, embedded: bool):
        """inputs: pixels (B, 3, S, S) or embeddings; boxes (B, 4) in model-frame pixels -> (B, 3, s, s), (B, 3)."""
        features = inputs if embedded else self.embed(inputs)
        labels = torch.tensor([2, 3], device=boxes.device).expand(len(boxes), 1, 2)
        logits, iou = self.model.decode(features, boxes.reshape(-1, 1, 2, 2), labels, multimask=True)
        return logits[:, 0], iou[:, 0]

    def masks(self, logits: torch.Tensor, iou: torch.Tensor, occupied, size: tuple[int, int]) -> np.ndarray:
        """Best mask per box, thresholded at the image size (W, H), exactly as EfficientSamSegmenter does."""
        return self.segmenter.masks_from_logits(logits.float(), iou.float(), size)

    def save(self, out_dir: Path) -> None:
        self.segmenter.save_pretrained(out_dir)


class _PromptedSam(nn.Module):
    """transformers SAM for training: image -> padded square (longest side S), box -> single mask + IoU.

    The single-mask output is trained because that is the one `SamSegmenter` asks SAM for.
    """

    def __init__(self, checkpoint: str):
        from transformers import SamModel, SamProcessor

        super().__init__()
        self.model = SamModel.from_pretrained(checkpoint)
        self.processor = SamProcessor.from_pretrained(checkpoint)
        self.image_size = self.model.config.vision_config.image_size
        grid = self.image_size // self.model.config.vision_config.patch_size
        self.mask_size = grid * 4  # the mask decoder upsamples the embedding grid 4x

    def prepare(self, image) -> tuple[torch.Tensor, tuple[int, int]]:
        inputs = self.processor(images=image, return_tensors="pt")
        height, width = (int(v) for v in inputs["reshaped_input_sizes"][0])
        return inputs["pixel_values"][0], (width, height)

    def parts(self) -> tuple[nn.Module, nn.ModuleList, nn.Module]:
        encoder = self.model.vision_encoder
        return encoder, encoder.layers, self.model.mask_decoder

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_embeddings(pixels)

    def forward(self, inputs: torch.Tensor, boxes: torch.Tensor, embedded: bool):
        features = inputs if embedded else self.embed(inputs)
        outputs = self.model(image_embeddings=features, input_boxes=boxes[:, None], multimask_output=False)
        return outputs.pred_masks[:, 0], outputs.iou_scores[:, 0]

    def masks(self, logits: torch.Tensor, iou: torch.Tensor, occupied, size: tuple[int, int]) -> np.ndarray:
        width, height = size
        upscaled = self.processor.post_process_masks(
            logits.float().cpu()[None], [(height, width)], [(occupied[1], occupied[0])]
        )[0]
        return upscaled[:, 0].numpy().astype(bool)

    def save(self, out_dir: Path) -> None:
        self.model.save_pretrained(out_dir)
        self.processor.save_pretrained(out_dir)


def load_trainable(config: SegmenterModelConfig) -> nn.Module:
    """The wrapped model with only the mask decoder (and the encoder's last N blocks) left trainable."""
    wrapped = (_PromptedEfficientSam if config.kind == "efficientsam" else _PromptedSam)(config.checkpoint)
    encoder, blocks, decoder = wrapped.parts()
    if config.train_encoder_blocks > len(blocks):
        raise ConfigError(
            f"model.train_encoder_blocks={config.train_encoder_blocks} but the encoder has {len(blocks)}"
        )
    wrapped.requires_grad_(False)
    decoder.requires_grad_(True)
    for block in list(blocks)[len(blocks) - config.train_encoder_blocks :]:
        block.requires_grad_(True)
    if config.train_encoder_blocks:  # the neck after the last block must follow the blocks it reads
        neck = getattr(encoder, "neck", None)
        if neck is not None:
            neck.requires_grad_(True)
    return wrapped
