"""Tiny random GroundingDINO + SAM checkpoints for the grounded-sam backend (offline tests, demo, benchmarks).

The models are built from configs at toy sizes (~170k + ~77k parameters), saved with `save_pretrained`
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

DETECTOR_IMAGE_EDGES = (
    128,
    192,
)  # shortest / longest edge the tiny detector's processor resizes to (Swin needs >= 128)
SAM_IMAGE_SIZE = 64  # the tiny SAM encodes 64x64 images (8 px patches)


def write_tiny_grounded_sam(out_dir: Path) -> dict:
    """Write a tiny GroundingDINO and a tiny SAM under `out_dir`; return the grounded-sam config delta."""
    out_dir = Path(out_dir)
    detector_dir, sam_dir = out_dir / "grounding_dino", out_dir / "sam"
    torch.manual_seed(0)
    _write_tiny_grounding_dino(detector_dir)
    _write_tiny_sam(sam_dir)
    grounded = {"detector_id": str(detector_dir.resolve()), "sam_id": str(sam_dir.resolve())}
    return {"consistency_grounded_sam": {"backend": "grounded-sam", "grounded": grounded}}


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


def _write_tiny_sam(out_dir: Path) -> None:
    from transformers import (
        SamConfig,
        SamImageProcessorPil,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    patch = 8
    vision = SamVisionConfig(
        hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2, image_size=SAM_IMAGE_SIZE,
        patch_size=patch, window_size=4, global_attn_indexes=[1], mlp_dim=64, num_pos_feats=16,
        initializer_range=0.02,
    )  # fmt: skip
    prompt = SamPromptEncoderConfig(
        hidden_size=32, image_size=SAM_IMAGE_SIZE, patch_size=patch, mask_input_channels=4
    )
    decoder = SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)
    model = SamModel(
        SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    ).eval()
    low_res = SAM_IMAGE_SIZE // patch * 4  # the mask decoder upsamples the embedding grid 4x
    image_processor = SamImageProcessorPil(
        size={"longest_edge": SAM_IMAGE_SIZE},
        pad_size={"height": SAM_IMAGE_SIZE, "width": SAM_IMAGE_SIZE},
        mask_size={"longest_edge": low_res},
        mask_pad_size={"height": low_res, "width": low_res},
    )
    model.save_pretrained(out_dir)
    SamProcessor(image_processor=image_processor).save_pretrained(out_dir)
