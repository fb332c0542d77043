"""The "packshot" validation family: shapes, determinism, defect plan, shared originals, what "none" keeps."""

import numpy as np
import pytest

from hfpc_reward.sample.families.base import DEFECTS
from hfpc_reward.sample.families.packshot import packshot_pairs

N = 42  # pairs per run: 14 originals of 3 generations, 3 of each defect kind at defect_fraction 0.5
SIDES = (96, 144)  # small sides keep the run fast
NONE_BOUND = (
    22.0  # mean |diff| deep inside the mask of a consistent pair; 300 pairs at 256 px: p99 14, max 18
)


@pytest.fixture(scope="module")
def pairs():
    return packshot_pairs(N, seed=3, defect_fraction=0.5, sides=SIDES)


@pytest.fixture(scope="module")
def pairs256():
    return packshot_pairs(36, seed=1, defect_fraction=0.5, sides=(256,))


def test_shapes_and_fields(pairs):
    assert len(pairs) == N
    for p in pairs:
        assert p.family == "packshot" and p.original_id.startswith("k")
        assert p.original.dtype == p.generated.dtype == np.uint8
        assert p.original.shape == p.generated.shape == p.mask.shape + (3,)
        assert p.original.shape[0] == p.original.shape[1] and p.original.shape[0] in SIDES
        assert p.mask.dtype == bool and 0 < p.mask.mean() < 0.6
        assert p.defect in DEFECTS + ("none",) and p.consistent == (p.defect == "none")
        assert isinstance(p.studio_shadow, bool)
        assert isinstance(p.harmless, list) and all(isinstance(h, str) for h in p.harmless)


def test_deterministic(pairs):
    again = packshot_pairs(N, seed=3, defect_fraction=0.5, sides=SIDES)
    for a, b in zip(again, pairs, strict=True):
        assert a.defect == b.defect and a.original_id == b.original_id and a.harmless == b.harmless
        assert np.array_equal(a.original, b.original) and np.array_equal(a.generated, b.generated)
        assert np.array_equal(a.mask, b.mask)
    other = packshot_pairs(3, seed=4, sides=SIDES)
    assert not any(o.original.shape == p.original.shape and np.array_equal(o.original, p.original)
                   for o, p in zip(other, pairs[:3], strict=True))  # fmt: skip


def test_defect_plan(pairs):
    kinds = [p.defect for p in pairs]
    assert set(DEFECTS) <= set(kinds)
    assert sum(k != "none" for k in kinds) == round(N * 0.5)
    assert all(kinds.count(k) == 3 for k in DEFECTS)
    assert all(p.defect == "none" for p in packshot_pairs(6, seed=3, defect_fraction=0.0, sides=(96,)))


def test_originals_shared_per_id(pairs):
    by_id: dict[str, list] = {}
    for p in pairs:
        by_id.setdefault(p.original_id, []).append(p)
    assert len(by_id) == N // 3 and all(len(group) == 3 for group in by_id.values())
    for group in by_id.values():
        for p in group[1:]:
            assert np.array_equal(p.original, group[0].original) and np.array_equal(p.mask, group[0].mask)
            assert p.studio_shadow == group[0].studio_shadow


def test_consistent_pairs_keep_the_product_moved_ones_do_not(pairs256):
    none = [p.inner_difference() for p in pairs256 if p.defect == "none"]
    moved = [p.inner_difference() for p in pairs256 if p.defect == "moved"]
    assert len(none) >= 10 and len(moved) >= 2
    assert max(none) < NONE_BOUND, none
    assert min(moved) > float(np.median(none)) and np.mean(moved) > 2 * np.mean(none), (none, moved)


def test_sides_override():
    pairs = packshot_pairs(3, seed=0, sides=(96,))
    assert all(p.original.shape == (96, 96, 3) == p.generated.shape for p in pairs)
