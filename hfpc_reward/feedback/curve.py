"""Labels spent well, measured (`hfpc feedback curve`): judge accuracy vs labels, active vs random selection.

Per seed, an independent sample world (`generate_pairs`: a pool to label and a held-out test set, each
with ground truth) is judged once by the classic consistency checker; its metrics (IoU, expansion, colour
difference, SSIM, ...) are the pairs' cached features. A simulated annotator labels a pick with the ground
truth, flipped with probability `--noise`. The learner is a head-only judge on those cached features
(scikit-learn logistic regression, standardised features): it stands in for the reward model's head
because the only reward model that loads offline, the tiny random BLIP, gives near-chance features on
these pairs. Both strategies start from the same random `--initial` labels; each round the judge is
refitted, scores the pool (its logit is the `background_score`, threshold 0) and `select` picks the next
`--step` pairs with the same code as `hfpc feedback select`, the consistency verdict as the second judge.
Accuracy is measured on the test set after every round; intervals are 95% t-intervals over seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from hfpc_reward.data.manifest import ManifestRow, read_manifest

logger = logging.getLogger(__name__)

ACTIVE, RANDOM = "uncertainty+disagreement", "random"
TARGET_SHARE = 0.6  # the target: active reaches random's final accuracy with <= 60% of its labels


def add_curve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="folder for the worlds, curve.json and curve.png")
    parser.add_argument(
        "--seeds", type=int, default=5, help="independent worlds (each its own pool and test)"
    )
    parser.add_argument("--pool", type=int, default=480, help="unlabelled pairs per world")
    parser.add_argument("--test", type=int, default=240, help="held-out test pairs per world")
    parser.add_argument("--size", type=int, default=64, help="image side of the sample pairs")
    parser.add_argument("--initial", type=int, default=8, help="random labels both strategies start from")
    parser.add_argument("--step", type=int, default=8, help="labels added per round")
    parser.add_argument("--budget", type=int, default=160, help="labels at the end")
    parser.add_argument("--noise", type=float, default=0.1, help="probability the simulated annotator errs")
    parser.add_argument("--plot", type=Path, help="also write the plot here (e.g. docs/feedback_curve.png)")


def run_curve(args: argparse.Namespace) -> int:
    from hfpc_reward.errors import UsageError

    if not (0 < args.initial <= args.budget <= args.pool and args.step >= 1 and 0 <= args.noise < 0.5):
        raise UsageError("need 0 < --initial <= --budget <= --pool, --step >= 1 and 0 <= --noise < 0.5")
    runs = []
    for seed in range(args.seeds):
        folder = args.out / f"world-{seed}-pool{args.pool}-test{args.test}-{args.size}px"  # reused when rerun
        world = sample_world(folder, seed, args.pool, args.test, args.size)
        for strategy in (ACTIVE, RANDOM):
            runs.append({"seed": seed, "strategy": strategy, **learning_run(world, strategy, seed, args)})
            logger.info(
                "seed %d %s: accuracy %s", seed, strategy, [round(a, 3) for a in runs[-1]["accuracy"]]
            )
    report = summarise(runs, vars(args))
    (args.out / "curve.json").write_text(json.dumps(report, indent=1, default=str))
    for path in [args.out / "curve.png", *([args.plot] if args.plot else [])]:
        plot_curve(report, path)
    logger.info(
        "random reaches %.3f with %d labels; active reaches it with %s labels (%s of random's); "
        "target <= %d%%",
        report["random_final_accuracy"],
        args.budget,
        report["active_labels_to_match"],
        report["active_share_of_labels"],
        round(100 * TARGET_SHARE),
    )
    return 0


def sample_world(folder: Path, seed: int, n_pool: int, n_test: int, size: int) -> dict:
    """Pool and test pairs with consistency metrics as features (cached in folder/features.npz)."""
    from hfpc_reward.sample.pairs import generate_pairs

    cache = folder / "features.npz"
    pool = _rows(folder / "pool", n_pool, 2 * seed, size, generate_pairs)
    test = _rows(folder / "test", n_test, 2 * seed + 1, size, generate_pairs)
    if cache.is_file():
        stored = np.load(cache)
        features, verdicts = stored["features"], stored["verdicts"]
    else:
        features, verdicts = consistency_features(pool + test)
        np.savez(cache, features=features, verdicts=verdicts)
    return {
        "pool": pool,
        "test_labels": np.array([row.label for row in test]),
        "pool_features": features[:n_pool],
        "test_features": features[n_pool:],
        "pool_verdicts": verdicts[:n_pool],
    }


def _rows(folder: Path, n: int, seed: int, size: int, generate) -> list[ManifestRow]:
    manifest = folder / "manifest.jsonl"
    if not manifest.is_file():
        generate(folder, n_pairs=n, seed=1000 + seed, size=size)
    return read_manifest(manifest)


def consistency_features(rows: list[ManifestRow]) -> tuple[np.ndarray, np.ndarray]:
    """Classic-checker metrics of each pair (n, metrics; NaN -> 0) and its `consistent` verdict (n,)."""
    from hfpc_reward.consistency.checker import ProductConsistencyChecker
    from hfpc_reward.consistency.config import ConsistencyConfig

    checker = ProductConsistencyChecker.from_config(ConsistencyConfig())
    reports = checker.check(
        [r.origin for r in rows], [r.generation for r in rows], masks=[r.mask for r in rows]
    )
    names = sorted({name for report in reports for name in report.metrics})
    features = np.array([[report.metrics.get(name, np.nan) for name in names] for report in reports])
    return np.nan_to_num(features, nan=0.0), np.array([bool(report.consistent) for report in reports])


def learning_run(world: dict, strategy: str, seed: int, args: argparse.Namespace) -> dict:
    """Test accuracy after each round of labelling `args.step` picks, from `args.initial` to `args.budget`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from hfpc_reward.feedback.select import candidates, pair_id, select

    pool, x_pool = world["pool"], world["pool_features"]
    scaler = StandardScaler().fit(x_pool)  # unlabelled pool statistics only
    x_pool, x_test = scaler.transform(x_pool), scaler.transform(world["test_features"])
    rng = np.random.default_rng([seed, 17])
    truth = np.array([row.label for row in pool])
    annotated = np.where(rng.random(len(pool)) < args.noise, 1 - truth, truth)  # the simulated annotator
    labelled = [int(i) for i in rng.permutation(len(pool))[: args.initial]]  # same start for both strategies
    index = {pair_id(row.origin, row.generation): i for i, row in enumerate(pool)}
    counts, accuracy = [], []
    for round_no in range(1 + int(np.ceil((args.budget - args.initial) / args.step))):
        y = annotated[labelled]
        if len(set(y)) > 1:
            judge = LogisticRegression(max_iter=2000).fit(x_pool[labelled], y)
            scores, predicted = judge.decision_function(x_pool), judge.predict(x_test)
        else:  # one class so far: predict it, no score information
            scores, predicted = np.zeros(len(pool)), np.full(len(x_test), y[0])
        counts.append(len(labelled))
        accuracy.append(float((predicted == world["test_labels"]).mean()))
        if len(labelled) >= args.budget:
            break
        for row, score, consistent in zip(pool, scores, world["pool_verdicts"]):
            row.extra.update(background_score=float(score), consistent=bool(consistent))
        taken = {pair_id(pool[i].origin, pool[i].generation) for i in labelled}
        choice, _ = candidates(pool, 0.0, exclude=taken)
        step = min(args.step, args.budget - len(labelled))
        labelled += [index[p["pair_id"]] for p in select(choice, step, strategy, seed=seed * 1000 + round_no)]
    return {"labels": counts, "accuracy": accuracy}


def summarise(runs: list[dict], settings: dict) -> dict:
    """Mean accuracy per label count and strategy with 95% t-intervals over seeds, and the target check."""
    from scipy import stats

    curves = {}
    for strategy in (ACTIVE, RANDOM):
        matrix = np.array([run["accuracy"] for run in runs if run["strategy"] == strategy])
        mean = matrix.mean(axis=0)
        half = stats.t.ppf(0.975, len(matrix) - 1) * matrix.std(axis=0, ddof=1) / np.sqrt(len(matrix))
        half = np.nan_to_num(half)
        curves[strategy] = {
            "mean": mean.tolist(),
            "low": (mean - half).tolist(),
            "high": (mean + half).tolist(),
        }
    labels = runs[0]["labels"]
    final = curves[RANDOM]["mean"][-1]
    reached = [n for n, acc in zip(labels, curves[ACTIVE]["mean"]) if acc >= final]
    per_seed = []  # per world: labels active needs to reach that world's random final accuracy (None: never)
    for active, random in zip(runs[::2], runs[1::2]):
        hits = [n for n, acc in zip(labels, active["accuracy"]) if acc >= random["accuracy"][-1]]
        per_seed.append(hits[0] if hits else None)
    return {
        "settings": settings,
        "labels": labels,
        "curves": curves,
        "runs": runs,
        "random_final_accuracy": final,
        "active_labels_to_match": reached[0] if reached else None,
        "active_share_of_labels": round(reached[0] / labels[-1], 3) if reached else None,
        "target_met": bool(reached) and reached[0] <= TARGET_SHARE * labels[-1],
        "active_labels_to_match_per_seed": per_seed,
        "seeds_meeting_target": sum(n is not None and n <= TARGET_SHARE * labels[-1] for n in per_seed),
    }


def plot_curve(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for strategy, colour in ((ACTIVE, "tab:blue"), (RANDOM, "tab:grey")):
        curve = report["curves"][strategy]
        ax.plot(report["labels"], curve["mean"], color=colour, label=strategy, marker=".")
        ax.fill_between(report["labels"], curve["low"], curve["high"], color=colour, alpha=0.2)
    ax.axhline(report["random_final_accuracy"], color="black", linestyle=":", label="random's final accuracy")
    ax.axvline(
        TARGET_SHARE * report["labels"][-1], color="tab:red", linestyle="--", label="60% of the labels"
    )
    seeds = report["settings"]["seeds"]
    ax.set_xlabel("labels")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"Judge accuracy vs labels ({seeds} seeds, 95% intervals)")
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
