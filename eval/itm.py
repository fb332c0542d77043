"""Zero-shot BLIP image-text matching: P(image matches prompt) from `BlipForImageTextRetrieval`'s ITM head.

Used twice, never as a training reward: as a held-out check of generated images in `eval run`, and as the
zero-shot baseline of the reward-model table (`eval judges`), as in the HFPC paper's comparison with
open-source judges. Real weights: e.g. `Salesforce/blip-itm-base-coco` (configs only).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)


class BlipITMJudge:
    """Loads a BLIP ITM checkpoint (hub id or folder) and scores (image, prompt) pairs in batches."""

    def __init__(self, model_id: str, device: str = "auto", batch_size: int = 16):
        import torch
        from hfpc_eval.distributed import resolve_device
        from transformers import AutoProcessor, BlipForImageTextRetrieval

        device = resolve_device(device)
        logger.info("loading BLIP ITM judge %s", model_id)
        self.processor = AutoProcessor.from_pretrained(model_id)
        self.model = BlipForImageTextRetrieval.from_pretrained(model_id).to(device).eval()
        self.device, self.batch_size, self.torch = device, batch_size, torch
        self.max_length = self.model.config.text_config.max_position_embeddings  # longer prompts are cut

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        """(B,) float64 match probabilities in [0, 1] (softmax of the ITM head, class "match")."""
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        scores = []
        for start in range(0, len(images), self.batch_size):
            inputs = self.processor(
                images=list(images[start : start + self.batch_size]),
                text=list(prompts[start : start + self.batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
            ).to(self.device)
            with self.torch.no_grad():
                logits = self.model(**inputs, use_itm_head=True).itm_score
            scores.append(logits.float().softmax(dim=-1)[:, 1].cpu().numpy())
        return np.concatenate(scores).astype(np.float64) if scores else np.zeros(0)
