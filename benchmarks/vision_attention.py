"""BLIP's vision tower with transformers' eager self-attention vs the reward model's SDPA core.

    OMP_NUM_THREADS=1 python -m benchmarks.vision_attention [--hidden 768] [--layers 12] [--image-size 384]
        [--batch 8] [--repeats 3] [--device cpu] [--dtype float32]

One random `BlipVisionModel` of the given shape (default: BLIP-base, 577 tokens at 384 px), timed as
transformers builds it and again with every layer's self-attention replaced by
`hfpc_reward.reward.model.SdpaVisionAttention` (the swap `HFPCRewardModel` makes), on the same weights and
pixels, forward only (no grad), median of `--repeats` after a warm-up. Prints both, the ratio and the
largest difference of one image's output tokens.
"""

from __future__ import annotations

import argparse
import copy

import torch

from benchmarks.scorer_throughput import vision_config_fields
from benchmarks.timing import timed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="float32, float16, bfloat16")
    args = parser.parse_args()

    from transformers import BlipVisionConfig
    from transformers.models.blip.modeling_blip import BlipVisionModel

    from hfpc_reward.reward.model import SdpaVisionAttention

    config = BlipVisionConfig(**vision_config_fields(args.hidden, args.layers, args.image_size))
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    eager = BlipVisionModel(config).eval().to(device=args.device, dtype=dtype)
    sdpa = copy.deepcopy(eager)
    for layer in sdpa.encoder.layers:
        layer.self_attn = SdpaVisionAttention(layer.self_attn)
    pixels = torch.rand(args.batch, 3, args.image_size, args.image_size, device=args.device, dtype=dtype)
    tokens = (args.image_size // 16) ** 2 + 1
    print(
        f"BlipVisionModel hidden {args.hidden} x {args.layers} layers, {tokens} tokens, batch {args.batch}, "
        f"{args.device} {args.dtype}, {torch.get_num_threads()} CPU thread(s)"
    )
    seconds = {}
    with torch.inference_mode():
        outputs = {  # on one image: the timed calls below warm up by themselves
            name: model(pixel_values=pixels[:1]).last_hidden_state
            for name, model in [("eager", eager), ("sdpa", sdpa)]
        }
        for name, model in (("eager", eager), ("sdpa", sdpa)):
            seconds[name] = timed(lambda m=model: m(pixel_values=pixels), args.device, args.repeats)
            print(
                f"{name:6s} {seconds[name]:8.3f} s per batch   {1000 * seconds[name] / args.batch:8.1f} ms per image"
            )
    difference = float((outputs["eager"].float() - outputs["sdpa"].float()).abs().max())
    print(f"speed-up {seconds['eager'] / seconds['sdpa']:.2f}x   max |token difference| {difference:.2e}")


if __name__ == "__main__":
    main()
