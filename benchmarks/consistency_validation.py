"""The consistency judge on several independently written pair families, fitted on one, reported on all.

    python -m benchmarks.consistency_validation [--pairs 120] [--fit-family cutouts] [--families ...]

Families: "sample" (hfpc_reward.sample, PIL drawing, the data the default thresholds were first tuned on),
"heldout" (benchmarks/heldout_consistency_set.py, OpenCV drawing), "cutouts" (hfpc_reward.sample.families,
real objects cut from bundled photos, SDF drawing, studio originals with cast shadows), "drawn"
(hfpc_reward.sample.families.drawn, scikit-image polygons and procedural textures; held out until the reach
and halo metrics were designed while looking at it), "lit" (hfpc_reward.sample.families.lit, shaded 3-D
products with printed labels on photo / texture / bokeh scenes, written by someone who did not read the
judge; looked at once the reach and halo metrics existed, and the judge changed after that), and
"packshot" (hfpc_reward.sample.families.packshot, flat vector pack shots with gradients, strokes and
text, reflections and contact shadows, written the same way and never looked at while designing the judge),
and "inpaint" (hfpc_reward.sample.families.inpaint, written the same way after the judge was final: the
whole generated image goes through a latent-like round trip (down 2-8x, noise, up, sharpen) and most
get the product pasted back with a feathered mask, as a real inpainting pipeline does). Those last two are
the held-out truth. Each family's pairs
are checked in four variants: the exact product mask; the mask eroded or dilated by 2-4 px (as a
segmenter's would be); every image downscaled to 128 px; no mask (the product is found in the studio
original). Thresholds are then fitted (hfpc_reward.consistency.calibrate.fit_thresholds) on ONE family,
all its variants pooled, and every family is reported with the default and with the fitted thresholds,
per defect kind (share caught) and for consistent pairs (share rejected), and how often a caught pair's
primary reason names its defect ("reason": over the kinds the judge names; a rescaled product is reported
as truncated or expanded). Numbers on the fitted family
are marked "fitted": they are not results.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from hfpc_reward.consistency.calibrate import detection_metrics, fit_thresholds
from hfpc_reward.consistency.checker import ProductConsistencyChecker
from hfpc_reward.consistency.config import ConsistencyConfig
from hfpc_reward.consistency.verdict import FAILURE_PRECEDENCE, verdict
from hfpc_reward.data.manifest import read_manifest
from hfpc_reward.images import load_mask, load_rgb
from hfpc_reward.sample.families.base import DEFECTS, FamilyPair
from hfpc_reward.sample.families.cutouts import cutout_pairs
from hfpc_reward.sample.families.drawn import drawn_pairs
from hfpc_reward.sample.families.inpaint import inpaint_pairs
from hfpc_reward.sample.families.lit import lit_pairs
from hfpc_reward.sample.families.packshot import packshot_pairs

VARIANTS = ("exact mask", "mask off 2-4 px", "128 px", "no mask")
RENAMED = {
    "label_changed": "relabelled",
    "texture_changed": "relabelled",
    "shifted": "moved",
    "melted": "bled",
}


def manifest_pairs(manifest: Path, family: str) -> list[FamilyPair]:
    """Pairs of a manifest written by another generator (its defect names mapped onto DEFECTS)."""
    pairs = []
    for row in read_manifest(manifest):
        extra = row.extra
        original = np.asarray(load_rgb(row.origin))
        pairs.append(
            FamilyPair(
                family=family,
                original_id=f"{family}:{row.origin}",
                original=original,
                generated=np.asarray(load_rgb(row.generation)),
                mask=load_mask(row.mask, size=(original.shape[1], original.shape[0])),
                defect=RENAMED.get(extra["defect"], extra["defect"]),
                harmless=list(extra.get("harmless") or []),
            )
        )
    return pairs


def family_pairs(name: str, n_pairs: int, seed: int, folder: Path) -> list[FamilyPair]:
    if name == "cutouts":
        return cutout_pairs(n_pairs, seed)
    if name == "drawn":
        return drawn_pairs(n_pairs, seed)
    if name == "lit":
        return lit_pairs(n_pairs, seed)
    if name == "packshot":
        return packshot_pairs(n_pairs, seed)
    if name == "inpaint":
        return inpaint_pairs(n_pairs, seed)
    if name == "sample":
        from hfpc_reward.sample.pairs import generate_pairs

        return manifest_pairs(generate_pairs(folder / name, n_pairs, seed, 512, 0.5), name)
    if name == "heldout":
        from benchmarks.heldout_consistency_set import write_set

        return manifest_pairs(write_set(folder / name, n_pairs, seed, 512, 0.5), name)
    raise ValueError(f"unknown family {name!r}")


def variant_inputs(pairs: list[FamilyPair], variant: str, seed: int):
    """(originals, generated, masks) of one variant of the pairs."""
    rng = np.random.default_rng(seed)
    originals = [p.original for p in pairs]
    generated = [p.generated for p in pairs]
    masks: list = [p.mask for p in pairs]
    if variant == "mask off 2-4 px":
        masks = [_shift_outline(p.mask, int(rng.integers(2, 5)), bool(rng.random() < 0.5)) for p in pairs]
    elif variant == "128 px":
        originals = [_downscale(image) for image in originals]
        generated = [_downscale(image) for image in generated]
        masks = [_downscale(p.mask.astype(np.float32)) > 0.5 for p in pairs]
    elif variant == "no mask":
        masks = [None] * len(pairs)
    return originals, generated, masks


def _shift_outline(mask: np.ndarray, pixels: int, grow: bool) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    change = cv2.dilate if grow else cv2.erode
    return change(mask.astype(np.uint8), kernel) > 0


def _downscale(image: np.ndarray, side: int = 128) -> np.ndarray:
    scale = side / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def check_all(
    checker, families: dict[str, list[FamilyPair]], seed: int, variants: tuple[str, ...] = VARIANTS
) -> list[dict]:
    """One record per (family, variant, pair): truth, defect, metrics (None for an error)."""
    records = []
    for name, pairs in families.items():
        for variant in variants:
            v = VARIANTS.index(variant)
            originals, generated, masks = variant_inputs(pairs, variant, seed + v)
            start = time.perf_counter()
            reports = checker.check(originals, generated, masks=masks, errors="report")
            seconds = (time.perf_counter() - start) / max(len(pairs), 1)
            for pair, report in zip(pairs, reports):
                records.append(
                    {
                        "family": name,
                        "variant": variant,
                        "original_id": pair.original_id,
                        "defect": pair.defect,
                        "consistent": pair.consistent,
                        "metrics": None if report.error else report.metrics,
                        "error": report.error,
                        "primary": report.primary_reason,
                        "seconds": seconds,
                    }
                )
    return records


def table(records: list[dict], thresholds, fitted_family: str | None, title: str) -> str:
    lines = [
        title,
        f"{'family':9s} {'variant':16s} {'F1':>6s} {'rej.':>6s} {'err':>4s} "
        + " ".join(f"{kind[:8]:>8s}" for kind in DEFECTS)
        + f" {'reason':>7s}   ms/pair",
    ]
    groups = defaultdict(list)
    for record in records:
        groups[(record["family"], record["variant"])].append(record)
    for (family, variant), group in groups.items():
        # an unjudged pair counts as rejected: the judge failed to pass it
        outcomes = [None if r["metrics"] is None else verdict(r["metrics"], thresholds) for r in group]
        predicted = [outcome is not None and outcome.consistent for outcome in outcomes]
        m = detection_metrics([r["consistent"] for r in group], predicted)
        caught = []
        for kind in DEFECTS:
            hits = [not p for p, r in zip(predicted, group) if r["defect"] == kind]
            caught.append(f"{np.mean(hits):8.0%}" if hits else f"{'-':>8s}")
        # of the caught pairs whose defect the judge has a kind for, the share whose primary reason names it
        named = [
            outcome.failed_checks[0] == r["defect"]
            for outcome, r in zip(outcomes, group)
            if outcome is not None and not outcome.consistent and r["defect"] in FAILURE_PRECEDENCE
        ]
        reason = f"{np.mean(named):7.0%}" if named else f"{'-':>7s}"
        unjudged = sum(r["metrics"] is None for r in group)
        mark = " (fitted)" if family == fitted_family else ""
        lines.append(
            f"{family:9s} {variant:16s} {m['f1']:6.3f} {m['false_rejection']:6.1%} "
            f"{unjudged:4d} " + " ".join(caught) + f" {reason}   {1000 * group[0]['seconds']:.1f}{mark}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=120, help="pairs per family")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--families",
        nargs="+",
        default=["sample", "heldout", "cutouts", "drawn", "lit", "packshot", "inpaint"],
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--fit-family", default="cutouts", help="the one family thresholds are fitted on")
    parser.add_argument(
        "--max-rejection", type=float, default=0.02, help="fit: most recall with at most this share rejected"
    )
    parser.add_argument("overrides", nargs="*", help="consistency config overrides (section.field=value)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from hfpc_reward.config import load_config

    config = load_config(ConsistencyConfig, None, args.overrides)
    checker = ProductConsistencyChecker.from_config(config)
    with tempfile.TemporaryDirectory() as folder:
        families = {name: family_pairs(name, args.pairs, args.seed, Path(folder)) for name in args.families}
    records = check_all(checker, families, args.seed, tuple(args.variants))
    print(table(records, config.thresholds, None, "default thresholds (share caught per defect kind)"))
    fit_rows = [r for r in records if r["family"] == args.fit_family and r["metrics"] is not None]
    if fit_rows:
        fitted = fit_thresholds(
            [r["metrics"] for r in fit_rows],
            [r["consistent"] for r in fit_rows],
            config.thresholds,
            max_rejection=args.max_rejection,
        )
        print()
        print(table(records, fitted, args.fit_family, f"thresholds fitted on {args.fit_family}"))
        changed = {k: v for k, v in vars(fitted).items() if getattr(config.thresholds, k) != v}
        print(f"fitted thresholds (changed): {changed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
