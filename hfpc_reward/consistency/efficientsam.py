"""EfficientSAM as a box-prompted `Segmenter`: loading (our folders, official .pt files, hub files) and use.

Official weights (Apache-2.0): `efficient_sam_vitt.pt` / `efficient_sam_vits.pt` from
github.com/yformer/EfficientSAM (folder `weights/`) or the hub repo `yunyangx/EfficientSAM`; pass the
file path, or `yunyangx/EfficientSAM/efficient_sam_vitt.pt` to download it through huggingface_hub.
Our own checkpoints (`save_pretrained`) are a folder with `config.json` + `model.safetensors`.

Box prompts follow the model's convention: two corner points, (x0, y0) with label 2 and (x1, y1) with
label 3, rescaled from image pixels to the model's square input. Of the 3 masks predicted per box, the
one with the highest predicted IoU is used unless `mask_choice` says otherwise.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hfpc_reward.config import config_from_dict
from hfpc_reward.consistency.efficientsam_model import (
    LABEL_BOX_BOTTOM_RIGHT,
    LABEL_BOX_TOP_LEFT,
    EfficientSam,
    EfficientSamConfig,
)
from hfpc_reward.errors import UsageError
from hfpc_reward.images import pil_to_tensor

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "efficientsam"
MASK_CHOICES = ("best-iou", "single", "0", "1", "2")


class CheckpointError(UsageError):
    """A checkpoint does not fit the EfficientSAM architecture; the message names the keys."""


def config_from_state_dict(state_dict: dict[str, torch.Tensor]) -> EfficientSamConfig:
    """Infer the architecture from parameter shapes (ViT-Ti vs ViT-S and everything else shapes decide).

    Head counts cannot be read from shapes: the encoder uses one head per 64 channels (true of the
    official Ti and S models), the decoder keeps the default 8.
    """
    key = "image_encoder.patch_embed.proj.weight"
    if key not in state_dict:
        raise CheckpointError(
            f"not an EfficientSAM state dict: {key!r} is missing (first keys: {list(state_dict)[:3]})"
        )
    encoder_dim, _, patch_size, _ = state_dict[key].shape

    def count(prefix: str) -> int:
        return len({name[len(prefix) :].split(".")[0] for name in state_dict if name.startswith(prefix)})

    pretrain_grid = round((state_dict["image_encoder.pos_embed"].shape[1] - 1) ** 0.5)
    upscaling = count("mask_decoder.final_output_upscaling_layers.")
    num_mask_tokens = state_dict["mask_decoder.mask_tokens.weight"].shape[0]
    return EfficientSamConfig(
        patch_size=patch_size,
        encoder_dim=encoder_dim,
        encoder_depth=count("image_encoder.blocks."),
        encoder_heads=max(1, encoder_dim // 64),
        encoder_mlp_ratio=state_dict["image_encoder.blocks.0.mlp.fc1.weight"].shape[0] / encoder_dim,
        pretrain_image_size=pretrain_grid * patch_size,
        neck_dim=state_dict["image_encoder.neck.0.weight"].shape[0],
        decoder_depth=count("mask_decoder.transformer.layers."),
        decoder_mlp_dim=state_dict["mask_decoder.transformer.layers.0.mlp.fc.weight"].shape[1],
        upscaling_dims=[
            state_dict[f"mask_decoder.final_output_upscaling_layers.{i}.0.weight"].shape[1]
            for i in range(upscaling)
        ],
        num_multimask_outputs=num_mask_tokens - 1 if num_mask_tokens > 1 else 1,
        iou_head_depth=count("mask_decoder.iou_prediction_head.layers.") + 1,
        iou_head_hidden_dim=state_dict["mask_decoder.iou_prediction_head.fc.weight"].shape[1],
    )


def load_state_dict_strict(model: EfficientSam, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load every key exactly; on mismatch raise naming the missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = [name for name in expected if name not in state_dict]
    unexpected = [name for name in state_dict if name not in expected]
    misshaped = [
        f"{name} {tuple(state_dict[name].shape)} vs {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in state_dict and state_dict[name].shape != tensor.shape
    ]
    if missing or unexpected or misshaped:
        raise CheckpointError(
            f"{source} does not match EfficientSAM (encoder_dim={model.config.encoder_dim}, "
            f"depth={model.config.encoder_depth}): missing keys {missing[:10]}, unexpected keys {unexpected[:10]}, "
            f"shape mismatches (checkpoint vs model) {misshaped[:10]}"
        )
    model.load_state_dict(state_dict, strict=True)


def load_efficientsam(
    source: str | Path, device: str | torch.device = "cpu", dtype=torch.float32
) -> EfficientSam:
    """An EfficientSam in eval mode from a save_pretrained folder, a .pt/.safetensors file or a hub file."""
    path = Path(os.path.expanduser(str(source)))
    if path.is_dir():
        model = _load_folder(path)
    elif path.is_file():
        model = _load_file(path)
    elif _looks_like_hub_file(str(source)):
        from huggingface_hub import hf_hub_download

        owner, name, filename = str(source).split("/", 2)
        model = _load_file(Path(hf_hub_download(repo_id=f"{owner}/{name}", filename=filename)))
    else:
        raise FileNotFoundError(
            f"no EfficientSAM checkpoint at {source!r}: pass a folder written by save_pretrained, an official "
            "efficient_sam_vitt.pt / efficient_sam_vits.pt file, or a hub file like "
            "'yunyangx/EfficientSAM/efficient_sam_vitt.pt'"
        )
    return model.to(device=device, dtype=dtype).eval()


def save_efficientsam(model: EfficientSam, out_dir: str | Path) -> Path:
    """Write `config.json` + `model.safetensors`; each file lands atomically (temp file + os.replace)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    temporary = out / (WEIGHTS_NAME + ".tmp")
    save_file(weights, str(temporary), metadata={"format": "pt"})
    os.replace(temporary, out / WEIGHTS_NAME)
    temporary = out / (CONFIG_NAME + ".tmp")
    temporary.write_text(json.dumps({"model_type": MODEL_TYPE, **asdict(model.config)}, indent=2))
    os.replace(temporary, out / CONFIG_NAME)
    return out


def _load_folder(path: Path) -> EfficientSam:
    from safetensors.torch import load_file

    config_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"{path} is not an EfficientSAM folder: it needs {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    values = json.loads(config_path.read_text())
    if values.pop("model_type", MODEL_TYPE) != MODEL_TYPE:
        raise CheckpointError(f"{config_path} describes a different model type, not {MODEL_TYPE!r}")
    model = EfficientSam(config_from_dict(EfficientSamConfig, values))
    load_state_dict_strict(model, load_file(str(weights_path)), str(weights_path))
    return model


def _load_file(path: Path) -> EfficientSam:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state_dict = load_file(str(path))
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        # the official files hold {"model": state_dict}; accept a bare state dict as well
        if isinstance(state_dict, dict) and isinstance(state_dict.get("model"), dict):
            state_dict = state_dict["model"]
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(state_dict).__name__})")
    model = EfficientSam(config_from_state_dict(state_dict))
    load_state_dict_strict(model, state_dict, str(path))
    logger.info("loaded EfficientSAM (encoder_dim=%d) from %s", model.config.encoder_dim, path)
    return model


def _looks_like_hub_file(source: str) -> bool:
    parts = source.split("/")
    return (
        len(parts) >= 3
        and not source.startswith((".", "/", "~"))
        and source.endswith((".pt", ".pth", ".safetensors"))
    )


@dataclass
class ImageEmbedding:
    """The image side of EfficientSAM for one image, reusable for any number of box prompts."""

    features: torch.Tensor  # (1, C, h, w) on the model's device and dtype
    size: tuple[int, int]  # (width, height) of the image it was computed from


class EfficientSamSegmenter:
    """`Segmenter` backed by EfficientSAM: images + xyxy pixel boxes -> (N, H, W) bool masks per image.

    `embed(images)` runs the image encoder once per image; `segment_embedded(embedded, boxes)` prompts
    those embeddings with any number of boxes, so an original is encoded once for all its generations.
    """

    def __init__(
        self,
        model: EfficientSam,
        mask_choice: str = "best-iou",
        mask_threshold: float = 0.0,
        batch_size: int = 8,
    ):
        if str(mask_choice) not in MASK_CHOICES:
            raise ValueError(f"mask_choice must be one of {MASK_CHOICES}, got {mask_choice!r}")
        self.model = model.eval()
        self.mask_choice = str(mask_choice)  # "best-iou", "single" (the single-mask token) or a mask index
        self.mask_threshold = mask_threshold  # logit above which a pixel is product
        self.batch_size = batch_size  # images per image-encoder call

    @classmethod
    def from_pretrained(
        cls, path_or_hub_file: str | Path, device: str | torch.device = "cpu", dtype=torch.float32, **kwargs
    ) -> EfficientSamSegmenter:
        """Load from a save_pretrained folder, an official .pt file, or a hub file `owner/repo/file.pt`."""
        return cls(load_efficientsam(path_or_hub_file, device=device, dtype=dtype), **kwargs)

    def save_pretrained(self, out_dir: str | Path) -> Path:
        return save_efficientsam(self.model, out_dir)

    @property
    def device(self) -> torch.device:
        return self.model.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.pixel_mean.dtype

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image]) -> list[ImageEmbedding]:
        """Encode each image once (batched); prompt the results with `segment_embedded`."""
        embedded: list[ImageEmbedding] = []
        for start in range(0, len(images), self.batch_size):
            chunk = list(images[start : start + self.batch_size])
            pixels = torch.cat(
                [
                    self.model.preprocess(pil_to_tensor([image.convert("RGB")]).to(self.device, self.dtype))
                    for image in chunk
                ]
            )
            features = self.model.image_encoder(pixels)
            embedded.extend(ImageEmbedding(features[i : i + 1], image.size) for i, image in enumerate(chunk))
        return embedded

    @torch.no_grad()
    def predict_boxes(
        self, embedding: ImageEmbedding, boxes: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution mask logits (N, M, s, s) and predicted IoUs (N, M) for boxes (N, 4) xyxy pixels."""
        width, height = embedding.size
        boxes = np.clip(
            _check_boxes(boxes), 0, [width, height, width, height]
        )  # negative = padding to the model
        corners = torch.as_tensor(boxes, dtype=torch.float32, device=self.device).reshape(1, -1, 2, 2)
        labels = torch.tensor([LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT], device=self.device).expand(
            1, len(boxes), 2
        )
        points = self.model.to_model_coords(corners, height, width)
        logits, iou = self.model.decode(
            embedding.features, points, labels, multimask=self.mask_choice != "single"
        )
        return logits[0].float(), iou[0].float()

    def masks_from_logits(self, logits: torch.Tensor, iou: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """Choose one of the M masks per box (by `mask_choice`) and threshold it at `size` (W, H) -> (N, H, W)."""
        if self.mask_choice == "best-iou":
            chosen = iou.argmax(dim=1)
        else:
            chosen = torch.full((len(logits),), 0 if self.mask_choice == "single" else int(self.mask_choice))
        best = logits[torch.arange(len(logits)), chosen.to(logits.device)]  # (N, s, s)
        width, height = size
        upsampled = F.interpolate(best[:, None], (height, width), mode="bicubic", align_corners=False)[:, 0]
        return (upsampled > self.mask_threshold).cpu().numpy()

    def segment_embedded(
        self, embedded: Sequence[ImageEmbedding], boxes: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """`segment` for images already encoded by `embed`."""
        if len(embedded) != len(boxes):
            raise ValueError(
                f"got {len(embedded)} images but {len(boxes)} box arrays; pass one (N, 4) array per image"
            )
        masks = []
        for embedding, image_boxes in zip(embedded, boxes):
            width, height = embedding.size
            if len(image_boxes) == 0:
                masks.append(np.zeros((0, height, width), dtype=bool))
                continue
            logits, iou = self.predict_boxes(embedding, image_boxes)
            masks.append(self.masks_from_logits(logits, iou, embedding.size))
        return masks

    def segment(self, images: Sequence[Image.Image], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """For image i and its boxes (N_i, 4) xyxy pixels, masks (N_i, H, W) bool at the image's size."""
        if len(images) != len(boxes):
            raise ValueError(
                f"got {len(images)} images but {len(boxes)} box arrays; pass one (N, 4) array per image"
            )
        return self.segment_embedded(self.embed(images), boxes)


def _check_boxes(boxes) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be an (N, 4) array of x0, y0, x1, y1 pixels, got shape {boxes.shape}")
    if not np.isfinite(boxes).all() or (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise ValueError(f"boxes must be finite with x1 >= x0 and y1 >= y0, got {boxes.tolist()}")
    return boxes
