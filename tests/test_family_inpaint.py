"""The "inpaint" family: shapes, determinism, defect plan, shared originals, masks, realism bounds."""

import numpy as np
import pytest

from hfpc_reward.sample.families.base import DEFECTS
from hfpc_reward.sample.families.inpaint import inpaint_pairs

NONE_MEAN_MAD = 10.0  # mean |original - generated| deep inside consistent products (seen 4.2-6.4, 6 seeds)
NONE_MAX_MAD = 35.0  # the same for any one consistent pair (seen up to 22: latent x8, no paste-back)
MOVED_MIN_MAD = 20.0  # moved products differ more on average (seen 50-65)


@pytest.fixture(scope="module")
def pairs256():
    return inpaint_pairs(42, seed=3, sides=(256,))


def test_shapes_and_types(pairs256):
    assert len(pairs256) == 42
    for p in pairs256:
        assert p.family == "inpaint" and p.original_id.startswith("i")
        assert p.original.shape == p.generated.shape == (256, 256, 3)
        assert p.original.dtype == p.generated.dtype == np.uint8
        assert p.mask.shape == (256, 256) and p.mask.dtype == bool
        assert p.defect in (*DEFECTS, "none")
        assert any(h.startswith("latent_x") for h in p.harmless)
        assert all(isinstance(h, str) for h in p.harmless)


def test_deterministic_given_seed():
    a, b = inpaint_pairs(6, seed=1, sides=(160, 320)), inpaint_pairs(6, seed=1, sides=(160, 320))
    for p, q in zip(a, b, strict=True):
        assert (p.original_id, p.defect, p.harmless, p.studio_shadow) == (
            q.original_id,
            q.defect,
            q.harmless,
            q.studio_shadow,
        )
        assert np.array_equal(p.original, q.original) and np.array_equal(p.generated, q.generated)
        assert np.array_equal(p.mask, q.mask)
    c = inpaint_pairs(6, seed=2, sides=(160, 320))
    assert any(not np.array_equal(p.generated, q.generated) for p, q in zip(a, c))


def test_defect_plan(pairs256):
    kinds = [p.defect for p in pairs256]
    assert set(DEFECTS) <= set(kinds)
    assert sum(k != "none" for k in kinds) == 21
    assert all(p.defect == "none" for p in inpaint_pairs(4, seed=0, defect_fraction=0.0, sides=(96,)))


def test_originals_of_one_id_share_pixels(pairs256):
    groups: dict[str, list] = {}
    for p in pairs256:
        groups.setdefault(p.original_id, []).append(p)
    assert len(groups) == 14 and all(len(g) == 3 for g in groups.values())
    for g in groups.values():
        assert all(np.array_equal(p.original, g[0].original) and np.array_equal(p.mask, g[0].mask) for p in g)
    assert not np.array_equal(groups["i0000"][0].original, groups["i0001"][0].original)


def test_masks_non_empty_and_not_the_whole_image(pairs256):
    for p in pairs256:
        assert 0.0 < p.mask.mean() < 0.6


def test_consistent_products_kept_moved_ones_not(pairs256):
    none = [p.inner_difference() for p in pairs256 if p.defect == "none"]
    moved = [p.inner_difference() for p in pairs256 if p.defect == "moved"]
    assert np.mean(none) < NONE_MEAN_MAD and max(none) < NONE_MAX_MAD
    assert np.mean(moved) > max(MOVED_MIN_MAD, 2 * np.mean(none))


def test_sides_override_gives_small_images():
    pairs = inpaint_pairs(3, seed=0, sides=(96,))
    assert len(pairs) == 3 and all(p.generated.shape == (96, 96, 3) for p in pairs)
