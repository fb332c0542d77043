"""`hfpc finetune-segmenter`: fine-tune EfficientSAM or a transformers SAM on product images with masks.

The paper segments products with a *fine-tuned* EfficientSAM. This trains the mask decoder (by default;
optionally also the image encoder's last `model.train_encoder_blocks` blocks) on a manifest of product
images and masks: rows `{"origin": image, "mask": mask [, "box": [x0, y0, x1, y1]]}` (the box defaults
to the mask's tight box). Each step prompts with the product box moved by up to `data.box_jitter` of its
size, so the model learns to tolerate a detector's loose boxes.

Loss (as SAM's training): focal + dice on the best of the predicted masks (EfficientSAM predicts 3;
SAM is trained on its single-mask output, which `SamSegmenter` uses), plus MSE between predicted and
actual IoU so the best-of-3 choice at inference is learnt too. With a frozen encoder, each image is
encoded once and its embedding reused every epoch (`train.cache_embeddings`).

Outputs in `out_dir`: `run.json` (the run stamp: resolved settings and the manifests' hashes),
`metrics.jsonl` (epoch 0 = before training: held-out mIoU and boundary F; each epoch once across resumes),
`best/` (save_pretrained of the best epoch by held-out mIoU, replaced atomically), `state/` (accelerate
state + trainer_state.json for `--resume`) and `summary.json` (before vs best).

Run contract (`hfpc_reward.runs`): `out_dir` is locked while a run trains; an existing output needs
`--resume` or `--overwrite`; `--resume` refuses any changed setting outside `SEGMENTER_SAFE_KEYS`, naming
it (more `train.epochs` too: the cosine schedule spans them, so steps already taken would change meaning).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hfpc_reward.config import config_to_dict
from hfpc_reward.consistency.geometry import mask_box
from hfpc_reward.consistency.metrics import mask_metrics
from hfpc_reward.consistency.segmenter_config import (
    SEGMENTER_SAFE_KEYS,
    SegmenterDataConfig,
    SegmenterFinetuneConfig,
    SegmenterTrainConfig,
)
from hfpc_reward.consistency.segmenter_models import load_trainable
from hfpc_reward.data.manifest import ManifestError, append_jsonl, read_jsonl, read_manifest, write_jsonl
from hfpc_reward.data.results import input_hashes
from hfpc_reward.data.splits import split_by_original
from hfpc_reward.images import ImageLoadError, load_mask, load_rgb
from hfpc_reward.runs import RunOutput, replace_directory

logger = logging.getLogger(__name__)


# ---- data -------------------------------------------------------------------------------------------------


@dataclass
class _Example:
    origin: str  # image path
    mask: np.ndarray  # (H, W) bool ground-truth product mask
    box: np.ndarray  # (4,) xyxy pixels of the product
    occupied: tuple[int, int]  # (w, h) of the image inside the model frame
    target: torch.Tensor  # (s, s) float in [0, 1]: the mask in the model frame at the decoder's resolution

    @property
    def size(self) -> tuple[int, int]:
        return self.mask.shape[1], self.mask.shape[0]


def _load_examples(rows, wrapped) -> list[_Example]:
    """Rows with a readable image and a non-empty mask; a bad row is logged and skipped, never fatal."""
    examples = []
    for row in tqdm(rows, desc="load products", unit="image", leave=False):
        try:
            if row.mask is None:
                raise ValueError("row has no 'mask'")
            image = load_rgb(row.origin)
            mask = load_mask(row.mask, size=image.size)
            if not mask.any():
                raise ValueError("the product mask is empty")
            box = np.asarray(row.extra["box"], dtype=np.float32) if row.extra.get("box") else mask_box(mask)
            if box.shape != (4,):
                raise ValueError(f"'box' must be [x0, y0, x1, y1], got {row.extra['box']!r}")
        except (ImageLoadError, ValueError, OSError) as error:
            logger.warning("skipping manifest line %d (%s): %s", row.line, row.origin, error)
            continue
        _, occupied = wrapped.prepare(image)
        examples.append(
            _Example(row.origin, mask, box, occupied, _model_frame_target(mask, occupied, wrapped))
        )
    return examples


def _model_frame_target(mask: np.ndarray, occupied: tuple[int, int], wrapped) -> torch.Tensor:
    """The mask resized into the model frame (content at top-left, padding = background), at (s, s)."""
    canvas = torch.zeros(1, 1, wrapped.image_size, wrapped.image_size)
    resized = F.interpolate(
        torch.from_numpy(mask).float()[None, None],
        (occupied[1], occupied[0]),
        mode="bilinear",
        antialias=True,
    )
    canvas[..., : occupied[1], : occupied[0]] = resized
    return F.interpolate(canvas, (wrapped.mask_size, wrapped.mask_size), mode="area")[0, 0]


def _model_frame_box(example: _Example, jitter: float, generator: torch.Generator | None) -> torch.Tensor:
    """The example's box (randomly jittered when `generator` is given) in model-frame pixels."""
    box = torch.from_numpy(example.box.copy())
    width, height = example.size
    if generator is not None and jitter > 0:
        extent = torch.tensor([box[2] - box[0], box[3] - box[1]] * 2)
        box = box + (torch.rand(4, generator=generator) * 2 - 1) * jitter * extent
        box = torch.minimum(torch.clamp(box, min=0), torch.tensor([width, height] * 2, dtype=box.dtype))
        box[2:] = torch.maximum(box[2:], box[:2] + 1)
    scale = torch.tensor([example.occupied[0] / width, example.occupied[1] / height] * 2)
    return box * scale


def _split(config: SegmenterDataConfig):
    if not config.train_manifest:
        raise ManifestError("data.train_manifest is empty: pass data.train_manifest=path/to/products.jsonl")
    rows = read_manifest(config.train_manifest)
    if config.val_manifest:
        return rows, read_manifest(config.val_manifest)
    parts = split_by_original(
        rows, {"train": 1 - config.val_fraction, "val": config.val_fraction}, seed=config.seed
    )
    if not parts["train"] or not parts["val"]:
        raise ManifestError(
            f"{config.train_manifest} has too few originals to hold out data.val_fraction; add rows"
        )
    return parts["train"], parts["val"]


# ---- loss and validation ------------------------------------------------------------------------------------


def segmentation_losses(logits, target, cfg: SegmenterTrainConfig) -> torch.Tensor:
    """Per-mask focal + dice loss: logits (B, M, s, s), target (B, s, s) in [0, 1] -> (B, M)."""
    logits = logits.float()
    target = target[:, None].expand_as(logits)
    probability = torch.sigmoid(logits)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = probability * target + (1 - probability) * (1 - target)
    alpha_t = cfg.focal_alpha * target + (1 - cfg.focal_alpha) * (1 - target)
    focal = (alpha_t * cross_entropy * (1 - p_t) ** cfg.focal_gamma).mean(dim=(2, 3))
    overlap = (probability * target).sum(dim=(2, 3))
    dice = 1 - (2 * overlap + 1) / (probability.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) + 1)
    return cfg.focal_weight * focal + cfg.dice_weight * dice


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of thresholded logits (B, M, s, s) with target (B, s, s) -> (B, M) (1 when both are empty)."""
    predicted, truth = logits > 0, (target > 0.5)[:, None]
    union = (predicted | truth).sum(dim=(2, 3)).float()
    return torch.where(union > 0, (predicted & truth).sum(dim=(2, 3)).float() / union.clamp(min=1), 1.0)


@torch.no_grad()
def evaluate(wrapped, examples: list[_Example], features, batch_size: int, boundary_tolerance: float) -> dict:
    """Held-out mIoU and mean boundary F of the predicted masks at each image's full resolution."""
    wrapped.eval()
    device = next(wrapped.parameters()).device
    ious, boundaries = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        inputs = _inputs(wrapped, chunk, features, start, device)
        boxes = torch.stack([_model_frame_box(example, 0.0, None) for example in chunk]).to(device)
        logits, iou = wrapped(inputs, boxes, embedded=features is not None)
        for index, example in enumerate(chunk):
            predicted = wrapped.masks(
                logits[index : index + 1], iou[index : index + 1], example.occupied, example.size
            )
            metrics = mask_metrics(example.mask, predicted[0], boundary_tolerance)
            ious.append(metrics["iou"])
            boundaries.append(metrics["boundary_f"])
    return {"miou": float(np.mean(ious)), "boundary_f": float(np.mean(boundaries)), "images": len(examples)}


def _inputs(wrapped, chunk: list[_Example], features, start: int, device) -> torch.Tensor:
    if features is not None:
        return features[start : start + len(chunk)].to(device)
    return torch.stack([wrapped.prepare(load_rgb(example.origin))[0] for example in chunk]).to(device)


@torch.no_grad()
def _encode_all(wrapped, examples: list[_Example], batch_size: int, device) -> torch.Tensor:
    """(N, C, h, w) image embeddings of every example, on the CPU (reused every epoch)."""
    wrapped.eval()
    chunks = []
    for start in tqdm(range(0, len(examples), batch_size), desc="encode images", unit="batch", leave=False):
        chunk = examples[start : start + batch_size]
        chunks.append(wrapped.embed(_inputs(wrapped, chunk, None, 0, device)).cpu())
    return torch.cat(chunks)


# ---- the loop -----------------------------------------------------------------------------------------------


def finetune_segmenter(
    config: SegmenterFinetuneConfig, resume: bool = False, overwrite: bool = False
) -> dict:
    """Train, validate every epoch, keep the best checkpoint; returns the summary (before / best metrics).

    The run contract (module docstring) owns `out_dir`; `resume` / `overwrite` are its --resume /
    --overwrite."""
    from accelerate import Accelerator

    out = Path(config.out_dir)
    accelerator = Accelerator(mixed_precision=config.train.mixed_precision, cpu=config.train.cpu)
    train_rows, val_rows = _split(config.data)
    settings = config_to_dict(config)
    settings["input_sha256"] = input_hashes(
        {"train_manifest": config.data.train_manifest, "val_manifest": config.data.val_manifest}
    )
    with RunOutput(
        out,
        settings,
        resume=resume,
        overwrite=overwrite,
        safe_keys=SEGMENTER_SAFE_KEYS,
        inputs=[config.data.train_manifest, config.data.val_manifest, config.model.checkpoint],
        is_main_process=accelerator.is_main_process,
        name="finetune-segmenter",
        folder=True,
    ) as run:
        summary = _train(config, accelerator, out, train_rows, val_rows, resuming=run.resuming)
        if accelerator.is_main_process:
            run.update_stamp(finished_epoch=config.train.epochs)
    return summary


def _train(
    config: SegmenterFinetuneConfig, accelerator, out: Path, train_rows, val_rows, resuming: bool
) -> dict:
    from accelerate.utils import set_seed

    state_dir, best_dir = out / "state", out / "best"
    if resuming and not (state_dir / "trainer_state.json").is_file():
        logger.info("--resume: no saved state in %s, starting from scratch", state_dir)
        resuming = False
    set_seed(config.data.seed)
    wrapped = load_trainable(config.model).to(accelerator.device)
    train_set, val_set = _load_examples(train_rows, wrapped), _load_examples(val_rows, wrapped)
    if not train_set or not val_set:
        raise ManifestError(
            f"no usable training ({len(train_set)}) or validation ({len(val_set)}) images; see warnings"
        )
    cached = config.train.cache_embeddings and config.model.train_encoder_blocks == 0
    batch = config.train.batch_size
    train_features = _encode_all(wrapped, train_set, batch, accelerator.device) if cached else None
    val_features = _encode_all(wrapped, val_set, batch, accelerator.device) if cached else None

    trainable = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=config.train.learning_rate, weight_decay=config.train.weight_decay
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    steps_per_epoch = -(-len(range(rank, len(train_set), world)) // batch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.train.epochs * steps_per_epoch
    )
    model, optimizer, scheduler = accelerator.prepare(wrapped, optimizer, scheduler)
    generator = torch.Generator().manual_seed(config.data.seed)

    def validate() -> dict:
        return evaluate(
            accelerator.unwrap_model(model), val_set, val_features, batch, config.train.boundary_tolerance
        )

    if resuming:
        accelerator.load_state(str(state_dir))
        trainer = json.loads((state_dir / "trainer_state.json").read_text())
        generator.set_state(torch.load(state_dir / "jitter_rng.pt", weights_only=True))
        logger.info(
            "resumed after epoch %d (best held-out mIoU %.4f)", trainer["epoch"], trainer["best"]["miou"]
        )
        if accelerator.is_main_process:  # epochs logged after the saved state are trained (and logged) again
            kept = [r for r in read_jsonl(out / "metrics.jsonl") if r["epoch"] <= trainer["epoch"]]
            write_jsonl(out / "metrics.jsonl", kept)
    else:
        before = validate()
        trainer = {"epoch": 0, "before": before, "best": {"miou": -1.0}}  # best = best fine-tuned epoch
        (out / "metrics.jsonl").unlink(missing_ok=True)
        append_jsonl(out / "metrics.jsonl", [{"epoch": 0, **before}])
        logger.info(
            "before fine-tuning: held-out mIoU %.4f, boundary F %.4f", before["miou"], before["boundary_f"]
        )

    for epoch in range(trainer["epoch"] + 1, config.train.epochs + 1):
        model.train()
        order = torch.randperm(len(train_set), generator=generator).tolist()[
            rank::world
        ]  # this process's share
        losses = []
        for start in tqdm(range(0, len(order), batch), desc=f"epoch {epoch}", unit="step", leave=False):
            indices = order[start : start + batch]
            chunk = [train_set[i] for i in indices]
            if cached:
                inputs = train_features[indices].to(accelerator.device)
            else:
                inputs = _inputs(accelerator.unwrap_model(model), chunk, None, 0, accelerator.device)
            boxes = torch.stack([_model_frame_box(e, config.data.box_jitter, generator) for e in chunk])
            target = torch.stack([example.target for example in chunk]).to(accelerator.device)
            with accelerator.autocast():
                logits, iou = model(inputs, boxes.to(accelerator.device), embedded=cached)
            segmentation = segmentation_losses(logits, target, config.train).min(dim=1).values.mean()
            iou_loss = F.mse_loss(iou.float(), mask_iou(logits.detach(), target))
            loss = segmentation + config.train.iou_weight * iou_loss
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        metrics = validate()
        record = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            **metrics,
            "lr": scheduler.get_last_lr()[0],
        }
        logger.info(
            "epoch %d: loss %.4f, held-out mIoU %.4f, boundary F %.4f",
            epoch, record["train_loss"], record["miou"], record["boundary_f"],
        )  # fmt: skip
        improved = metrics["miou"] > trainer["best"]["miou"]
        if improved:
            trainer["best"] = dict(metrics, epoch=epoch)
        if accelerator.is_main_process:
            append_jsonl(out / "metrics.jsonl", [record])
            if improved:
                _save_atomically(accelerator.unwrap_model(model).save, best_dir)
        trainer["epoch"] = epoch
        _save_state(accelerator, state_dir, trainer, generator)

    summary = {
        "before": trainer["before"],
        "best": trainer["best"],
        "checkpoint": str(best_dir),
        "train_images": len(train_set),
        "val_images": len(val_set),
    }
    if accelerator.is_main_process:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.info(
        "held-out mIoU %.4f -> %.4f (epoch %d), boundary F %.4f -> %.4f; best checkpoint in %s",
        summary["before"]["miou"], summary["best"]["miou"], summary["best"]["epoch"],
        summary["before"]["boundary_f"], summary["best"]["boundary_f"], best_dir,
    )  # fmt: skip
    return summary


def _save_atomically(save, target: Path) -> None:
    staging = target.with_name(f".{target.name}.tmp")
    if staging.exists():
        shutil.rmtree(staging)
    save(staging)
    replace_directory(staging, target)


def _save_state(accelerator, state_dir: Path, trainer: dict, generator: torch.Generator) -> None:
    """accelerate state (every process takes part) + our loop state, swapped in only once complete."""
    staging = state_dir.with_name(f".{state_dir.name}.tmp")
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    if accelerator.is_main_process:
        torch.save(generator.get_state(), staging / "jitter_rng.pt")
        (staging / "trainer_state.json").write_text(json.dumps(trainer))
        replace_directory(staging, state_dir)
    accelerator.wait_for_everyone()
