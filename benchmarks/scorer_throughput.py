r"""Throughput of HFPCScorer (batched, original side cached) vs a per-pair loop, split into phases.

    OMP_NUM_THREADS=1 python -m benchmarks.scorer_throughput [--originals 6] [--generations 8] [--size 512]
        [--vision-hidden 256] [--vision-layers 4] [--image-size 224] [--repeats 1] [--batch-size N]
    python -m benchmarks.scorer_throughput --vision-hidden 768 --vision-layers 12 --image-size 384 \
        --originals 16 --generations 8 --device cuda --dtype float16 --tensors --threads 16   # one GPU

The reward model is a random BLIP of the given size (default: a small ViT at 224 px, about a minute on one
CPU core; --vision-hidden 768 --vision-layers 12 --image-size 384 gives BLIP-base shapes) with the
consistency checker's classic backend. The per-pair loop is what a user writes without the scorer, one
pair at a time: `HFPCRewardModel.score`'s steps for one pair (load_pixels of both images, encode_images of
both, score_from_tokens; written out so the original's share can be told from the generation's) and
`checker.check([o], [g], [m])`. Both sides must give the same rewards; `--repeats N` times both sides N
times, alternating, and keeps each side's best run. `--tensors` passes the generated images as one float
tensor on `--device` (as a DDPO trainer holds them), decoded before the clock starts.

The split: every phase below is the exclusive time of the calls it wraps (a call's time minus the
wrapped calls inside it, per thread); "overhead" is the rest of the end-to-end time, negative when the
scorer's consistency threads overlap the reward model (`--consistency-threads`; the config's default is 1).
"(originals)" phases are the original side, which the scorer does once per distinct original. The per-pair
loop projects the whole memory [generated ; original] to cross-attention keys/values in one call ("memory
K/V (both)"); a projection acts on each token alone, so half of it (N of 2N tokens) is the original's.
The ceiling is the loop with its original side done once per original instead of once per pair:
    ideal = loop - (1 - originals / pairs) * original_side,    ceiling = loop / ideal.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

ORIGINALS, GENERATED, BOTH = "(originals)", "(generated)", "(both)"
SIDED = ("decode", "preprocess", "vision tower", "memory K/V", "consistency")
PHASES = [f"{name} {side}" for name in SIDED for side in (ORIGINALS, GENERATED, BOTH)] + [
    "query tokens",
    "fusion + head",
]


class _ThreadStacks(threading.local):
    """Per thread: the sides entered and, per open wrapped call, seconds spent in wrapped calls inside it."""

    def __init__(self):
        self.side: list[str] = []
        self.inner: list[float] = []


class PhaseClock:
    """Exclusive seconds per phase of the calls it wraps; sided phases are named by the region they run in
    (inside an `originals` region: "(originals)", inside `both`: "(both)", else "(generated)")."""

    def __init__(self, device: str):
        self.seconds: dict[str, float] = defaultdict(float)
        self._stacks = _ThreadStacks()
        self._cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize()

    @contextmanager
    def side(self, name: str):
        self._stacks.side.append(name)
        try:
            yield
        finally:
            self._stacks.side.pop()

    def wrap(self, owner, attr: str, phase: str | None, sided: bool = False, side: str | None = None):
        """Replace `owner.attr` by a timed call; `phase=None` only marks the region's `side`."""
        fn = getattr(owner, attr)

        def timed(*args, **kwargs):
            stacks = self._stacks
            with self.side(side) if side else nullcontext():
                if phase is None:
                    return fn(*args, **kwargs)
                name = f"{phase} {stacks.side[-1] if stacks.side else GENERATED}" if sided else phase
                self.sync()
                start = time.perf_counter()
                stacks.inner.append(0.0)
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.sync()
                    elapsed = time.perf_counter() - start
                    self.seconds[name] += elapsed - stacks.inner.pop()
                    if stacks.inner:
                        stacks.inner[-1] += elapsed

        setattr(owner, attr, timed)

    def take(self) -> dict[str, float]:
        """The seconds measured since the last take, and a fresh start."""
        taken, self.seconds = dict(self.seconds), defaultdict(float)
        return taken


def instrument(clock: PhaseClock, model, checker) -> None:
    """Wrap the calls both sides make (instances and the module functions they reach) with the clock."""
    from hfpc_reward import images
    from hfpc_reward.scorer import HFPCScorer

    clock.wrap(images, "open_image", "decode", sided=True)
    clock.wrap(images, "load_mask", "decode", sided=True)
    clock.wrap(model, "load_pixels", "preprocess", sided=True)
    clock.wrap(model, "preprocess", "preprocess", sided=True)
    clock.wrap(HFPCScorer, "_model_pixels", "preprocess", sided=True)
    clock.wrap(HFPCScorer, "_encode_originals", None, side=ORIGINALS)
    clock.wrap(model.vision, "forward", "vision tower", sided=True)
    clock.wrap(model, "encode_original", "memory K/V", sided=True, side=ORIGINALS)
    for layer in model.text.encoder.layer:
        clock.wrap(layer.crossattention.self.key, "forward", "memory K/V", sided=True)
        clock.wrap(layer.crossattention.self.value, "forward", "memory K/V", sided=True)
    clock.wrap(model, "tokenize", "query tokens")
    clock.wrap(model, "score_from_tokens", "fusion + head")
    clock.wrap(checker, "prepare_originals", "consistency", sided=True, side=ORIGINALS)
    clock.wrap(checker, "check_prepared", "consistency", sided=True)


def transformer_shapes(hidden: int, layers: int) -> dict:
    """BLIP-style layer sizes for a tower of `hidden` width and `layers` depth (64-wide heads)."""
    return {
        "hidden_size": hidden,
        "intermediate_size": 4 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),
    }


def vision_config_fields(hidden: int, layers: int, image_size: int) -> dict:
    """A random BLIP vision tower's config fields (16 px patches; initializer_range 0.02, see DESIGN.md)."""
    return {
        "image_size": image_size,
        "patch_size": 16,
        "initializer_range": 0.02,
        **transformer_shapes(hidden, layers),
    }


def build_reward_model(folder: Path, hidden: int, layers: int, image_size: int):
    from transformers import BlipConfig, BlipForImageTextRetrieval

    from hfpc_reward.reward.model import HFPCRewardModel, RewardModelConfig
    from hfpc_reward.testing.tiny_blip import tiny_blip_processor

    processor = tiny_blip_processor(image_size=image_size)
    shapes = transformer_shapes(hidden, layers)
    config = BlipConfig(
        vision_config=vision_config_fields(hidden, layers, image_size),
        text_config={"vocab_size": len(processor.tokenizer), "encoder_hidden_size": hidden, **shapes},
    )
    torch.manual_seed(0)
    BlipForImageTextRetrieval(config).save_pretrained(folder / "blip")
    processor.save_pretrained(folder / "blip")
    model = HFPCRewardModel.from_pretrained(
        folder / "blip", config=RewardModelConfig(head_dims=[1024, 128, 64, 16])
    )
    return HFPCRewardModel.from_pretrained(model.save_pretrained(folder / "reward")).eval()


def ideal_split(loop: dict[str, float], fraction: float) -> dict[str, float]:
    """The loop's phases with the original side done `fraction` (= originals / pairs) as often."""
    ideal = {}
    for name, seconds in loop.items():
        if name.endswith(ORIGINALS):
            ideal[name] = seconds * fraction
        elif name.endswith(BOTH):
            ideal[name] = seconds / 2 + seconds / 2 * fraction
        else:
            ideal[name] = seconds
    return ideal


def print_split(runs: dict[str, tuple[float, dict[str, float]]], pairs: int, originals: int) -> None:
    (loop_total, loop), (batched_total, batched) = runs["per-pair loop"], runs["HFPCScorer"]
    ideal = ideal_split(loop, originals / pairs)
    ideal_total = loop_total - sum(loop.values()) + sum(ideal.values())  # the loop's overhead kept whole
    columns = {"per-pair loop": loop, "ideal (ceiling)": ideal, "HFPCScorer": batched}
    totals = {"per-pair loop": loop_total, "ideal (ceiling)": ideal_total, "HFPCScorer": batched_total}
    print(f"\nper-phase seconds (best run; ms per pair in brackets), {pairs} pairs, {originals} originals:")
    print(f"{'phase':26s}" + "".join(f"{c:>22s}" for c in columns) + f"{'scorer - ideal':>18s}")
    used = [p for p in PHASES if any(col.get(p, 0.0) > 0 for col in columns.values())]
    overheads = {column: totals[column] - sum(split.values()) for column, split in columns.items()}
    rows = {name: [split.get(name, 0.0) for split in columns.values()] for name in used}
    rows |= {"overhead": list(overheads.values()), "total": list(totals.values())}
    for name, row in rows.items():
        cells = "".join(f"{v:10.2f} s ({1000 * v / pairs:7.1f})" for v in row)
        print(f"{name:26s}{cells}{row[2] - row[1]:+16.2f} s")
    ceiling = loop_total / ideal_total
    speed_up = loop_total / batched_total
    print(
        f"ceiling {ceiling:.2f}x; the scorer is {speed_up:.2f}x the loop = {speed_up / ceiling:.0%} of the ceiling"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--originals", type=int, default=6)
    parser.add_argument("--generations", type=int, default=8, help="generations per original")
    parser.add_argument("--size", type=int, default=512, help="sample image size (px)")
    parser.add_argument("--vision-hidden", type=int, default=256)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224, help="reward-model input size (px)")
    parser.add_argument("--repeats", type=int, default=1, help="time each side N times, keep the best")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="the scorer's reward_model.batch_size (default: the config's)",
    )
    parser.add_argument("--device", default="cpu", help="torch device of the reward model (cpu, cuda)")
    parser.add_argument("--dtype", default="float32", help="reward-model dtype (float32, float16, bfloat16)")
    parser.add_argument("--tensors", action="store_true", help="generated images as one tensor on --device")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--consistency-threads",
        type=int,
        default=None,
        help="the scorer's consistency_threads (default: the config's; 0 = no overlap with the reward model)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from hfpc_reward.consistency.checker import ProductConsistencyChecker
    from hfpc_reward.consistency.config import ConsistencyConfig
    from hfpc_reward.data.manifest import read_manifest
    from hfpc_reward.images import load_rgb, pil_to_tensor
    from hfpc_reward.sample.pairs import generate_pairs
    from hfpc_reward.scorer import HFPCScorer, RewardModelRef, ScorerConfig

    work = Path(tempfile.mkdtemp(prefix="hfpc-bench-"))
    model = build_reward_model(work, args.vision_hidden, args.vision_layers, args.image_size)
    model.to(device=args.device, dtype=getattr(torch, args.dtype))
    rows = read_manifest(
        generate_pairs(
            work / "pairs",
            n_pairs=args.originals * args.generations,
            size=args.size,
            generations_per_original=args.generations,
        )
    )
    rows.sort(key=lambda r: r.origin)
    pairs, originals = len(rows), len({r.origin for r in rows})
    generated = [r.generation for r in rows]
    if args.tensors:
        generated = pil_to_tensor([load_rgb(g) for g in generated]).to(args.device)
    print(
        f"{pairs} pairs, {originals} originals, {args.size}px; reward model ViT hidden {args.vision_hidden} x "
        f"{args.vision_layers} layers at {args.image_size}px on {args.device} ({args.dtype}), "
        f"{args.threads} CPU thread(s); generated images as {'a tensor' if args.tensors else 'files'}"
    )
    checker = ProductConsistencyChecker.from_config(ConsistencyConfig())
    config = (
        ScorerConfig()
        if args.batch_size is None
        else ScorerConfig(RewardModelRef(batch_size=args.batch_size))
    )
    if args.consistency_threads is not None:
        config.consistency_threads = args.consistency_threads
    print(
        f"scorer reward_model.batch_size {config.reward_model.batch_size}, "
        f"consistency_threads {config.consistency_threads}"
    )
    clock = PhaseClock(args.device)
    instrument(clock, model, checker)

    def per_pair() -> list[float]:
        rewards = []
        for row, generation in zip(rows, generated):
            with torch.inference_mode():
                with clock.side(ORIGINALS):
                    original_tokens = model.encode_images(model.load_pixels([row.origin]))
                generated_tokens = model.encode_images(
                    model.load_pixels(generation[None] if args.tensors else [generation])
                )
                with clock.side(BOTH):
                    background = float(
                        model.score_from_tokens(original_tokens, generated_tokens, [row.prompt])[0]
                    )
            report = checker.check([row.origin], [generation], [row.mask])[0]
            rewards.append(background if report.consistent else config.policy.fail_value)
        return rewards

    def batched(count: int = pairs) -> list[float]:
        scorer = HFPCScorer(model, checker, config)  # a new scorer per call: nothing cached from before
        chosen = rows[:count]
        results = scorer.score(
            [r.origin for r in chosen],
            generated[:count],
            [r.mask for r in chosen],
            [r.prompt for r in chosen],
        )
        return [r.reward for r in results]

    batched(1)  # warm-up of lazy imports and first-call allocations, on one pair
    clock.take()
    runs: dict[str, tuple[float, dict[str, float]]] = {}
    outputs = {}
    for _ in range(max(1, args.repeats)):
        for name, fn in (("per-pair loop", per_pair), ("HFPCScorer", batched)):
            clock.sync()
            start = time.perf_counter()
            outputs[name] = fn()
            clock.sync()
            seconds, split = time.perf_counter() - start, clock.take()
            if seconds < runs.get(name, (math.inf, None))[0]:
                runs[name] = (seconds, split)
    a, b = outputs.values()
    max_diff = float(np.max(np.abs(np.array(a) - np.array(b))))
    for name, (seconds, _) in runs.items():
        print(
            f"{name:16s} {seconds:8.2f} s   {pairs / seconds:7.2f} pairs/s   (best of {max(1, args.repeats)})"
        )
    speed_up = runs["per-pair loop"][0] / runs["HFPCScorer"][0]
    print(
        f"speed-up: {speed_up:.2f}x   max |reward difference|: {max_diff:.2e} (identical: {max_diff < 1e-4})"
    )
    print_split(runs, pairs, originals)


if __name__ == "__main__":
    main()
