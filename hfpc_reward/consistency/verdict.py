"""The verdict of a pair: failure kinds, their precedence, ConsistencyReport, and thresholds -> Verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hfpc_reward.consistency.config import ThresholdConfig

# Machine-readable kinds of failure (ConsistencyReport.failed_checks / primary_reason); group by these.
DISTORTED = "distorted"  # the generated image's aspect ratio differs: the product would be stretched
MOVED = "moved"  # the product is not where it was
TRUNCATED = "truncated"  # part of the product is missing
EXPANDED = "expanded"  # the product grew into the background (object expansion)
BLED = "bled"  # the outline melted: product and background colours smeared across it
RESHAPED = "reshaped"  # the outline changed shape (mask IoU / boundary) without a clearer cause
RELABELLED = "relabelled"  # label, print or texture changed (structure)
RECOLOURED = "recoloured"  # the product's colour changed
APPEARANCE = "appearance"  # a local part of the product changed
ERROR = "error"  # the pair could not be checked (consistent is None)


# Order of precedence for the primary reason, and the kinds a primary failure explains (its consequences:
# a moved product also fails every pixel comparison, a truncated one loses appearance where it is missing).
# A centroid shift is not MOVED when the product only lost area or only gained area: the shift is then the
# consequence of that truncation or expansion.
FAILURE_PRECEDENCE = (
    DISTORTED,
    MOVED,
    TRUNCATED,
    EXPANDED,
    BLED,
    RESHAPED,
    RECOLOURED,
    RELABELLED,
    APPEARANCE,
)


EXPLAINS: dict[str, frozenset[str]] = {
    DISTORTED: frozenset(FAILURE_PRECEDENCE),
    MOVED: frozenset(FAILURE_PRECEDENCE),
    TRUNCATED: frozenset({RESHAPED, BLED, RELABELLED, RECOLOURED, APPEARANCE}),
    EXPANDED: frozenset({RESHAPED, BLED}),
    BLED: frozenset({RESHAPED, APPEARANCE}),
    RESHAPED: frozenset(),
    RELABELLED: frozenset({APPEARANCE, RECOLOURED}),  # only when it comes first (see `verdict`)
    RECOLOURED: frozenset({APPEARANCE, RELABELLED}),
    APPEARANCE: frozenset(),
}


# an outline melts at the edge: its edge zone changed more than EDGE_CONCENTRATION times the share of the
# whole product that changed; a change spread wider (recolour, new print) only reaches the edge zone too
EDGE_CONCENTRATION = 2.0
# a product cut off changes where it is missing; one whose colour or print changed over more than
# LOSS_SIDE_EFFECT times the area the masks call lost was changed, not cut (the loss is a side effect)
LOSS_SIDE_EFFECT = 4.0

# (kind, the only metric it failed on, test on the metrics): a kind that is then a side effect of the
# product's colour or print changing (RECOLOURED or RELABELLED failed), not a failure of its own
_SIDE_EFFECTS = (
    # the edge zone changed with the whole product (an outline that melted changes mostly at the edge)
    (BLED, "edge_changed", lambda m: m["changed_area"] * EDGE_CONCENTRATION >= m["edge_changed"]),
    # some of the new colour or print looks like background (a cut-off product changes where it is missing)
    (TRUNCATED, "lost_area", lambda m: m["lost_area"] * LOSS_SIDE_EFFECT <= m["changed_area"]),
)

# (metric, threshold field, "max" = upper bound | "min" = lower bound, failure kind, reason format)
CHECKS: tuple[tuple[str, str, str, str, str], ...] = (
    ("expansion", "max_expansion", "max", EXPANDED, "expanded {:.0%}"),
    ("lost_area", "max_lost_area", "max", TRUNCATED, "truncated ({:.0%} of the product missing)"),
    ("iou", "min_iou", "min", RESHAPED, "product mask changed (IoU {:.2f})"),
    ("centroid_shift", "max_centroid_shift", "max", MOVED, "moved ({:.0%} of its size)"),
    ("boundary_f", "min_boundary_f", "min", RESHAPED, "outline changed (boundary F {:.2f})"),
    ("delta_e", "max_delta_e", "max", RECOLOURED, "recoloured (ΔE {:.1f})"),
    ("ssim", "min_ssim", "min", RELABELLED, "label or texture changed (SSIM {:.2f})"),
    ("changed_area", "max_changed_area", "max", APPEARANCE, "appearance changed on {:.0%} of the product"),
    ("edge_changed", "max_edge_changed", "max", BLED, "outline melted or changed ({:.0%} of its edge zone)"),
    ("bleed", "max_bleed", "max", BLED, "outline bled into the background ({:.0%} of the ring around it)"),
    ("reach", "max_reach", "max", EXPANDED, "grew {:.0%} of its size beyond its outline"),
    ("halo", "max_halo", "max", BLED, "product colour glows or smears past its outline (halo {:.2f})"),
    (
        "aspect_mismatch",
        "max_aspect_mismatch",
        "max",
        DISTORTED,
        "aspect ratio differs from the original's (log ratio {:.2f})",
    ),
)


@dataclass
class ConsistencyReport:
    """The verdict on one (original, generated) pair."""

    consistent: bool | None  # the product was kept (every check passed); None when it could not be checked
    score: float  # in [0, 1]; >= 0.5 exactly when consistent (see consistency.checker)
    metrics: dict[str, float]  # the metrics of metrics.py and appearance.py (empty when `error` is set)
    reasons: list[str]  # human-readable: the failed checks not explained by the primary one, then notes
    error: str | None = None  # set when this item could not be checked (errors="report")
    failed_checks: list[str] = field(default_factory=list)  # failure kinds (module constants), primary first
    primary_reason: str | None = None  # the kind that explains the verdict (None when consistent)

    def to_record(self) -> dict[str, Any]:
        """The fields written into a results row (manifest mode)."""
        return {
            "consistent": self.consistent,
            "consistency_score": self.score,
            "metrics": self.metrics,
            "reasons": self.reasons,
            "failed_checks": self.failed_checks,
            "primary_reason": self.primary_reason,
            "error": self.error,
        }


@dataclass
class PairDetails:
    """Arrays behind a report, at the analysis size (used to draw overlays)."""

    original: np.ndarray  # (H,W,3) uint8
    generated: np.ndarray  # (H,W,3) uint8, aligned to the original
    original_mask: np.ndarray  # (H,W) bool
    generated_mask: np.ndarray  # (H,W) bool
    drift: np.ndarray  # (H,W) float32 Lab difference inside the original product
    glow: np.ndarray  # (H,W) bool pixels just outside the outline that took on product colour (halo)


def error_report(message: str) -> ConsistencyReport:
    return ConsistencyReport(
        consistent=None,
        score=0.0,
        metrics={},
        reasons=[f"error: {message}"],
        error=message,
        failed_checks=[ERROR],
        primary_reason=ERROR,
    )


@dataclass
class Verdict:
    """The outcome of the thresholds on one metrics dict."""

    consistent: bool
    score: float  # 0.5 ** (worst badness): >= 0.5 exactly when consistent
    failed_checks: list[str]  # kinds that failed and are not explained by an earlier one, primary first
    reasons: list[str]  # one human-readable line per failed metric of those kinds


def verdict(metrics: dict[str, float], thresholds: ThresholdConfig) -> Verdict:
    """The verdict of a metrics dict under `thresholds` (scoring: the consistency.checker docstring).

    Failed kinds are ordered by FAILURE_PRECEDENCE; a kind explained by an earlier failed kind (EXPLAINS) is
    dropped, so a moved product reports "moved" only, not also the colour drift its shift causes (it is moved
    when its centroid shifted, or when it is found intact elsewhere, `moved_by`). When the
    colours and the structure both changed, the pair is recoloured if a colour map explains the change
    (`mapped_delta_e` within `max_delta_e`), else relabelled; and an edge zone that changed with them (nothing
    crossed the outline: neither bleed nor halo failed; the change not concentrated at the edge,
    EDGE_CONCENTRATION) is their consequence, not a melted outline; so is a small loss of area when the
    product changed over far more of it (LOSS_SIDE_EFFECT).
    """
    worst = 0.0
    failed: dict[str, dict[str, str]] = {}  # failure kind -> {failed metric: reason line}
    for name, field_name, kind, failure, reason in CHECKS:
        limit = getattr(thresholds, field_name)
        value = metrics[name]
        badness = value / limit if kind == "max" else (1.0 - value) / (1.0 - limit)
        worst = max(worst, badness)
        if badness > 1.0:
            failed.setdefault(failure, {})[name] = reason.format(value)
    move = metrics.get("moved_by", 0.0)  # 0 in results written before it existed
    if failed and move > thresholds.max_centroid_shift:  # found intact elsewhere: it moved
        failed.setdefault(MOVED, {"moved_by": f"moved ({move:.0%} of its size)"})
    elif MOVED in failed and (TRUNCATED in failed) != (EXPANDED in failed):
        del failed[MOVED]  # the shift of a product that only lost (or only gained) area
    if RECOLOURED in failed or RELABELLED in failed:
        for kind, only_metric, side_effect in _SIDE_EFFECTS:
            if set(failed.get(kind, ())) == {only_metric} and side_effect(metrics):
                del failed[kind]
    precedence = list(FAILURE_PRECEDENCE)
    # results written before mapped_delta_e existed keep the colour-first order
    if metrics.get("mapped_delta_e", 0.0) > thresholds.max_delta_e:  # no colour map explains the change
        first, second = precedence.index(RECOLOURED), precedence.index(RELABELLED)
        precedence[first], precedence[second] = RELABELLED, RECOLOURED
    explained: set[str] = set()
    kinds = []
    for failure in precedence:
        if failure in failed and failure not in explained:
            kinds.append(failure)
            explained |= EXPLAINS[failure]
    reasons = [line for failure in kinds for line in failed[failure].values()]
    return Verdict(worst <= 1.0, float(0.5**worst), kinds, reasons)
