"""Products to inpaint: manifest rows (crossed with a prompt list, optionally) and each epoch's groups.

A manifest row gives `origin` (the product photo), `mask` (its product mask, white = product; an RGBA
origin's alpha serves when there is no mask), `prompt` (the background to paint), `product_id` and
`category`. The **inpainting mask is the background**: NOT the product mask, so the pipeline repaints
everything but the product. Images and masks are resized to `resolution` x `resolution` (not cropped).
Each (product, mask, prompt) is one *group key*: an epoch samples G images per key it visits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from hfpc_finetune.config import DataConfig
from PIL import Image

from hfpc_reward.data.manifest import ManifestError, product_id_of, read_manifest
from hfpc_reward.images import ImageLoadError, load_mask, open_image, refuse_inverted_mask, resize_to

logger = logging.getLogger(__name__)


@dataclass
class ProductPrompt:
    """One group key: a product photo, its mask and a background prompt, at the training resolution."""

    key: str  # "product_id|prompt": advantages are normalised among samples of the same key
    image: Image.Image  # original RGB, resolution x resolution
    product_mask: np.ndarray  # (H,W) bool, True = product (kept); the inpainting mask is its inverse
    prompt: str
    product_id: str
    category: str | None = None

    def inpaint_mask(self) -> Image.Image:
        """The mask handed to the inpainting pipeline: white (repaint) = background = NOT product."""
        return Image.fromarray(np.where(self.product_mask, 0, 255).astype(np.uint8), mode="L")


def load_products(config: DataConfig) -> list[ProductPrompt]:
    """Every (row, prompt) of the manifest; unreadable rows are logged and skipped, none readable is an error.

    Refused with the row's line: a mask that looks inverted (white = background: every epoch would train on
    repainting the product), and a product_id (default: the origin's file name) naming two origins (their
    samples would share one group key, so advantages would compare different photos)."""
    if not config.manifest:
        raise ValueError(
            "data.manifest is not set: give a JSON Lines manifest with origin, mask and prompt fields"
        )
    size = (config.resolution, config.resolution)
    items: list[ProductPrompt] = []
    origins: dict[str, str] = {}  # product_id -> its origin
    for row in read_manifest(config.manifest):
        product_id = product_id_of(row)
        if origins.setdefault(product_id, row.origin) != row.origin:
            raise ManifestError(
                f"{config.manifest}:{row.line}: product_id {product_id!r} names two originals "
                f"({origins[product_id]} and {row.origin}); give each original its own product_id"
            )
        try:
            loaded = open_image(row.origin)
            if row.mask is not None:
                mask = load_mask(row.mask, size=loaded.rgb.size)
            elif loaded.alpha is not None:
                mask = loaded.alpha
            else:
                raise ImageLoadError(f"{row.origin}: row has no 'mask' and the image has no transparency")
        except ImageLoadError as exc:
            logger.warning("skipping manifest line %d: %s", row.line, exc)
            continue
        if not mask.any() or mask.all():
            logger.warning(
                "skipping manifest line %d: product mask is empty or covers the whole image", row.line
            )
            continue
        refuse_inverted_mask(mask, loaded.rgb, f"{config.manifest}:{row.line}")
        image = resize_to(loaded.rgb, size)
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST)).astype(bool)
        for prompt in config.prompts or [row.prompt or config.default_prompt]:
            items.append(
                ProductPrompt(f"{product_id}|{prompt}", image, mask, prompt, product_id, row.category)
            )
    if not items:
        raise ValueError(f"no usable product in {config.manifest}: every row failed to load (see warnings)")
    logger.info("loaded %d (product, prompt) groups from %s", len(items), config.manifest)
    return items


def epoch_group_items(num_items: int, num_groups: int, seed: int, epoch: int) -> list[int]:
    """Which item each of the epoch's groups uses: shuffled passes over the items, seeded by (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    order: list[int] = []
    while len(order) < num_groups:
        order.extend(rng.permutation(num_items).tolist())
    return order[:num_groups]
