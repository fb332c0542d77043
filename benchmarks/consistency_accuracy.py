"""Accuracy of the consistency checker on a labelled manifest (sample_data or the held-out generator).

    python benchmarks/consistency_accuracy.py MANIFEST [--config F] [--results R] [--workers N] [overrides ...]

Prints precision / recall / F1 of detecting inconsistent products, the share of consistent products
rejected, a per-defect-kind table (detection rate and median magnitude of missed ones) and, for consistent
pairs, the rejection rate per harmless change. Rows need ground truth `consistent` (or `label`); `defect`,
`defect_magnitude` and `harmless` fields are used when present.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from hfpc_reward.config import load_config
from hfpc_reward.consistency.calibrate import detection_metrics, ground_truth
from hfpc_reward.consistency.commands import check_manifest
from hfpc_reward.consistency.config import ConsistencyConfig
from hfpc_reward.data.manifest import read_manifest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--config", type=Path)
    parser.add_argument(
        "--results", type=Path, help="results JSONL (reused when it exists); default: a temp file"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    logging.basicConfig(level=logging.WARNING)
    config = load_config(ConsistencyConfig, args.config, args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        results = args.results or Path(tmp) / "results.jsonl"
        records = check_manifest(read_manifest(args.manifest), config, results, workers=args.workers)
    print(accuracy_report(records))


def accuracy_report(records: list[dict]) -> str:
    errors = [r for r in records if r.get("error")]
    rows = [r for r in records if not r.get("error") and ground_truth(r) is not None]
    m = detection_metrics([ground_truth(r) for r in rows], [r["consistent"] for r in rows])
    lines = [
        f"rows {len(records)}  labelled {len(rows)}  errors {len(errors)}",
        (
            f"detecting inconsistent products: precision {m['precision']:.3f}  recall {m['recall']:.3f}  "
            f"F1 {m['f1']:.3f}  consistent rejected {m['false_rejection']:.1%}"
        ),
        "",
        f"{'defect':18s} {'n':>5s} {'flagged':>8s} {'missed median magnitude':>24s}",
    ]
    by_defect = defaultdict(list)
    for r in rows:
        by_defect[r.get("defect", "inconsistent" if not ground_truth(r) else "none")].append(r)
    for defect, group in sorted(by_defect.items()):
        flagged = [not r["consistent"] for r in group]
        missed = [r.get("defect_magnitude", float("nan")) for r in group if r["consistent"]]
        median = f"{np.median(missed):.3f}" if missed and defect != "none" else "-"
        lines.append(f"{defect:18s} {len(group):5d} {np.mean(flagged):8.1%} {median:>24s}")
    harmless = defaultdict(list)
    for r in rows:
        if ground_truth(r):
            for change in r.get("harmless") or []:
                harmless[change.split("_q")[0]].append(not r["consistent"])
    if harmless:
        lines += ["", f"{'harmless change (consistent rows)':34s} {'n':>5s} {'rejected':>9s}"]
        for change, rejected in sorted(harmless.items()):
            lines.append(f"{change:34s} {len(rejected):5d} {np.mean(rejected):9.1%}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
