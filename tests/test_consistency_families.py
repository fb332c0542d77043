"""The held-out validation family "drawn": deterministic pairs with the ground truth a report relies on."""

import numpy as np

from hfpc_reward.sample.families.base import DEFECTS
from hfpc_reward.sample.families.drawn import defect, drawn_pairs, new_product


def test_drawn_pairs_are_reproducible_with_every_defect_kind_and_exact_masks():
    pairs = drawn_pairs(n_pairs=18, seed=2, sides=(96, 128))
    again = drawn_pairs(n_pairs=18, seed=2, sides=(96, 128))
    assert [p.defect for p in pairs] == [p.defect for p in again]
    assert all(np.array_equal(a.generated, b.generated) for a, b in zip(pairs, again))
    assert {p.defect for p in pairs} == set(DEFECTS) | {"none"}
    for pair in pairs:
        assert pair.original.shape == pair.generated.shape == (*pair.mask.shape, 3)
        assert 0.02 < pair.mask.mean() < 0.6
    # pairs of one original share it (the split for fitting is by original)
    assert len({p.original_id for p in pairs}) == 6


def test_drawn_defects_change_the_product_layer_the_way_their_names_say():
    rng = np.random.default_rng(0)
    colour, alpha, recipe = new_product(rng, 256)
    area = (alpha > 0.5).sum()
    _, grown = defect("expanded", np.random.default_rng(1), colour, alpha, recipe)
    _, bitten = defect("truncated", np.random.default_rng(1), colour, alpha, recipe)
    _, bled = defect("bled", np.random.default_rng(1), colour, alpha, recipe)
    assert (grown > 0.5).sum() > 1.03 * area
    assert (bitten > 0.5).sum() < 0.95 * area
    assert (bled > 0.2).sum() > (alpha > 0.2).sum()
