"""The pictures of report.html, embedded as data URIs so that the page is one file that opens anywhere.

Each shown sample gets its thumbnail, its full image (capped at `FULL_SIDE` pixels, JPEG) and the
consistency overlay of the judge's product check (original outline, generated outline, colour-drift heat
map; `hfpc_reward.consistency.overlays`), computed here from the manifest's original and product mask.
"""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path
from typing import Any

from PIL import Image

from hfpc_reward.images import load_rgb

logger = logging.getLogger(__name__)

FULL_SIDE = 768  # longest side of the full image embedded in the page, in pixels
JPEG_QUALITY = 85  # quality of the embedded JPEGs


def data_uri(image: Image.Image, max_side: int | None = None) -> str:
    """An RGB image as a `data:image/jpeg;base64,...` URI, downscaled to `max_side` when larger."""
    image = image.convert("RGB")
    if max_side is not None and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def file_uri(out: Path, relative: str | None, max_side: int | None = None) -> str | None:
    """The data URI of an image file of the run (path relative to `out`), or None when it is missing."""
    if not relative:
        return None
    path = out / relative
    if not path.is_file():
        return None
    return data_uri(load_rgb(path), max_side)


class OverlayMaker:
    """Consistency overlays of generated images against their product (one checker for the whole page)."""

    def __init__(self, consistency_config: Any, products: dict[str, Any]):
        from hfpc_reward.consistency.checker import ProductConsistencyChecker

        self.checker = ProductConsistencyChecker.from_config(consistency_config)
        self.max_delta_e = consistency_config.thresholds.max_delta_e
        self.products = products  # product_id -> hfpc_eval Product (image, mask, category)
        self.prepared: dict[str, Any] = {}

    def overlay_uri(self, product_id: str, generated: Image.Image) -> str | None:
        """The overlay of one generated image as a data URI; None when its product cannot be checked."""
        from hfpc_reward.consistency.overlays import overlay_image

        product = self.products.get(product_id)
        if product is None:
            return None
        if product_id not in self.prepared:
            self.prepared[product_id] = self.checker.prepare_originals(
                [product.image], [product.mask], [product.category or None], errors="report"
            )[0]
        (report, details) = self.checker.inspect_prepared([self.prepared[product_id]], [generated], "report")[
            0
        ]
        if details is None:
            return None
        return data_uri(
            Image.fromarray(overlay_image(details, report, self.max_delta_e)), max_side=3 * FULL_SIDE
        )


def sample_pictures(out: Path, row: dict, overlays: OverlayMaker | None) -> dict[str, str | None]:
    """{"thumb", "full", "overlay"} data URIs of one sample row (None where there is nothing to show)."""
    thumb = file_uri(out, row.get("thumb"))
    full_path = out / row["image"] if row.get("image") else None
    if full_path is None or not full_path.is_file():
        return {"thumb": thumb, "full": thumb, "overlay": None}
    full = load_rgb(full_path)
    overlay = None
    if overlays is not None:
        try:
            overlay = overlays.overlay_uri(row["product_id"], full)
        except Exception:  # a picture must never cost the report; the numbers are elsewhere
            logger.warning(
                "no consistency overlay for %s k=%s", row["product_id"], row.get("k"), exc_info=True
            )
    return {"thumb": thumb or data_uri(full, 160), "full": data_uri(full, FULL_SIDE), "overlay": overlay}
