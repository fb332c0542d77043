"""Sample product pairs with exact masks and known ground truth (`hfpc sample-data`).

Products (bottles, pump dispensers, cans, jars, boxes, gable-top cartons, shoes, stickers die-cut from
scikit-image's logo, framed photos; flat ones sometimes tilted) are drawn with PIL: labels, text, stripes,
logos, printed photos, cylinder shading and highlights. The photographs that ship inside scikit-image and
scikit-learn (no download) serve as backgrounds, textures and prints. 200 pairs at 512 px take about 10 s
of one core.

An *original* is the product on a studio background (white, light grey or a soft gradient); some
originals are saved as a ready RGBA cut-out (transparent background). A *generation* is the same product
composited at the same place on a new background (photo crop, tinted texture, tabletop scene with a
horizon) with harmless changes (JPEG, noise, slight blur, soft shadow, reflection, feathered edges, small
colour grading) and, for the defective share, one defect from `hfpc_reward.sample.defects.DEFECT_KINDS` (its
magnitude's meaning and minimum are documented there).

Manifest rows (paths relative to the manifest): origin, generation, mask (white = product of the
original), prompt, category, product_id, label (1 = consistent), consistent, defect, defect_magnitude,
harmless, generation_mask (the product's true mask in the generation).
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from hfpc_reward.data.manifest import write_jsonl
from hfpc_reward.sample.backgrounds import scene_background, studio_background
from hfpc_reward.sample.defects import DEFECT_KINDS, ProductLayer, apply_defect, compose_generation
from hfpc_reward.sample.photos import PHOTOS, TEXTURES, bundled_texture
from hfpc_reward.sample.products import CATEGORIES, ProductSpec, draw_product, random_spec, relabel

logger = logging.getLogger(__name__)

GENERATIONS_PER_ORIGINAL = 4


# --- writing originals, generations and manifests ------------------------------------------------


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, compress_level=1)


def _write_original(rng, spec: ProductSpec, layer: ProductLayer, out_dir: Path, product_id: str) -> dict:
    """Write the studio original (sometimes as an RGBA cut-out) and its mask; returns manifest fields."""
    size = layer.alpha.shape[0]
    (out_dir / "originals").mkdir(exist_ok=True)
    (out_dir / "masks").mkdir(exist_ok=True)
    origin = f"originals/{product_id}.png"
    if rng.random() < 0.2:
        straight = layer.straight_colour()
        _save_png(np.dstack([_to_uint8(straight), _to_uint8(layer.alpha)]), out_dir / origin)
    else:
        background = studio_background(rng, size)
        if rng.random() < 0.3:  # a soft studio contact shadow
            shadow = cv2.GaussianBlur(layer.alpha, (0, 0), 10 * size / 512)
            background = background * (1 - 0.25 * np.roll(shadow, int(0.01 * size), axis=0))[..., None]
        _save_png(_to_uint8(background * (1 - layer.alpha[..., None]) + layer.colour), out_dir / origin)
    mask = f"masks/{product_id}.png"
    _save_png(layer.mask.astype(np.uint8) * 255, out_dir / mask)
    return {"origin": origin, "mask": mask, "category": spec.category, "product_id": product_id}


def _write_generation(rng, spec, layer, defect: str, out_dir: Path, name: str) -> dict:
    """Write one generation of a product with harmless changes and an optional defect."""
    size = layer.alpha.shape[0]
    magnitude = 0.0
    if defect != "none":
        textures = [bundled_texture(t) for t in TEXTURES]
        layer, magnitude = apply_defect(
            defect, layer, rng, lambda r: draw_product(relabel(spec, r), size), textures
        )
    background, prompt, horizon = scene_background(rng, size, spec)
    image, harmless = compose_generation(layer, background, rng, horizon)
    (out_dir / "generations").mkdir(exist_ok=True)
    (out_dir / "generation_masks").mkdir(exist_ok=True)
    pixels = Image.fromarray(_to_uint8(image))
    if rng.random() < 0.6:
        quality = int(rng.integers(70, 96))
        generation = f"generations/{name}.jpg"
        pixels.save(out_dir / generation, quality=quality)
        harmless.append(f"jpeg_q{quality}")
    else:
        generation = f"generations/{name}.png"
        pixels.save(out_dir / generation, compress_level=1)
    generation_mask = f"generation_masks/{name}.png"
    _save_png(layer.mask.astype(np.uint8) * 255, out_dir / generation_mask)
    return {
        "generation": generation,
        "prompt": f"a {spec.category} {prompt}",
        "label": int(defect == "none"),
        "consistent": defect == "none",
        "defect": defect,
        "defect_magnitude": round(float(magnitude), 4),
        "harmless": harmless,
        "generation_mask": generation_mask,
    }


def _defect_plan(n_pairs: int, defect_fraction: float, seed: int) -> list[str]:
    """Exactly round(n * fraction) defects, kinds balanced, at random positions."""
    if not 0.0 <= defect_fraction <= 1.0:
        raise ValueError(f"defect_fraction must be in [0, 1], got {defect_fraction}")
    rng = np.random.default_rng([seed, 7919])
    n_defects = round(n_pairs * defect_fraction)
    kinds = [DEFECT_KINDS[i % len(DEFECT_KINDS)] for i in range(n_defects)]
    plan = list(rng.permutation(kinds + ["none"] * (n_pairs - n_defects)))
    return [str(kind) for kind in plan]


def generate_pairs(
    out_dir: str | Path,
    n_pairs: int = 200,
    seed: int = 0,
    size: int = 512,
    defect_fraction: float = 0.5,
    generations_per_original: int = GENERATIONS_PER_ORIGINAL,
) -> Path:
    """Write `n_pairs` (original, generation) pairs with ground truth; returns out_dir/manifest.jsonl.

    Each original gets `generations_per_original` generations (the last one fewer when n_pairs is not a
    multiple). Same seed, same files.
    """
    if n_pairs < 1 or size < 64 or generations_per_original < 1:
        raise ValueError(
            f"need n_pairs >= 1, size >= 64 and generations_per_original >= 1, got n_pairs={n_pairs}, "
            f"size={size}, generations_per_original={generations_per_original}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = _defect_plan(n_pairs, defect_fraction, seed)
    manifest = out / "manifest.jsonl"
    rows = []
    with tqdm(total=n_pairs, desc="sample pairs", unit="pair") as progress:
        for index in range(0, n_pairs, generations_per_original):
            product = index // generations_per_original
            product_id = f"p{product:04d}"
            rng = np.random.default_rng([seed, product])
            spec = random_spec(rng, size, CATEGORIES[product % len(CATEGORIES)])
            layer = draw_product(spec, size)
            original = _write_original(rng, spec, layer, out, product_id)
            for k in range(index, min(index + generations_per_original, n_pairs)):
                gen_rng = np.random.default_rng([seed, product, k + 1])
                row = dict(
                    original, **_write_generation(gen_rng, spec, layer, plan[k], out, f"{product_id}_g{k}")
                )
                rows.append({key: row[key] for key in _ROW_ORDER})
                progress.update(1)
    write_jsonl(manifest, rows)
    logger.info(
        "wrote %d pairs (%d defective) to %s", len(rows), sum(not r["consistent"] for r in rows), manifest
    )
    return manifest


_ROW_ORDER = (
    "origin",
    "generation",
    "mask",
    "prompt",
    "category",
    "product_id",
    "label",
    "consistent",
    "defect",
    "defect_magnitude",
    "harmless",
    "generation_mask",
)


def generate_products(out_dir: str | Path, n_products: int = 16, seed: int = 0, size: int = 512) -> Path:
    """Write `n_products` studio originals with masks and background prompts; returns out_dir/products.jsonl."""
    if n_products < 1 or size < 64:
        raise ValueError(f"need n_products >= 1 and size >= 64, got n_products={n_products}, size={size}")
    out = Path(out_dir) / "products"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for product in tqdm(range(n_products), desc="sample products", unit="product"):
        rng = np.random.default_rng([seed, 104729, product])
        spec = random_spec(rng, size, CATEGORIES[product % len(CATEGORIES)])
        row = _write_original(rng, spec, draw_product(spec, size), out, f"s{product:04d}")
        place = str(rng.choice(list(PHOTOS.values()) + [f"against {t}" for t in TEXTURES.values()]))
        row["prompt"] = f"a {spec.category} {place}, professional product photography"
        rows.append(
            {key: f"products/{value}" if key in ("origin", "mask") else value for key, value in row.items()}
        )
    manifest = Path(out_dir) / "products.jsonl"
    write_jsonl(manifest, rows)
    return manifest
