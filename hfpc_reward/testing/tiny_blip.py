"""Tiny random BLIP ITM backbone and reward model for offline tests, the demo and benchmarks.

`write_tiny_reward_model(out_dir)` writes two folders and returns two YAML config dicts:
- `out_dir/blip/`: a plain tiny `BlipForImageTextRetrieval` checkpoint + BLIP processor (32x32 images,
  8-px patches, hidden 32, 2+2 layers, 4 heads, a small word-piece vocabulary built in memory);
  training starts from it like from `Salesforce/blip-itm-base-coco`.
- `out_dir/reward_model/`: an `HFPCRewardModel` (untrained head) saved with `save_pretrained`.
Returned configs:
- `reward_tiny`: a `hfpc train-reward` delta: `model` = the tiny BLIP folder, the tiny head, CPU-sized
  training settings (set `data.train_manifest` and `training.out_dir` on the command line).
- `reward_model_tiny`: `{"path": "<abs reward_model folder>"}` for anything that loads a reward model.
"""

from __future__ import annotations

from pathlib import Path

# Tiny head (ImageReward's is 1024-128-64-16) and light dropout, so CPU learning tests converge quickly.
TINY_HEAD = {"head_dims": [64, 16], "head_dropout": [0.1, 0.0], "max_text_length": 16}

# CPU recipe that learns the colour task below (held-out pairwise accuracy ~0.9 from 200 originals).
TINY_TRAINING = {
    "epochs": 6,
    "batch_size": 32,
    "gradient_accumulation_steps": 1,
    "learning_rate": 4e-3,
    "warmup_ratio": 0.0,
    "freeze_fraction": 0.0,
    "eval_every_steps": 20,
    "save_every_steps": 20,
}

_WORDS = [
    "a",
    "product",
    "photo",
    "with",
    "suitable",
    "generated",
    "background",
    "of",
    "on",
    "the",
    "in",
    "and",
    "for",
    "shoe",
    "bag",
    "cup",
    "bottle",
    "watch",
    "table",
    "wood",
    "marble",
    "kitchen",
    "studio",
    "white",
    "beach",
    "grass",
    "red",
    "green",
    "blue",
]


def tiny_blip_processor(image_size: int = 32, words: tuple[str, ...] = ()):
    """A BLIP processor with a small in-memory word-piece vocabulary (no network), plus `words`."""
    from transformers import BertTokenizer, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"]
    tokens += (
        sorted(set(_WORDS) | set(words))
        + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
        + list("abcdefghijklmnopqrstuvwxyz")
    )
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    image_processor = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    return BlipProcessor(image_processor=image_processor, tokenizer=BertTokenizer(vocab=vocab))


def tiny_blip_config(vocab_size: int, image_size: int = 32):
    """A BlipConfig of ~80k parameters; `initializer_range=0.02` so gradients reach the pixels."""
    from transformers import BlipConfig

    return BlipConfig(
        vision_config={
            "image_size": image_size,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "initializer_range": 0.02,
        },
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "bos_token_id": 2,
            "sep_token_id": 3,
            "pad_token_id": 0,
        },
        projection_dim=32,
        image_text_hidden_size=32,
    )


def write_tiny_blip(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random BLIP ITM checkpoint with its processor to `out_dir`."""
    import torch
    from transformers import BlipForImageTextRetrieval

    processor = tiny_blip_processor()
    torch.manual_seed(seed)
    model = BlipForImageTextRetrieval(tiny_blip_config(len(processor.tokenizer)))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def write_tiny_reward_model(out_dir: Path) -> dict:
    """Write the tiny BLIP backbone and a tiny reward model under `out_dir`; see the module docstring."""
    import torch

    from hfpc_reward.reward.model import HFPCRewardModel, RewardModelConfig

    out_dir = Path(out_dir).resolve()
    blip_dir = write_tiny_blip(out_dir / "blip")
    torch.manual_seed(0)
    model = HFPCRewardModel.from_pretrained(blip_dir, config=RewardModelConfig(**TINY_HEAD))
    reward_dir = model.save_pretrained(out_dir / "reward_model")
    return {
        "reward_tiny": {
            "model": str(blip_dir),
            "architecture": dict(TINY_HEAD),
            "training": dict(TINY_TRAINING),
        },
        "reward_model_tiny": {"path": str(reward_dir)},
    }


def write_colour_preference_task(
    out_dir: Path, n_originals: int, generations_per_label: int = 2, image_size: int = 32, seed: int = 0
) -> Path:
    """A labelled manifest whose preference needs the reference image; returns its path.

    Each original is a product (a centred square of a random colour) on a random noisy background.
    Accepted generations (label 1) keep the product's colour on a new background; rejected ones
    (label 0) repaint the product in another random colour. Product colours of accepted and rejected
    generations have the same distribution, so a judge that does not see the original scores at chance.
    """
    import numpy as np
    from PIL import Image

    from hfpc_reward.data.manifest import write_jsonl

    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    lo, hi = image_size // 8, image_size - image_size // 8  # the product fills the middle 3/4

    def picture(product_colour: np.ndarray) -> np.ndarray:
        background = rng.uniform(0, 1, 3) * 0.8 + rng.normal(0, 0.08, (image_size, image_size, 3))
        image = np.clip(background, 0, 1)
        image[lo:hi, lo:hi] = np.clip(product_colour + rng.normal(0, 0.02, (hi - lo, hi - lo, 3)), 0, 1)
        return image

    def save(image: np.ndarray, name: str) -> str:
        Image.fromarray((image * 255 + 0.5).astype(np.uint8)).save(out_dir / "images" / name)
        return f"images/{name}"

    records = []
    for i in range(n_originals):
        colour = rng.uniform(0, 1, 3)
        origin = save(picture(colour), f"orig{i:04d}.png")
        for j in range(generations_per_label):
            records.append(
                {"origin": origin, "generation": save(picture(colour), f"gen{i:04d}_pos{j}.png"), "label": 1}
            )
            other = rng.uniform(0, 1, 3)
            while np.abs(other - colour).max() < 0.4:
                other = rng.uniform(0, 1, 3)
            records.append(
                {"origin": origin, "generation": save(picture(other), f"gen{i:04d}_neg{j}.png"), "label": 0}
            )
    manifest = out_dir / "manifest.jsonl"
    write_jsonl(manifest, records)
    return manifest
