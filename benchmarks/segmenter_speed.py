"""Segmenter speed: EfficientSAM-Ti (ours) vs transformers SAM ViT-B, random weights, same input size.

Both run in this process on the same device and input size. Reported per side:
  image  - end to end through the Segmenter (`segment`: preprocess, encode, one box, masks at image size)
  encode - the image encoder alone on a (1, 3, S, S) tensor
  box    - one more box against a cached image embedding (decoder + masks at image size), averaged over
           `--boxes` boxes prompted together
and the SAM / EfficientSAM ratio (how many times faster EfficientSAM is).

Full-size models (1024 px) are slow on CPU; `--size 512` (or less) scales both to the same smaller input.

  python -m benchmarks.segmenter_speed --size 1024 --device cuda --dtype float16
  OMP_NUM_THREADS=2 python -m benchmarks.segmenter_speed --size 512 --repeats 2
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from benchmarks.timing import timed
from hfpc_reward.consistency.efficientsam import EfficientSamSegmenter
from hfpc_reward.consistency.efficientsam_model import EfficientSam, EfficientSamConfig
from hfpc_reward.consistency.grounded_sam import SamSegmenter


def build_efficientsam(size: int, device: str, dtype: torch.dtype) -> EfficientSamSegmenter:
    model = EfficientSam(EfficientSamConfig(image_size=size))  # ViT-Ti defaults otherwise
    return EfficientSamSegmenter(model.to(device=device, dtype=dtype))


def build_sam(size: int, device: str, dtype: torch.dtype) -> SamSegmenter:
    import transformers
    from transformers import SamConfig, SamModel, SamProcessor, SamPromptEncoderConfig, SamVisionConfig

    # the PIL processor where torchvision is absent (our CPU setup), the default one elsewhere
    image_processor_class = getattr(transformers, "SamImageProcessorPil", transformers.SamImageProcessor)
    config = SamConfig(  # facebook/sam-vit-base shapes, input size scaled to `size`
        vision_config=SamVisionConfig(image_size=size).to_dict(),
        prompt_encoder_config=SamPromptEncoderConfig(image_size=size).to_dict(),
    )
    model = SamModel(config).to(device=device, dtype=dtype).eval()
    low_res = size // 16 * 4
    processor = SamProcessor(
        image_processor=image_processor_class(
            size={"longest_edge": size},
            pad_size={"height": size, "width": size},
            mask_size={"longest_edge": low_res},
            mask_pad_size={"height": low_res, "width": low_res},
        )
    )
    return SamSegmenter(model, processor)


def measure(
    segmenter, image: Image.Image, boxes: np.ndarray, pixels: torch.Tensor, repeats: int, device: str
):
    encoder = segmenter.model.image_encoder if isinstance(segmenter, EfficientSamSegmenter) else None
    with torch.inference_mode():
        encode = (
            (lambda: encoder(pixels))
            if encoder is not None
            else (lambda: segmenter.model.get_image_embeddings(pixels))
        )
        embedded = segmenter.embed([image])
        return {
            "image": timed(lambda: segmenter.segment([image], [boxes[:1]]), device, repeats),
            "encode": timed(encode, device, repeats),
            "box": timed(lambda: segmenter.segment_embedded(embedded, [boxes]), device, repeats) / len(boxes),
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1024, help="model input size for both (official: 1024)")
    parser.add_argument(
        "--image", type=int, nargs=2, default=(800, 600), metavar=("W", "H"), help="test image size"
    )
    parser.add_argument("--boxes", type=int, default=8, help="boxes prompted against one cached embedding")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    args = parser.parse_args()
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    rng = np.random.default_rng(0)
    width, height = args.image
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    corners = rng.uniform(0, 0.5, (args.boxes, 2)) * [width, height]
    boxes = np.hstack([corners, corners + rng.uniform(0.2, 0.5, (args.boxes, 2)) * [width, height]])
    pixels = torch.rand(1, 3, args.size, args.size, device=args.device, dtype=dtype)

    results = {}
    for name, build in (("EfficientSAM-Ti", build_efficientsam), ("SAM ViT-B", build_sam)):
        segmenter = build(args.size, args.device, dtype)
        params = sum(p.numel() for p in segmenter.model.parameters()) / 1e6
        results[name] = dict(
            measure(segmenter, image, boxes, pixels, args.repeats, args.device), params=params
        )
        del segmenter

    print(
        f"input {args.size}x{args.size}, image {width}x{height}, {args.boxes} boxes per cached embedding, "
        f"device {args.device}, {args.dtype}, torch threads {torch.get_num_threads()}, median of {args.repeats}"
    )
    ours, sam = results["EfficientSAM-Ti"], results["SAM ViT-B"]
    print(f"{'':24}{'EfficientSAM-Ti':>18}{'SAM ViT-B':>14}{'SAM / ours':>12}")
    print(
        f"{'parameters (M)':24}{ours['params']:>18.1f}{sam['params']:>14.1f}{sam['params'] / ours['params']:>11.1f}x"
    )
    for key, label in (
        ("image", "per image (1 box), ms"),
        ("encode", "encoder only, ms"),
        ("box", "per cached box, ms"),
    ):
        print(f"{label:24}{ours[key] * 1e3:>18.1f}{sam[key] * 1e3:>14.1f}{sam[key] / ours[key]:>11.1f}x")


if __name__ == "__main__":
    main()
