"""Mini human feedback: world products as manifests, generator samples, and simulated annotators.

`write_world_products` writes studio originals (the product on white, 64 px) with product masks and one
manifest row per (product, scene prompt); `product_id` is "<product>-<scene>" so every row is one eval
product with its own prompt. `label_generations` samples an inpainting pipeline on those rows, judges
every sample with the oracle and writes an HFPC-44k-schema manifest (origin, generation, label) in which
the label is the oracle's verdict flipped with probability `label_noise` (annotators disagree about ~10%
of images); the true verdict stays in `oracle_passed` for measuring against the truth.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from hfpc_reward.data.manifest import ManifestError, file_safe_product_id, read_manifest, write_jsonl
from hfpc_reward.errors import UsageError
from hfpc_reward.images import load_mask, load_rgb
from hfpc_reward.sample.oracle import Oracle
from hfpc_reward.sample.products import draw_product
from hfpc_reward.sample.world import SCENE_KINDS, WORLD_SIZE, prompt_for, studio_original, world_products

logger = logging.getLogger(__name__)


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, compress_level=1)


def write_world_products(out_dir: str | Path, split: str, count: int, scenes_per_product: int = 6) -> Path:
    """Studio originals + masks of `count` products of `split`; rows cross each with scene prompts.

    With fewer than 6 scenes per product, product i takes the kinds i, i+1, ... (all kinds stay balanced).
    Returns out_dir/<split>.jsonl.
    """
    if not 1 <= scenes_per_product <= len(SCENE_KINDS):
        raise UsageError(f"scenes_per_product must be in 1..{len(SCENE_KINDS)}, got {scenes_per_product}")
    out = Path(out_dir)
    rows = []
    for index, product in enumerate(world_products(split, count)):
        origin, mask = f"originals/{product.product_id}.png", f"masks/{product.product_id}.png"
        _save((studio_original(product) * 255 + 0.5).astype(np.uint8), out / origin)
        _save(draw_product(product.spec, WORLD_SIZE).mask.astype(np.uint8) * 255, out / mask)
        for offset in range(scenes_per_product):
            kind = SCENE_KINDS[(index + offset) % len(SCENE_KINDS)]
            rows.append(
                {
                    "origin": origin,
                    "mask": mask,
                    "prompt": prompt_for(product.spec.category, kind),
                    "category": product.spec.category,
                    "product_id": f"{product.product_id}-{kind}",
                }
            )
    manifest = out / f"{split}.jsonl"
    write_jsonl(manifest, rows)
    logger.info("wrote %d rows (%d products of split %s) to %s", len(rows), count, split, manifest)
    return manifest


def sample_pipeline(pipe, rows, samples: int, seed: int, steps: int, guidance: float, batch_size: int = 16):
    """`samples` images per manifest row from an inpainting pipeline (mask = background).

    Yields (row, k, original PIL, product mask at the original's size, generated PIL).
    """
    import torch

    jobs = [(row, k) for row in rows for k in range(samples)]
    for start in tqdm(range(0, len(jobs), batch_size), desc="sample", unit="batch"):
        chunk = jobs[start : start + batch_size]
        originals = [load_rgb(row.origin) for row, _ in chunk]
        masks = [load_mask(row.mask, size=image.size) for (row, _), image in zip(chunk, originals)]
        backgrounds = [Image.fromarray(np.where(mask, 0, 255).astype(np.uint8)) for mask in masks]
        generators = [torch.Generator().manual_seed(seed * 100_003 + start + i) for i in range(len(chunk))]
        out = pipe(
            prompt=[row.prompt for row, _ in chunk],
            image=originals,
            mask_image=backgrounds,
            height=WORLD_SIZE,
            width=WORLD_SIZE,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
        )
        yield from (
            (row, k, original, mask, image)
            for (row, k), original, mask, image in zip(chunk, originals, masks, out.images)
        )


def _generation_stems(rows: list, manifest: str | Path) -> dict[int, str]:
    """{id(row): the stem of its generations' file names}: its product id, one per row (a repeated or missing
    product_id, whose default is the origin's name, would have rows overwrite each other's images)."""
    stems, lines = {}, {}
    for row in rows:
        stem = file_safe_product_id(row, manifest)
        if stem in lines:
            raise ManifestError(
                f"{manifest}:{row.line}: product_id {stem!r} also names line {lines[stem]}'s generations; "
                "give every (product, prompt) row its own product_id"
            )
        stems[id(row)], lines[stem] = stem, row.line
    return stems


def label_generations(
    pipeline: str | Path,
    products_manifest: str | Path,
    oracle: Oracle,
    out_dir: str | Path,
    samples: int = 4,
    label_noise: float = 0.1,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 1.0,
) -> Path:
    """Sample `samples` generations per row, paste the product back, label them; returns the manifest path."""
    from diffusers import StableDiffusionInpaintPipeline

    from hfpc_reward.images import paste_product

    if not 0.0 <= label_noise < 0.5:
        raise UsageError(f"label_noise must be in [0, 0.5), got {label_noise}")
    rows = read_manifest(products_manifest)
    names = _generation_stems(rows, products_manifest)  # checked before any model loads
    pipe = StableDiffusionInpaintPipeline.from_pretrained(str(pipeline), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    out = Path(out_dir)
    rng = np.random.default_rng([seed, 4099])
    records = []
    for row, k, original, mask, image in sample_pipeline(pipe, rows, samples, seed, steps, guidance):
        final = paste_product(image, original, mask)  # resizes to the original
        name = f"generations/{names[id(row)]}_{k}.png"
        _save(np.asarray(final), out / name)
        verdict = oracle.judge(np.asarray(final), np.asarray(original), mask, row.prompt)
        flipped = bool(rng.random() < label_noise)
        records.append(
            {
                "origin": os.path.relpath(row.origin, out),
                "generation": name,
                "label": int(verdict.passed != flipped),
                "mask": os.path.relpath(row.mask, out),
                "prompt": row.prompt,
                "category": row.category,
                "product_id": row.product_id,
                "annotator_flipped": flipped,
                **verdict.to_record(),
            }
        )
    manifest = out / "manifest.jsonl"
    write_jsonl(manifest, records)
    rate = np.mean([r["oracle_passed"] for r in records])
    logger.info("labelled %d generations (oracle pass rate %.3f) -> %s", len(records), rate, manifest)
    return manifest


def write_world_blip(out_dir: str | Path, seed: int = 0) -> Path:
    """A random tiny BLIP ITM backbone for 64 px world images whose vocabulary holds every prompt word."""
    import torch
    from transformers import BlipForImageTextRetrieval

    from hfpc_reward.sample.products import CATEGORIES
    from hfpc_reward.sample.world import SCENES
    from hfpc_reward.testing.tiny_blip import tiny_blip_config, tiny_blip_processor

    words = tuple(CATEGORIES) + tuple(word for phrase in SCENES.values() for word in phrase.split())
    processor = tiny_blip_processor(image_size=WORLD_SIZE, words=words)
    torch.manual_seed(seed)
    model = BlipForImageTextRetrieval(tiny_blip_config(len(processor.tokenizer), image_size=WORLD_SIZE))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def pretrain_world_blip(
    blip_dir: str | Path, out_dir: str | Path, steps: int = 600, batch_size: int = 32, seed: int = 0
) -> Path:
    """Image-text pretraining of the world's BLIP on clean renders and their captions (the world's "web data").

    BLIP's two objectives: image-text contrast (each render against the captions of all six scene kinds,
    temperature 0.07) and image-text matching (the true caption vs another kind's, through the cross-attention).
    No flaw and no annotator label is seen: the reward model still learns what passes from the feedback;
    like BLIP's own pretraining, this gives it features that know the scenes.
    """
    import torch
    import torch.nn.functional as F
    from transformers import BlipForImageTextRetrieval, BlipProcessor

    from hfpc_reward.sample.world import render

    processor = BlipProcessor.from_pretrained(str(blip_dir))
    model = BlipForImageTextRetrieval.from_pretrained(str(blip_dir)).train()
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    products = world_products("train", 64)
    pool_rng = np.random.default_rng([seed, 7001])
    pool = []  # (image, category, scene index): rendered once
    for index in range(max(batch_size * 16, 512)):
        product, kind = products[index % len(products)], index % len(SCENE_KINDS)
        item = render(product, SCENE_KINDS[kind], pool_rng)
        pool.append((Image.fromarray((item.image * 255 + 0.5).astype(np.uint8)), product.spec.category, kind))
    pixels = processor(images=[image for image, _, _ in pool], return_tensors="pt").pixel_values
    for step in range(steps):
        rng = np.random.default_rng([seed, 7002, step])
        pick = rng.choice(len(pool), batch_size, replace=False)
        batch = pixels[torch.from_numpy(pick)]
        kinds = torch.tensor([pool[i][2] for i in pick])
        captions = [prompt_for(pool[i][1], kind) for i in pick for kind in SCENE_KINDS]  # (B*6,)
        text = processor.tokenizer(captions, return_tensors="pt", padding=True)
        vision = model.vision_model(pixel_values=batch).last_hidden_state  # (B,N,D)
        image_feat = F.normalize(model.vision_proj(vision[:, 0]), dim=-1)  # (B,P)
        text_cls = model.text_encoder(
            input_ids=text.input_ids, attention_mask=text.attention_mask
        ).last_hidden_state
        text_feat = F.normalize(model.text_proj(text_cls[:, 0]), dim=-1).view(
            batch_size, len(SCENE_KINDS), -1
        )
        contrast = F.cross_entropy(torch.einsum("bp,bkp->bk", image_feat, text_feat) / 0.07, kinds)
        wrong = (kinds + torch.from_numpy(rng.integers(1, len(SCENE_KINDS), batch_size))) % len(SCENE_KINDS)
        rows = torch.arange(batch_size) * len(SCENE_KINDS)
        chosen = torch.cat([rows + kinds, rows + wrong])  # true captions, then wrong ones
        fused = model.text_encoder(
            input_ids=text.input_ids[chosen],
            attention_mask=text.attention_mask[chosen],
            encoder_hidden_states=vision.repeat(2, 1, 1),
        ).last_hidden_state
        matching = F.cross_entropy(
            model.itm_head(fused[:, 0]), torch.cat([torch.ones(batch_size), torch.zeros(batch_size)]).long()
        )
        loss = contrast + matching
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 50 == 0:
            logger.info(
                "blip pretraining step %d: contrastive %.3f, matching %.3f",
                step + 1,
                contrast.item(),
                matching.item(),
            )
    out = Path(out_dir)
    model.eval().save_pretrained(out)
    processor.save_pretrained(out)
    return out


def demo_summary(demo: str | Path) -> str:
    """The demo's closing lines: per version HFPC and oracle pass rates with intervals, paired differences,
    best-of-n selection by the HFPC reward among each product's samples, the reward model's pairwise
    accuracy against the oracle (referenced and unreferenced), the report path."""
    import json

    demo = Path(demo)
    if not (demo / "eval" / "results.json").is_file():
        raise UsageError(f"{demo} holds no eval/results.json: give the demo's folder after `make demo` ran")
    results = json.loads((demo / "eval" / "results.json").read_text())

    def rate(value: dict | None, sign: str = "") -> str:
        if not value:
            return "n/a"
        return f"{value['estimate']:{sign}.3f} [{value['low']:{sign}.3f}, {value['high']:{sign}.3f}]"

    lines = [f"{'version':24s} {'HFPC pass rate [95% CI]':25s} oracle pass rate [95% CI]"]
    for name, summary in results["versions"].items():
        lines.append(f"{name:24s} {rate(summary['pass_rate']):25s} {rate(summary.get('oracle_pass_rate'))}")
    for name, paired in results["paired"].items():
        flag = "  <- HACKING: HFPC rises, the oracle does not" if paired.get("hacking") else ""
        lines.append(f"{name:24s} {rate(paired, '+'):25s} {rate(paired.get('oracle'), '+')}{flag}")
    # the HFPC reward as a selector: the best of n samples of a product, and its gain over one sample
    reference, summary = next(iter(results["versions"].items()))
    for n, best in (summary.get("best_of") or {}).items():
        label = f"{reference} best-of-{n} by HFPC"
        lines.append(f"{label:24s} {rate(best['pass_rate']):25s} {rate(best.get('oracle_pass_rate'))}")
        gain = f"  gain over one sample {rate(best['pass_rate_gain'], '+')}"
        if "oracle_pass_rate_gain" in best:
            gain += f", oracle {rate(best['oracle_pass_rate_gain'], '+')}"
        lines.append(gain)
    for label, name in (("referenced", "referenced.json"), ("unreferenced", "unreferenced.json")):
        path = demo / "reward_eval" / name
        if path.is_file():
            accuracy = json.loads(path.read_text())["metrics"]["pairwise_accuracy"]
            lines.append(
                f"reward model ({label}) vs oracle, held-out originals: pairwise accuracy {accuracy:.3f}"
            )
    lines.append(f"report: {demo / 'eval' / 'report.html'}")
    return "\n".join(lines)
