"""The "lit" validation family: shapes, determinism, defect plan, shared originals, what a consistent pair keeps."""

import numpy as np
import pytest

from hfpc_reward.sample.families.base import DEFECTS
from hfpc_reward.sample.families.lit import lit_pairs

N = 21  # pairs per run: 7 originals of 3 generations
SIDES = (160, 200)  # small but not tiny: on 96 px a lossy re-encode alone can move a printed label ~14 levels


@pytest.fixture(scope="module")
def pairs():
    return lit_pairs(N, seed=3, defect_fraction=2 / 3, sides=SIDES)


def test_shapes_and_fields(pairs):
    assert len(pairs) == N
    for p in pairs:
        assert p.family == "lit" and p.original_id.startswith("l")
        assert p.original.dtype == p.generated.dtype == np.uint8
        assert p.original.shape == p.generated.shape == p.mask.shape + (3,)
        assert p.mask.dtype == bool and 0 < p.mask.mean() < 0.6
        assert p.defect in DEFECTS + ("none",) and p.consistent == (p.defect == "none")
        assert isinstance(p.harmless, list) and all(isinstance(h, str) for h in p.harmless)


def test_deterministic(pairs):
    again = lit_pairs(N, seed=3, defect_fraction=2 / 3, sides=SIDES)
    other = lit_pairs(3, seed=4, defect_fraction=2 / 3, sides=SIDES)
    for a, b in zip(again, pairs, strict=True):
        assert a.defect == b.defect and a.original_id == b.original_id
        assert np.array_equal(a.original, b.original) and np.array_equal(a.generated, b.generated)
        assert np.array_equal(a.mask, b.mask)
    assert not np.array_equal(other[0].original, pairs[0].original)


def test_defect_plan(pairs):
    kinds = [p.defect for p in pairs]
    assert set(kinds) == set(DEFECTS) | {"none"}
    assert sum(k != "none" for k in kinds) == round(N * 2 / 3)
    clean = lit_pairs(3, seed=0, defect_fraction=0.0, sides=(96,))
    assert all(p.consistent for p in clean)


def test_originals_shared(pairs):
    by_id = {}
    for p in pairs:
        by_id.setdefault(p.original_id, []).append(p)
    assert len(by_id) == N // 3 and all(len(v) == 3 for v in by_id.values())
    for group in by_id.values():
        for p in group[1:]:
            assert np.array_equal(p.original, group[0].original) and np.array_equal(p.mask, group[0].mask)
            assert p.studio_shadow == group[0].studio_shadow


def test_consistent_pairs_keep_the_product_and_moved_ones_do_not(pairs):
    none = [p.inner_difference() for p in pairs if p.defect == "none"]
    moved = [p.inner_difference() for p in pairs if p.defect == "moved"]
    assert none and moved
    assert max(none) < 12
    assert min(moved) > 3 and np.mean(moved) > np.mean(none)


def test_sides_override():
    pairs = lit_pairs(3, seed=1, sides=(96,))
    assert all(p.original.shape == (96, 96, 3) for p in pairs)
