"""Sample-data generator and the independent held-out set: files, ground truth that is actually true, seeds."""

import hashlib
import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hfpc_reward.cli import main as cli_main
from hfpc_reward.data.manifest import read_manifest
from hfpc_reward.images import load_mask, load_rgb, open_image
from hfpc_reward.sample.defects import DEFECT_KINDS, MIN_DEFECT_MAGNITUDE
from hfpc_reward.sample.pairs import generate_pairs, generate_products
from hfpc_reward.sample.products import CATEGORIES

FIELDS = {
    "origin",
    "generation",
    "mask",
    "prompt",
    "category",
    "product_id",
    "label",
    "consistent",
    "defect",
    "defect_magnitude",
    "harmless",
    "generation_mask",
}
SIZE = 128


def _rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pairs")
    generate_pairs(out, n_pairs=32, seed=3, size=SIZE)
    return out


def test_manifest_rows_have_our_schema_and_relative_existing_files(pairs_dir):
    rows = _rows(pairs_dir / "manifest.jsonl")
    assert len(rows) == 32
    for row in rows:
        assert set(row) == FIELDS
        for key in ("origin", "generation", "mask", "generation_mask"):
            assert not Path(row[key]).is_absolute()
            assert (pairs_dir / row[key]).is_file()
        assert row["category"] in CATEGORIES
        assert row["label"] == int(row["consistent"])
        assert row["prompt"].startswith(f"a {row['category']} ")
    parsed = read_manifest(pairs_dir / "manifest.jsonl")
    assert Path(parsed[0].origin) == pairs_dir / rows[0]["origin"]
    assert parsed[0].extra["defect"] == rows[0]["defect"]


def test_defects_are_balanced_and_above_their_documented_minimum(pairs_dir):
    rows = _rows(pairs_dir / "manifest.jsonl")
    defective = [row for row in rows if not row["consistent"]]
    assert len(defective) == 16
    assert sorted(row["defect"] for row in defective) == sorted(DEFECT_KINDS * 2)
    for row in defective:
        assert row["defect_magnitude"] >= MIN_DEFECT_MAGNITUDE[row["defect"]], row
    for row in rows:
        if row["consistent"]:
            assert row["defect"] == "none" and row["defect_magnitude"] == 0.0
            assert row["harmless"], "every generation gets a new background plus harmless changes"


def test_several_generations_share_one_original(pairs_dir):
    rows = _rows(pairs_dir / "manifest.jsonl")
    origins = {row["origin"] for row in rows}
    assert len(origins) == 8
    assert all(sum(row["origin"] == origin for row in rows) == 4 for origin in origins)


def test_masks_are_exact_for_the_original_and_the_generation(pairs_dir):
    for row in _rows(pairs_dir / "manifest.jsonl"):
        original = open_image(pairs_dir / row["origin"])
        mask = load_mask(pairs_dir / row["mask"])
        assert mask.shape == (SIZE, SIZE) and 0.03 < mask.mean() < 0.7
        if original.alpha is not None:  # an RGBA cut-out: its alpha is the product mask
            assert (original.alpha == mask).mean() > 0.99
        pixels = np.asarray(original.rgb, dtype=np.float32) / 255
        assert pixels[~mask].min(axis=-1).mean() > 0.75, "originals sit on a light studio background"
        generation_mask = load_mask(pairs_dir / row["generation_mask"])
        union, inter = (mask | generation_mask).sum(), (mask & generation_mask).sum()
        if row["defect"] in ("none", "recoloured", "label_changed", "texture_changed"):
            assert inter / union > 0.95, row  # the silhouette is the original's
        if row["defect"] == "expanded":
            assert (union - mask.sum()) / mask.sum() == pytest.approx(row["defect_magnitude"], abs=0.03)
        if row["defect"] == "truncated":
            lost = (mask & ~generation_mask).sum() / mask.sum()
            assert lost == pytest.approx(row["defect_magnitude"], abs=0.03)


def test_consistent_product_pixels_match_and_the_background_is_new(pairs_dir):
    from scipy.ndimage import binary_erosion

    for row in _rows(pairs_dir / "manifest.jsonl"):
        original = np.asarray(load_rgb(pairs_dir / row["origin"]), dtype=np.float32) / 255
        generated = np.asarray(load_rgb(pairs_dir / row["generation"]), dtype=np.float32) / 255
        mask = load_mask(pairs_dir / row["mask"])
        core = binary_erosion(mask, iterations=3)
        inside = np.abs(original - generated)[core].mean()
        outside = np.abs(original - generated)[~mask].mean()
        if row["consistent"]:
            assert inside < 0.08, row
        if row["defect"] in ("recoloured", "texture_changed"):
            assert inside > 0.04, row
        assert outside > 0.05, row


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    generate_pairs(tmp_path / "a", n_pairs=6, seed=11, size=96)
    generate_pairs(tmp_path / "b", n_pairs=6, seed=11, size=96)
    generate_pairs(tmp_path / "c", n_pairs=6, seed=12, size=96)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_generate_products_writes_studio_products_without_generations(tmp_path):
    manifest = generate_products(tmp_path, n_products=3, seed=0, size=96)
    rows = read_manifest(manifest)
    assert len(rows) == 3 and all(row.generation is None for row in rows)
    assert {row.product_id for row in rows} == {"s0000", "s0001", "s0002"}
    for row in rows:
        assert load_mask(row.mask).any() and row.prompt and row.category in CATEGORIES
        assert load_rgb(row.origin).size == (96, 96)


def test_bad_arguments_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="defect_fraction must be in"):
        generate_pairs(tmp_path, n_pairs=4, defect_fraction=1.5)
    with pytest.raises(ValueError, match="n_pairs >= 1"):
        generate_pairs(tmp_path, n_pairs=0)


def test_cli_products_only_when_pairs_is_zero(tmp_path):
    assert cli_main(["sample-data", str(tmp_path), "--pairs", "0", "--products", "2", "--size", "96"]) == 0
    assert (tmp_path / "products.jsonl").is_file() and not (tmp_path / "manifest.jsonl").exists()
    assert len(_rows(tmp_path / "products.jsonl")) == 2
    assert cli_main(["sample-data", str(tmp_path / "none"), "--pairs", "0", "--products", "0"]) == 2


def _heldout_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "heldout_consistency_set.py"
    spec = importlib.util.spec_from_file_location("heldout_consistency_set", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_heldout_set_has_our_fields_other_products_and_clear_defects(tmp_path):
    heldout = _heldout_module()
    assert heldout.main([str(tmp_path), "--pairs", "24", "--seed", "5", "--size", str(SIZE)]) == 0
    rows = _rows(tmp_path / "manifest.jsonl")
    assert len(rows) == 24 and all(set(row) == FIELDS for row in rows)
    assert not {row["category"] for row in rows} & set(CATEGORIES)
    assert sorted(row["defect"] for row in rows if not row["consistent"]) == sorted(
        DEFECT_KINDS + DEFECT_KINDS[:4]
    )
    for row in rows:
        assert (tmp_path / row["generation"]).is_file()
        low = heldout.RANGES.get(row["defect"], (heldout.MIN_CHANGED_FRACTION,))[0]
        if not row["consistent"]:
            assert row["defect_magnitude"] >= 0.9 * low, row


def test_generations_per_original_groups_rows(tmp_path):
    rows = [
        json.loads(line)
        for line in generate_pairs(tmp_path, n_pairs=10, size=64, generations_per_original=8)
        .read_text()
        .splitlines()
    ]
    per_original = Counter(row["origin"] for row in rows)
    assert sorted(per_original.values()) == [2, 8]
    with pytest.raises(ValueError, match="generations_per_original"):
        generate_pairs(tmp_path / "x", n_pairs=2, size=64, generations_per_original=0)
