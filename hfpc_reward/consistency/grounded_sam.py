"""The grounded backends: GroundingDINO finds the product from a text prompt, a SAM-family model cuts it out.

- `GroundingDinoDetector` (a `Detector`): transformers `AutoModelForZeroShotObjectDetection` + `AutoProcessor`.
- `SamSegmenter` (a `Segmenter`): transformers `SamModel` / `SamHQModel` + their processor (SAM, SlimSAM,
  SAM-HQ ids), one box prompt per mask, `multimask_output=False`; image embeddings can be computed once
  and reused.
- `GroundedMaskFinder` (a `MaskFinder`, backends "grounded-sam" and "grounded-efficientsam").

Policies (config `grounded.*`):
- Original: a given mask is used as is (source "given"). Otherwise the highest-scoring box for the prompt
  is segmented (source "detected"). When nothing is detected (or the box's mask is empty), the note
  "no product detected in original" (or "the segmenter found no product ...") is reported and the mask
  comes from the classic backend's studio-background extraction (source "studio", settings `classic.*`;
  it adds its own note when the backdrop is not plain). Never the whole image: that would make every
  generation look consistent.
- Generated: the box is chosen by `box_choice` ("best-overlap" = highest IoU with the original's box,
  "highest-score" = the detector's best); nothing detected -> `fallback` ("original-box" segments inside
  the original's box, "empty" reports an empty mask), always with the note "nothing detected in
  generated image".
- Masks are clipped to their prompt box when `clip_masks_to_box` (the box bounds the product).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from hfpc_reward.config import resolve_device
from hfpc_reward.consistency.backends import Detections, OriginalProduct
from hfpc_reward.consistency.classic import studio_mask
from hfpc_reward.consistency.config import ConsistencyConfig, GroundedConfig
from hfpc_reward.consistency.geometry import box_mask, choose_box, mask_box, sam_input_boxes

logger = logging.getLogger(__name__)

NO_ORIGINAL_DETECTION = "no product detected in original"
NO_GENERATED_DETECTION = "nothing detected in generated image"
EMPTY_ORIGINAL_SEGMENT = "the segmenter found no product in the original's detected box"


class GroundingDinoDetector:
    """Detector: text-prompted boxes from a transformers GroundingDINO checkpoint (hub id or folder)."""

    def __init__(self, model, processor, *, box_threshold: float, text_threshold: float, batch_size: int = 8):
        self.model = model.eval()
        self.processor = processor
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls, model_id: str, *, box_threshold: float = 0.3, text_threshold: float = 0.25, batch_size: int = 8,
        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
    ) -> GroundingDinoDetector:  # fmt: skip
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        model = AutoModelForZeroShotObjectDetection.from_pretrained(model_id, dtype=dtype).to(device)
        processor = AutoProcessor.from_pretrained(model_id)
        return cls(
            model,
            processor,
            box_threshold=box_threshold,
            text_threshold=text_threshold,
            batch_size=batch_size,
        )

    @torch.inference_mode()
    def detect(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[Detections]:
        """One `Detections` per image, best score first, boxes in pixels of that image (clipped to it).

        Batches hold images of one size and one prompt only: the processor pads a batch to its largest image
        and longest text, and the padding changed the boxes, so a verdict depended on the rest of the batch."""
        if len(images) != len(prompts):
            raise ValueError(f"detect() got {len(images)} images but {len(prompts)} prompts")
        groups: dict[tuple, list[int]] = {}
        for index, (image, prompt) in enumerate(zip(images, prompts)):
            groups.setdefault((image.size, detection_text(prompt)), []).append(index)
        results: dict[int, Detections] = {}
        for (_, text), members in groups.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                found = self._detect_batch([images[i] for i in chunk], [text] * len(chunk))
                results.update(zip(chunk, found))
        return [results[index] for index in range(len(images))]

    def _detect_batch(self, chunk: list[Image.Image], texts: list[str]) -> list[Detections]:
        """Detections of a batch of same-size images with the same text."""
        # a prompt longer than the model's text length is cut to it
        inputs = self.processor(
            images=chunk, text=texts, padding=True, truncation=True,
            max_length=self.model.config.max_text_len, return_tensors="pt",
        )  # fmt: skip
        inputs = inputs.to(self.model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        outputs = self.model(**inputs)
        outputs.logits, outputs.pred_boxes = outputs.logits.float(), outputs.pred_boxes.float()
        sizes = [(image.height, image.width) for image in chunk]
        found = self.processor.post_process_grounded_object_detection(
            outputs, threshold=self.box_threshold, text_threshold=self.text_threshold, target_sizes=sizes
        )
        return [_to_detections(item, size) for item, size in zip(found, sizes)]


@dataclass
class SamImageEmbedding:
    """SAM's encoding of one image, reusable for any number of box prompts on that image."""

    embedding: torch.Tensor  # (1, C, h, w) image embedding from the vision encoder
    original_size: tuple[int, int]  # (H, W) of the image
    reshaped_size: tuple[int, int]  # (h, w) of the image inside the processor's padded square
    intermediate: list[torch.Tensor] | None = (
        None  # SAM-HQ only: early ViT features [(1, h, w, D)] its decoder uses
    )


class SamSegmenter:
    """Segmenter: box-prompted masks from a transformers SAM / SlimSAM / SAM-HQ checkpoint (hub id or folder)."""

    def __init__(self, model, processor, *, batch_size: int = 8):
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls,
        model_id: str,
        *,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> SamSegmenter:
        from transformers import AutoConfig, AutoProcessor, SamHQModel, SamModel

        model_type = AutoConfig.from_pretrained(model_id).model_type
        model_classes = {"sam": SamModel, "sam_hq": SamHQModel}
        if model_type not in model_classes:
            raise ValueError(
                f"{model_id} is a {model_type!r} checkpoint; grounded.sam_id needs a SAM, SlimSAM or SAM-HQ one "
                "(e.g. facebook/sam-vit-base)"
            )
        model = model_classes[model_type].from_pretrained(model_id, dtype=dtype).to(device)
        return cls(model, AutoProcessor.from_pretrained(model_id), batch_size=batch_size)

    @torch.inference_mode()
    def embed(self, images: Sequence[Image.Image]) -> list[SamImageEmbedding]:
        """Encode the images (batched); the result can be segmented with any boxes by `segment_embedded`."""
        embedded: list[SamImageEmbedding] = []
        for start in range(0, len(images), self.batch_size):
            inputs = self.processor(images=list(images[start : start + self.batch_size]), return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.model.device, self.model.dtype)
            embeddings = self.model.get_image_embeddings(pixels)
            intermediate = None
            if isinstance(embeddings, tuple):  # SAM-HQ: (embeddings, intermediate ViT features)
                embeddings, intermediate = embeddings
            for index, embedding in enumerate(embeddings):
                embedded.append(
                    SamImageEmbedding(
                        embedding=embedding[None],
                        original_size=tuple(int(v) for v in inputs["original_sizes"][index]),
                        reshaped_size=tuple(int(v) for v in inputs["reshaped_input_sizes"][index]),
                        intermediate=None
                        if intermediate is None
                        else [f[index : index + 1] for f in intermediate],
                    )
                )
        return embedded

    def segment(self, images: Sequence[Image.Image], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """For image i and its boxes (N_i, 4) xyxy pixels, masks (N_i, H, W) bool at the image's size."""
        return self.segment_embedded(self.embed(images), boxes)

    @torch.inference_mode()
    def segment_embedded(
        self, embedded: Sequence[SamImageEmbedding], boxes: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """`segment` for images already encoded by `embed`."""
        if len(embedded) != len(boxes):
            raise ValueError(f"segment got {len(embedded)} images but {len(boxes)} box arrays")
        masks: list[np.ndarray] = []
        for item, image_boxes in zip(embedded, boxes):
            image_boxes = np.asarray(image_boxes, dtype=np.float32).reshape(-1, 4)
            height, width = item.original_size
            if len(image_boxes) == 0:
                masks.append(np.zeros((0, height, width), dtype=bool))
                continue
            prompt_boxes = torch.from_numpy(
                sam_input_boxes(image_boxes, item.original_size, item.reshaped_size)
            )
            extra = {} if item.intermediate is None else {"intermediate_embeddings": item.intermediate}
            outputs = self.model(
                image_embeddings=item.embedding,
                input_boxes=prompt_boxes[None].to(self.model.device, self.model.dtype),
                multimask_output=False,
                **extra,
            )
            # pred_masks (1, N, 1, h', w') low-res logits -> (N, 1, H, W) bool at the image's size
            upscaled = self.processor.post_process_masks(
                outputs.pred_masks.float().cpu(), [item.original_size], [item.reshaped_size]
            )[0]
            masks.append(upscaled[:, 0].numpy().astype(bool))
        return masks


class GroundedMaskFinder:
    """MaskFinder for "grounded-sam" (transformers SAM) and "grounded-efficientsam" (EfficientSAM)."""

    def __init__(self, config: ConsistencyConfig):
        settings: GroundedConfig = config.grounded
        self.settings = settings
        self.classic_settings = config.classic  # for the studio-background fallback of undetected originals
        dtype = getattr(torch, settings.dtype)
        device = resolve_device(settings.device)
        self.detector = GroundingDinoDetector.from_pretrained(
            settings.detector_id, box_threshold=settings.box_threshold, text_threshold=settings.text_threshold,
            batch_size=settings.batch_size, device=device, dtype=dtype,
        )  # fmt: skip
        if config.backend == "grounded-efficientsam":
            from hfpc_reward.consistency.efficientsam import EfficientSamSegmenter

            self.segmenter = EfficientSamSegmenter.from_pretrained(
                settings.efficientsam_checkpoint, device=device, dtype=dtype
            )
        else:
            self.segmenter = SamSegmenter.from_pretrained(
                settings.sam_id, batch_size=settings.batch_size, device=device, dtype=dtype
            )

    def original_products(
        self,
        originals: Sequence[Image.Image],
        masks: Sequence[np.ndarray | None],
        prompts: Sequence[str | None],
    ) -> list[OriginalProduct]:
        """One OriginalProduct per original; cache holds its "box" (xyxy or None), "detections" and, for
        detected products, the segmenter's "image_embedding" of the original (SAM's or EfficientSAM's)."""
        if not len(originals) == len(masks) == len(prompts):
            raise ValueError(f"got {len(originals)} originals, {len(masks)} masks and {len(prompts)} prompts")
        phrases = [(prompt or "").strip() or self.settings.default_prompt for prompt in prompts]
        products: list[OriginalProduct | None] = [None] * len(originals)
        to_detect = []
        for index, (image, mask, phrase) in enumerate(zip(originals, masks, phrases)):
            if mask is None:
                to_detect.append(index)
                continue
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (image.height, image.width):
                raise ValueError(
                    f"original {index}: mask shape {mask.shape} differs from the image's (H, W) = "
                    f"{(image.height, image.width)}; resize the mask to the image (images.load_mask(..., size=))"
                )
            products[index] = OriginalProduct(image, mask, "given", phrase, [], {"box": mask_box(mask)})
        if to_detect:
            images = [originals[i] for i in to_detect]
            for index, product in zip(
                to_detect, self._detect_products(images, [phrases[i] for i in to_detect])
            ):
                products[index] = product
        return products

    def generated_masks(
        self, generated: Sequence[Image.Image], products: Sequence[OriginalProduct]
    ) -> list[tuple[np.ndarray, list[str]]]:
        """For generated[i] (aligned to products[i].image's size): its product mask and notes."""
        if len(generated) != len(products):
            raise ValueError(f"got {len(generated)} generated images but {len(products)} original products")
        for index, (image, product) in enumerate(zip(generated, products)):
            if image.size != product.image.size:
                raise ValueError(
                    f"generated image {index} is {image.size[0]}x{image.size[1]} but its original is "
                    f"{product.image.size[0]}x{product.image.size[1]}; align it to the original first"
                )
        detections = self.detector.detect(generated, [product.prompt for product in products])
        boxes: list[np.ndarray | None] = []
        notes: list[list[str]] = []
        for found, product in zip(detections, products):
            reference = product.cache.get("box")
            if len(found.boxes):
                boxes.append(
                    found.boxes[choose_box(found.boxes, found.scores, reference, self.settings.box_choice)]
                )
                notes.append([])
            elif self.settings.fallback == "original-box" and reference is not None:
                boxes.append(reference)
                notes.append([f"{NO_GENERATED_DETECTION}; segmented inside the original's box"])
            else:
                boxes.append(None)
                notes.append([f"{NO_GENERATED_DETECTION}; empty mask"])
        to_segment = [index for index, box in enumerate(boxes) if box is not None]
        segmented = self._segment([generated[i] for i in to_segment], [boxes[i] for i in to_segment])
        masks = [np.zeros((image.height, image.width), dtype=bool) for image in generated]
        for index, mask in zip(to_segment, segmented):
            masks[index] = mask
        return list(zip(masks, notes))

    def _segment(
        self,
        images: list[Image.Image],
        boxes: list[np.ndarray],
        embedded: list | None = None,
    ) -> list[np.ndarray]:
        """One (H, W) mask per image for its one box (4,), clipped to the box when configured."""
        prompts = [np.asarray(box, dtype=np.float32)[None] for box in boxes]
        if embedded is not None:
            segmented = self.segmenter.segment_embedded(embedded, prompts)
        else:
            segmented = self.segmenter.segment(images, prompts)
        masks = [image_masks[0] for image_masks in segmented]
        if self.settings.clip_masks_to_box:
            masks = [mask & box_mask(box, mask.shape) for mask, box in zip(masks, boxes)]
        return masks

    def _detect_products(self, images: list[Image.Image], phrases: list[str]) -> list[OriginalProduct]:
        detections = self.detector.detect(images, phrases)
        found_any = [index for index, found in enumerate(detections) if len(found.boxes)]
        embedded = None
        if hasattr(
            self.segmenter, "embed"
        ):  # SAM and EfficientSAM: keep the original's encoding in its cache
            embedded = self.segmenter.embed([images[i] for i in found_any])
        best_boxes = [detections[i].boxes[0] for i in found_any]  # detections are sorted best first
        segmented = dict(zip(found_any, self._segment([images[i] for i in found_any], best_boxes, embedded)))
        embedding_of = dict(zip(found_any, embedded or []))
        products = []
        for index, (image, phrase, found) in enumerate(zip(images, phrases, detections)):
            cache = {"box": found.boxes[0] if len(found.boxes) else None, "detections": found}
            if index in embedding_of:
                cache["image_embedding"] = embedding_of[index]
            if index in segmented and segmented[index].any():
                products.append(OriginalProduct(image, segmented[index], "detected", phrase, [], cache))
                continue
            problem = NO_ORIGINAL_DETECTION if index not in segmented else EMPTY_ORIGINAL_SEGMENT
            logger.info(
                "%s (%r, %dx%d): studio-background extraction", problem, phrase, image.width, image.height
            )
            mask, studio_notes = studio_mask(np.asarray(image.convert("RGB")), self.classic_settings)
            cache["box"] = mask_box(mask)
            notes = [f"{problem}; used studio-background extraction", *studio_notes]
            products.append(OriginalProduct(image, mask, "studio", phrase, notes, cache))
        return products


def detection_text(prompt: str) -> str:
    """GroundingDINO's expected text: lower case, phrases ending with a period ("red shoe.")."""
    text = prompt.strip().lower()
    if not text:
        raise ValueError("an empty detection prompt: give the product's name or set grounded.default_prompt")
    return text if text.endswith(".") else text + "."


def _to_detections(found: dict, size: tuple[int, int]) -> Detections:
    height, width = size
    scores = found["scores"].float().cpu().numpy().astype(np.float32)
    boxes = found["boxes"].float().cpu().numpy().astype(np.float32).reshape(-1, 4)
    boxes = np.clip(boxes, 0.0, [width, height, width, height]).astype(np.float32)
    labels = [label.strip() for label in found["text_labels"]]
    order = np.argsort(-scores, kind="stable")
    return Detections(boxes=boxes[order], scores=scores[order], labels=[labels[i] for i in order])
