"""Category clusters of originals (KMeans on image features), balanced pair sampling, `hfpc data clusters`."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hfpc_reward.data.clusters import (
    BalancedPairSampler,
    BlipImageFeatures,
    ClusterAssignment,
    balanced_pair_sampler,
    cluster_originals,
    pair_weights,
    write_contact_sheets,
)
from hfpc_reward.data.manifest import ManifestRow, comparison_pairs

BASE_COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def colour_histogram(images: list[Image.Image]) -> np.ndarray:
    """8 bins per RGB channel: enough to tell colour families apart."""
    rows = []
    for image in images:
        pixels = np.asarray(image.convert("RGB"))
        rows.append(
            np.concatenate([np.histogram(pixels[..., c], bins=8, range=(0, 256))[0] for c in range(3)])
        )
    return np.asarray(rows, dtype=np.float64)


@pytest.fixture(scope="module")
def coloured_originals(tmp_path_factory) -> dict[str, str]:
    """Six noisy images per colour family, each with a random grey square: {path: true family}."""
    folder = tmp_path_factory.mktemp("originals")
    rng = np.random.default_rng(0)
    truth = {}
    for family, colour in BASE_COLOURS.items():
        for index in range(6):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            x, y = rng.integers(0, 24, 2)
            pixels[y : y + 14, x : x + 14] = rng.integers(80, 180)
            path = folder / f"{family}_{index}.png"
            Image.fromarray(pixels).save(path)
            truth[str(path)] = family
    return truth


def _partition(labels: dict[str, object]) -> set[frozenset[str]]:
    groups: dict[object, set[str]] = {}
    for name, label in labels.items():
        groups.setdefault(label, set()).add(name)
    return {frozenset(group) for group in groups.values()}


def test_kmeans_recovers_known_colour_families(coloured_originals):
    result = cluster_originals(list(coloured_originals), colour_histogram, k=3, seed=0, batch_size=5)
    assert result.k == 3 and result.skipped == {}
    assert _partition(result.assignment) == _partition(coloured_originals)
    assert result.sizes() == [6, 6, 6]
    again = cluster_originals(list(coloured_originals), colour_histogram, k=3, seed=0)
    assert again.assignment == result.assignment  # seeded


def test_k_is_capped_and_bad_originals_are_skipped(coloured_originals, tmp_path, caplog):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    originals = [*list(coloured_originals)[:4], str(broken)]
    with caplog.at_level(logging.WARNING, logger="hfpc_reward.data.clusters"):
        result = cluster_originals(originals, colour_histogram, k=25)
    assert result.k == 4 and sorted(result.sizes()) == [1, 1, 1, 1]
    assert list(result.skipped) == [str(broken)] and "not an image" in result.skipped[str(broken)]
    assert "k=25 is more than the 4 originals" in caplog.text and "skipping original" in caplog.text


def test_assignment_round_trip_and_contact_sheets(coloured_originals, tmp_path):
    result = cluster_originals(list(coloured_originals), colour_histogram, k=3)
    loaded = ClusterAssignment.load(result.save(tmp_path / "clusters.json"))
    assert loaded.assignment == result.assignment and loaded.distances == result.distances and loaded.k == 3
    members = loaded.members(0)
    assert [loaded.distances[m] for m in members] == sorted(loaded.distances[m] for m in members)

    sheets = write_contact_sheets(loaded, tmp_path / "sheets", thumbnails=4, thumbnail_px=32)
    assert [path.name for path in sheets] == ["cluster_00.png", "cluster_01.png", "cluster_02.png"]
    sheet = np.asarray(Image.open(sheets[0]).convert("RGB")).astype(int)
    family = coloured_originals[members[0]]
    colour = np.array(BASE_COLOURS[family])
    cell = sheet[20 + 4 : 20 + 28, 4:28]  # the first thumbnail, inside its cell margin
    assert np.abs(np.median(cell.reshape(-1, 3), axis=0) - colour).max() < 40


def _pairs_in_clusters(pairs_per_cluster: dict[str, int]) -> list[tuple[ManifestRow, ManifestRow]]:
    rows = []
    for origin, count in pairs_per_cluster.items():
        rows.append(ManifestRow(origin, f"{origin}-pos", 1))
        rows.extend(ManifestRow(origin, f"{origin}-neg{i}", 0) for i in range(count))
    return comparison_pairs(rows)


def test_balanced_sampler_gives_each_cluster_equal_share():
    pairs = _pairs_in_clusters(
        {"big1": 50, "big2": 40, "small": 10}
    )  # 90 pairs in cluster 0, 10 in cluster 1
    assignment = {"big1": 0, "big2": 0, "small": 1}
    weights = pair_weights(pairs, assignment)
    assert weights.sum() == pytest.approx(1.0)
    assert weights[0] == pytest.approx(1 / 180) and weights[-1] == pytest.approx(1 / 20)

    sampler = BalancedPairSampler(pairs, assignment, seed=1, num_samples=20_000)
    drawn = list(sampler)
    cluster_share = Counter(assignment[pairs[i][0].origin] for i in drawn)
    assert abs(cluster_share[1] / len(drawn) - 0.5) < 0.02  # 10% of the pairs, half of the draws
    in_small = Counter(i for i in drawn if assignment[pairs[i][0].origin] == 1)
    assert len(in_small) == 10 and max(in_small.values()) / min(in_small.values()) < 1.3  # uniform inside


def test_balanced_sampler_is_seeded_per_epoch():
    pairs = _pairs_in_clusters({"a": 5, "b": 3})
    sampler = balanced_pair_sampler(pairs, {"a": 0, "b": 1}, seed=7)
    assert len(sampler) == 8
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(balanced_pair_sampler(pairs, {"a": 0, "b": 1}, seed=7)) == first


def test_sampler_refuses_pairs_without_cluster():
    pairs = _pairs_in_clusters({"a": 2, "b": 1})
    with pytest.raises(ValueError, match="without a cluster .*hfpc data clusters"):
        pair_weights(pairs, {"a": 0})


@pytest.fixture(scope="module")
def tiny_blip_vision_dir(tmp_path_factory) -> Path:
    """A tiny random BLIP vision encoder (DESIGN.md's tiny config) saved alone, without a processor."""
    import torch
    from transformers import BlipVisionConfig, BlipVisionModel

    torch.manual_seed(0)
    config = BlipVisionConfig(image_size=64, patch_size=16, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2, initializer_range=0.02)  # fmt: skip
    folder = tmp_path_factory.mktemp("blip_vision")
    BlipVisionModel(config).save_pretrained(folder)
    return folder


def test_blip_features_from_vision_folder(tiny_blip_vision_dir, coloured_originals):
    features_fn = BlipImageFeatures(str(tiny_blip_vision_dir))
    images = [Image.open(path) for path in list(coloured_originals)[:3]]
    features = features_fn(images)
    assert features.shape == (3, 32) and features.dtype == np.float32 and np.isfinite(features).all()
    assert np.allclose(features_fn(images[:1]), features[:1], atol=1e-5)  # batch-independent


def test_blip_features_use_the_checkpoint_weights(tmp_path, coloured_originals):
    """A full BLIP ITM folder and a reward-model folder give the pooled output of *their* vision encoder."""
    import torch
    from transformers import BlipForImageTextRetrieval

    from hfpc_reward.reward.model import HFPCRewardModel
    from hfpc_reward.testing.tiny_blip import write_tiny_blip

    blip_dir = write_tiny_blip(tmp_path / "blip")
    images = [Image.open(path) for path in list(coloured_originals)[:2]]
    features = BlipImageFeatures(str(blip_dir))(images)
    reference = BlipForImageTextRetrieval.from_pretrained(blip_dir).vision_model.eval()
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    pixels = BlipImageProcessorPil.from_pretrained(blip_dir)(images=images, return_tensors="pt")[
        "pixel_values"
    ]
    with torch.no_grad():
        expected = reference(pixel_values=pixels).pooler_output.numpy()
    assert np.allclose(features, expected, atol=1e-5)

    reward_dir = HFPCRewardModel.from_pretrained(blip_dir).save_pretrained(tmp_path / "reward_model")
    assert np.allclose(BlipImageFeatures(str(reward_dir))(images), expected, atol=1e-5)


def test_clusters_command(tiny_blip_vision_dir, coloured_originals, tmp_path, capsys):
    from hfpc_reward.cli import main

    manifest = tmp_path / "local.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"origin": path, "generation": path, "label": 1}) + "\n" for path in coloured_originals
        )
    )
    out = tmp_path / "clusters"
    args = [
        "data",
        "clusters",
        str(manifest),
        "--out",
        str(out),
        "--k",
        "3",
        "--backbone",
        str(tiny_blip_vision_dir),
    ]
    assert main(args) == 0
    saved = ClusterAssignment.load(out / "clusters.json")
    assert set(saved.assignment) == set(coloured_originals) and saved.k == 3 and sum(saved.sizes()) == 18
    assert saved.meta["backbone"] == str(tiny_blip_vision_dir)
    assert sorted(p.name for p in out.glob("cluster_*.png")) == [
        "cluster_00.png",
        "cluster_01.png",
        "cluster_02.png",
    ]
    assert (out / "config.resolved.yaml").is_file()
    assert "18 originals in 3 clusters" in capsys.readouterr().out


def test_clusters_command_refuses_remote_originals(tmp_path, caplog):
    from hfpc_reward.cli import main

    manifest = tmp_path / "remote.jsonl"
    manifest.write_text(json.dumps({"origin": "https://example.com/a.png", "generation": "g.png"}) + "\n")
    assert main(["data", "clusters", str(manifest), "--out", str(tmp_path / "c")]) == 2
    assert "hfpc data fetch" in caplog.text
