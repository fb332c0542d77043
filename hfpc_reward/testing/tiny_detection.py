"""Tiny random GroundingDINO + SAM (and SAM-HQ) checkpoints for the grounded-sam backend (offline tests,
demo, benchmarks).

The models are built from configs at toy sizes (~180k + ~77k parameters), saved with `save_pretrained`
together with their processors, and loaded back by the backend through the same `from_pretrained`
code a real hub id takes. Their weights are random: detections are meaningless, plumbing is real.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Words the tiny BERT tokenizer knows: special tokens, punctuation, and product / category words.
TINY_VOCAB_WORDS = (
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "a", "the", "of", "and",
    "product", "bottle", "box", "shoe", "bag", "cup", "jar", "can", "watch", "phone", "lamp",
    "chair", "toy", "book", "perfume", "cosmetic", "shirt", "hat", "red", "blue", "white", "black",
)  # fmt: skip

# shortest / longest edge the tiny detector's processor resizes to (Swin needs >= 128)
DETECTOR_IMAGE_EDGES = (128, 192)
SAM_IMAGE_SIZE = 64  # the tiny SAM encodes 64x64 images (8 px patches)


def write_tiny_grounded_sam(out_dir: Path) -> dict:
    """Write a tiny GroundingDINO, SAM and SAM-HQ under `out_dir`; return grounded-sam config deltas
    (`consistency_grounded_sam` with SAM, `consistency_grounded_sam_hq` with SAM-HQ)."""
    out_dir = Path(out_dir)
    detector_dir = out_dir / "grounding_dino"
    torch.manual_seed(0)
    _write_tiny_grounding_dino(detector_dir)
    configs = {}
    for name, hq in (("consistency_grounded_sam", False), ("consistency_grounded_sam_hq", True)):
        sam_dir = out_dir / ("sam_hq" if hq else "sam")
        _write_tiny_sam(sam_dir, hq=hq)
        grounded = {"detector_id": str(detector_dir.resolve()), "sam_id": str(sam_dir.resolve())}
        configs[name] = {"backend": "grounded-sam", "grounded": grounded}
    return configs


def _write_tiny_grounding_dino(out_dir: Path) -> None:
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessorPil,
        GroundingDinoProcessor,
        SwinConfig,
    )

    backbone = SwinConfig(
        embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4, out_indices=[2, 3, 4]
    )
    text = BertConfig(
        vocab_size=len(TINY_VOCAB_WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1, decoder_layers=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2,
        num_queries=20, encoder_n_points=2, decoder_n_points=2, max_text_len=32, disable_custom_kernels=True,
    )  # fmt: skip
    model = GroundingDinoForObjectDetection(config).eval()
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(TINY_VOCAB_WORDS)})
    shortest, longest = DETECTOR_IMAGE_EDGES
    image_processor = GroundingDinoImageProcessorPil(
        size={"shortest_edge": shortest, "longest_edge": longest}
    )
    model.save_pretrained(out_dir)
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)


def _write_tiny_sam(out_dir: Path, hq: bool) -> None:
    import transformers
    from transformers import SamImageProcessorPil

    prefix = "SamHQ" if hq else "Sam"  # SAM-HQ mirrors SAM's classes, plus early ViT features in its decoder
    patch = 8
    vision = getattr(transformers, f"{prefix}VisionConfig")(
        hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2, image_size=SAM_IMAGE_SIZE,
        patch_size=patch, window_size=4, global_attn_indexes=[1], mlp_dim=64, num_pos_feats=16,
        initializer_range=0.02,
    )  # fmt: skip
    prompt = getattr(transformers, f"{prefix}PromptEncoderConfig")(
        hidden_size=32, image_size=SAM_IMAGE_SIZE, patch_size=patch, mask_input_channels=4
    )
    decoder = getattr(transformers, f"{prefix}MaskDecoderConfig")(
        hidden_size=32,
        mlp_dim=64,
        num_attention_heads=2,
        iou_head_hidden_dim=32,
        **({"vit_dim": 32} if hq else {}),
    )
    config = getattr(transformers, f"{prefix}Config")(
        vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder
    )
    model = getattr(transformers, f"{prefix}Model")(config).eval()
    low_res = SAM_IMAGE_SIZE // patch * 4  # the mask decoder upsamples the embedding grid 4x
    image_processor = SamImageProcessorPil(
        size={"longest_edge": SAM_IMAGE_SIZE},
        pad_size={"height": SAM_IMAGE_SIZE, "width": SAM_IMAGE_SIZE},
        mask_size={"longest_edge": low_res},
        mask_pad_size={"height": low_res, "width": low_res},
    )
    model.save_pretrained(out_dir)
    getattr(transformers, f"{prefix}Processor")(image_processor=image_processor).save_pretrained(out_dir)
