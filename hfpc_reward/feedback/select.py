"""Which scored generations to show annotators next (`hfpc feedback select`).

The pool is the output of `hfpc score` (one record per pair: `background_score`, `consistent`, ...), read
as a manifest. Strategies:
- `uncertainty+disagreement`: a pair's priority is its judges' disagreement (1 when the reward model's
  verdict `background_score >= threshold`, the consistency judge's `consistent` and, when the pool carries
  it, the zero-shot ITM verdict `itm_score >= 0.5` are not all the same, else 0) plus its uncertainty
  `1 / (1 + |background_score - threshold|)` (scores are standardised, so the margin is in training-set
  standard deviations). Picks go round-robin over groups (the original's cluster from `hfpc data clusters`,
  else the row's category), best priority first within each group.
- `random`: a seeded uniform draw, for comparison.
Both cap the picks per original, skip pairs already labelled, and give every pick its `why`. Ties break on
a seeded random key: same pool, same settings, same picks.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hfpc_reward.data.manifest import ManifestRow
from hfpc_reward.errors import UsageError

logger = logging.getLogger(__name__)

STRATEGIES = ("uncertainty+disagreement", "random")
ITM_FIELDS = ("itm_score", "BLIP ITM (zero-shot)")  # where a pool may carry the zero-shot ITM probability
ITM_THRESHOLD = 0.5  # ITM says "matches" at probability >= 0.5
PICK_FIELDS = ("origin", "generation", "mask", "prompt", "category", "product_id")  # copied into a pick


class SelectionError(UsageError):
    """The pool or the selection settings cannot give picks; the message says what to change."""


@dataclass(frozen=True)
class Candidate:
    """One scored pair of the pool, with what the judges said about it."""

    row: ManifestRow
    reward_passes: bool  # background_score >= threshold
    margin: float  # background_score - threshold (standardised units)
    consistent: bool | None  # the consistency judge's verdict (None: not judged)
    itm_passes: bool | None  # zero-shot ITM verdict (None: the pool has no ITM score)
    group: str  # cluster or category the pick is spread over

    @property
    def uncertainty(self) -> float:
        return 1.0 / (1.0 + abs(self.margin))

    @property
    def disagreement(self) -> float:
        verdicts = {v for v in (self.reward_passes, self.consistent, self.itm_passes) if v is not None}
        return float(len(verdicts) > 1)


def pair_id(origin: str, generation: str) -> str:
    """A stable id of an (original, generation) pair: the same pair always gets the same id."""
    return hashlib.sha256(f"{origin}\n{generation}".encode()).hexdigest()[:16]


def candidates(
    rows: Iterable[ManifestRow],
    threshold: float,
    clusters: Mapping[str, int] | None = None,
    exclude: Iterable[str] = (),
) -> tuple[list[Candidate], dict[str, int]]:
    """The pool's selectable pairs and counts of the rows left out, by reason."""
    excluded = set(exclude)
    skipped = {"error": 0, "unscored": 0, "already labelled": 0, "duplicate": 0}
    found, seen = [], set()
    for row in rows:
        extra = row.extra
        if extra.get("error") or row.generation is None:
            skipped["error"] += 1
        elif extra.get("background_score") is None:
            skipped["unscored"] += 1
        elif (pair := pair_id(row.origin, row.generation)) in excluded:
            skipped["already labelled"] += 1
        elif pair in seen:  # a pool of concatenated score files
            skipped["duplicate"] += 1
        else:
            seen.add(pair)
            score = float(extra["background_score"])
            itm = next((extra[name] for name in ITM_FIELDS if extra.get(name) is not None), None)
            group = f"cluster {clusters[row.origin]}" if clusters and row.origin in clusters else None
            found.append(
                Candidate(
                    row=row,
                    reward_passes=score >= threshold,
                    margin=score - threshold,
                    consistent=extra.get("consistent"),
                    itm_passes=None if itm is None else float(itm) >= ITM_THRESHOLD,
                    group=group or row.category or "all",
                )
            )
    return found, skipped


def select(
    pool: Sequence[Candidate], n: int, strategy: str, seed: int = 0, per_original: int = 2
) -> list[dict]:
    """`n` picks (fewer when the pool runs out) as JSON-ready records, in pick order."""
    if strategy not in STRATEGIES:
        raise SelectionError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if n < 1 or per_original < 1:
        raise SelectionError(f"--n and --per-original must be >= 1, got {n} and {per_original}")
    tie_break = np.random.default_rng(seed).random(len(pool))
    if strategy == "random":
        ordered = [[pool[i] for i in np.argsort(tie_break)]]
    else:
        priority = np.array([c.disagreement + c.uncertainty for c in pool])
        order = np.lexsort((tie_break, -priority))  # best priority first, seeded ties
        by_group: dict[str, list[Candidate]] = {}
        for i in order:
            by_group.setdefault(pool[i].group, []).append(pool[i])
        ordered = list(by_group.values())  # groups in order of their best candidate
    picks: list[dict] = []
    per_origin: dict[str, int] = {}
    positions = [0] * len(ordered)
    while len(picks) < n and any(p < len(g) for p, g in zip(positions, ordered)):
        for k, group in enumerate(ordered):  # one pick per group per round: spread over groups
            while (
                positions[k] < len(group)
                and per_origin.get(group[positions[k]].row.origin, 0) >= per_original
            ):
                positions[k] += 1
            if positions[k] < len(group) and len(picks) < n:
                chosen = group[positions[k]]
                positions[k] += 1
                per_origin[chosen.row.origin] = per_origin.get(chosen.row.origin, 0) + 1
                picks.append(_pick_record(chosen, strategy, len(picks), seed))
    return picks


def _pick_record(candidate: Candidate, strategy: str, rank: int, seed: int) -> dict:
    row = candidate.row
    record = {name: getattr(row, name) for name in PICK_FIELDS if getattr(row, name) is not None}
    record.update(
        {
            "pair_id": pair_id(row.origin, row.generation),
            "strategy": strategy,
            "rank": rank,
            "group": candidate.group,
            "why": why(candidate) if strategy != "random" else f"random draw (seed {seed})",
            "background_score": row.extra.get("background_score"),
            "consistent": candidate.consistent,
            "uncertainty": round(candidate.uncertainty, 4),
            "disagreement": candidate.disagreement,
        }
    )
    if row.extra.get("reasons"):
        record["judge_reasons"] = row.extra["reasons"]
    return record


def why(candidate: Candidate) -> str:
    """One line for people: how close the reward model is to its threshold and what each judge said."""
    verdict = "pass" if candidate.reward_passes else "fail"
    margin = f"{candidate.margin:+.2f} std from its threshold (uncertainty {candidate.uncertainty:.2f})"
    parts = [f"reward model {verdict} at {margin}"]
    if candidate.consistent is not None:
        parts.append(f"consistency {'pass' if candidate.consistent else 'fail'}")
    if candidate.itm_passes is not None:
        parts.append(f"zero-shot ITM {'pass' if candidate.itm_passes else 'fail'}")
    judges = "judges disagree" if candidate.disagreement else "judges agree"
    return f"{judges}: " + ", ".join(parts) + f"; spread over {candidate.group}"
