"""`hfpc calibrate-consistency` fits on some originals and reports on the others (split by original)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hfpc_reward.cli import main
from hfpc_reward.config import load_config
from hfpc_reward.consistency.calibrate import split_for_calibration
from hfpc_reward.consistency.config import ConsistencyConfig
from hfpc_reward.data.manifest import read_manifest
from hfpc_reward.sample.families.cutouts import cutout_pairs


def write_family_manifest(folder, n_pairs: int = 18, side: int = 96):
    rows = []
    for k, pair in enumerate(cutout_pairs(n_pairs, seed=3, sides=(side,))):
        names = {"origin": f"{pair.original_id}.png", "mask": f"{pair.original_id}_mask.png"}
        if not (folder / names["origin"]).exists():
            Image.fromarray(pair.original).save(folder / names["origin"])
            Image.fromarray(pair.mask.astype(np.uint8) * 255).save(folder / names["mask"])
        Image.fromarray(pair.generated).save(folder / f"g{k}.png")
        rows.append(
            {**names, "generation": f"g{k}.png", "consistent": pair.consistent, "defect": pair.defect}
        )
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_family_manifest(tmp_path_factory.mktemp("family"))


def test_the_split_keeps_each_original_on_one_side(manifest):
    rows = read_manifest(manifest)
    records = [{"origin": row.origin, "i": i} for i, row in enumerate(rows)]
    fit, held_out = split_for_calibration(rows, records, holdout=0.3, seed=0)
    assert len(fit) + len(held_out) == len(rows) and held_out
    assert not {r["origin"] for r in fit} & {r["origin"] for r in held_out}
    assert all(records[r["i"]] is r for r in fit + held_out)
    assert split_for_calibration(rows[:3], records[:3], 0.3, 0) == (records[:3], [])  # one original


def test_calibrate_reports_on_originals_it_did_not_fit(manifest, tmp_path, capsys):
    out = tmp_path / "fitted.yaml"
    assert (
        main(
            [
                "calibrate-consistency",
                "--manifest",
                str(manifest),
                "--out",
                str(out),
                "--max-rejection",
                "0.1",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "fitted on (chose the thresholds: not a result):" in printed
    held_out = printed.split("held out: ")[1]
    n_rows = int(held_out.split(" rows")[0])
    assert 0 < n_rows < 18 and f"(n={n_rows})" in held_out  # the reported metrics are on the held-out rows
    assert load_config(ConsistencyConfig, out).thresholds is not None
