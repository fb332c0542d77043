"""How much annotators agree: Krippendorff's alpha (nominal) on pass/fail and on each reason, Cohen's kappa.

Krippendorff's alpha (the `krippendorff` package) takes any number of annotators and pairs labelled by
only some of them; a reason's alpha compares "ticked / not ticked" across the annotators of each pair
(a pass vote ticks none). Cohen's kappa (scikit-learn) is given for every two annotators who share at
least two pairs. Only each annotator's latest vote per pair counts. None (null in JSON) where a figure is
undefined (fewer than two annotators on any pair, or a single value everywhere).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np

from hfpc_reward.feedback.export import latest_votes
from hfpc_reward.feedback.labelstudio import REASONS


def agreement(labels: Iterable[dict]) -> dict:
    """Agreement figures of label rows (as in labels.jsonl)."""
    votes = latest_votes(labels)
    annotators = sorted({name for by in votes.values() for name in by})
    shared = [by for by in votes.values() if len(by) >= 2]
    result = {
        "pairs": len(votes),
        "pairs_with_several_annotators": len(shared),
        "annotators": annotators,
        "percent_agreement": (
            float(np.mean([len({row["label"] for row in by.values()}) == 1 for by in shared]))
            if shared
            else None
        ),
        "krippendorff_alpha": _alpha(votes, annotators, lambda row: row["label"]),
        "krippendorff_alpha_per_reason": {
            reason: _alpha(votes, annotators, lambda row, r=reason: int(r in row["reasons"]))
            for reason in REASONS
        },
        "cohen_kappa": {},
    }
    for first, second in itertools.combinations(annotators, 2):
        both = [
            (by[first]["label"], by[second]["label"]) for by in votes.values() if first in by and second in by
        ]
        if len(both) >= 2:
            result["cohen_kappa"][f"{first} vs {second}"] = _kappa(*zip(*both))
    return result


def _alpha(votes: dict[str, dict[str, dict]], annotators: list[str], value) -> float | None:
    import krippendorff

    matrix = np.full((len(annotators), len(votes)), np.nan)
    for column, by in enumerate(votes.values()):
        for name, row in by.items():
            matrix[annotators.index(name), column] = value(row)
    pairable = matrix[:, np.isfinite(matrix).sum(axis=0) >= 2]  # alpha counts only pairs rated twice or more
    if not pairable.size or len(np.unique(pairable[np.isfinite(pairable)])) < 2:
        return None  # alpha is undefined without two ratings of a pair or with one value among them
    return float(krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal"))


def _kappa(first: tuple, second: tuple) -> float | None:
    from sklearn.metrics import cohen_kappa_score

    if len(set(first) | set(second)) < 2:
        return None
    return float(cohen_kappa_score(first, second))
