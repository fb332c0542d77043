"""Grouping, comparison pairs, splits by original and manifest statistics."""

from __future__ import annotations

import json

import pytest

from hfpc_reward.data.manifest import (
    ManifestRow,
    comparison_pairs,
    group_by_original,
    manifest_stats,
    read_manifest,
)
from hfpc_reward.data.splits import split_by_original


def _rows(spec: dict[str, list[int]], category_of=None) -> list[ManifestRow]:
    """Rows interleaved across originals (as in the real test.json) from {origin: [labels]}."""
    rows, line = [], 0
    longest = max(len(labels) for labels in spec.values())
    for index in range(longest):
        for origin, labels in spec.items():
            if index < len(labels):
                line += 1
                category = category_of(origin) if category_of else None
                rows.append(
                    ManifestRow(origin, f"{origin}-g{index}", labels[index], category=category, line=line)
                )
    return rows


def test_group_by_original_keeps_first_appearance_and_file_order():
    rows = _rows({"b": [1, 0, 0], "a": [0, 1]})
    groups = group_by_original(rows)
    assert list(groups) == ["b", "a"]
    assert [row.generation for row in groups["b"]] == ["b-g0", "b-g1", "b-g2"]
    assert [row.generation for row in groups["a"]] == ["a-g0", "a-g1"]


def test_comparison_pairs_are_positive_negative_within_one_original():
    rows = _rows({"a": [1, 0, 0, 1], "b": [1, 1], "c": [0, 0], "d": [1, 0]})
    rows.append(ManifestRow("d", "d-unlabelled", None, line=99))
    pairs = comparison_pairs(rows)
    assert len(pairs) == 2 * 2 + 1
    assert all(pos.label == 1 and neg.label == 0 and pos.origin == neg.origin for pos, neg in pairs)
    assert {(pos.generation, neg.generation) for pos, neg in pairs if pos.origin == "a"} == {
        ("a-g0", "a-g1"),
        ("a-g0", "a-g2"),
        ("a-g3", "a-g1"),
        ("a-g3", "a-g2"),
    }


def test_manifest_stats_counts():
    rows = _rows({"a": [1, 0, 0, 1], "b": [1, 1], "c": [0]})
    stats = manifest_stats(rows)
    assert stats["rows"] == 7 and stats["originals"] == 3
    assert stats["labels"] == {"1": 4, "0": 3, "unlabelled": 0}
    assert stats["generations_per_original"] == {"min": 1, "mean": 7 / 3, "max": 4}
    assert stats["comparative_pairs"] == 4 and stats["originals_with_pairs"] == 1


def test_split_never_shares_an_original_and_matches_fractions():
    spec = {f"o{i}": [i % 2, 1 - i % 2] * (1 + i % 3) for i in range(100)}
    rows = _rows(spec)
    parts = split_by_original(rows, seed=3)
    originals = {name: set(group_by_original(part)) for name, part in parts.items()}
    assert {name: len(origins) for name, origins in originals.items()} == {
        "train": 80,
        "valid": 10,
        "test": 10,
    }
    assert not (
        originals["train"] & originals["valid"]
        or originals["train"] & originals["test"]
        or originals["valid"] & originals["test"]
    )
    assert sum(len(part) for part in parts.values()) == len(rows)
    for part in parts.values():
        assert [row.line for row in part] == sorted(row.line for row in part)


def test_split_is_seeded():
    rows = _rows({f"o{i}": [1, 0] for i in range(50)})
    first = split_by_original(rows, seed=1)
    again = split_by_original(rows, seed=1)
    other = split_by_original(rows, seed=2)
    assert {k: [r.origin for r in v] for k, v in first.items()} == {
        k: [r.origin for r in v] for k, v in again.items()
    }
    assert set(group_by_original(first["test"])) != set(group_by_original(other["test"]))


def test_split_stratified_spreads_every_category():
    categories = ["shoes", "bags", "cups", "lamps"]
    spec = {f"o{i}": [1, 0] for i in range(80)}
    rows = _rows(spec, category_of=lambda origin: categories[int(origin[1:]) % 4])
    parts = split_by_original(rows, fractions={"train": 0.5, "test": 0.5}, seed=0, stratify_by="category")
    for category in categories:
        counts = {
            name: len({r.origin for r in part if r.category == category}) for name, part in parts.items()
        }
        assert counts == {"train": 10, "test": 10}, (category, counts)


def test_split_stratified_by_assignment_mapping():
    rows = _rows({f"o{i}": [1, 0] for i in range(40)})
    assignment = {f"o{i}": i % 2 for i in range(40)}
    parts = split_by_original(rows, fractions={"train": 0.75, "test": 0.25}, stratify_by=assignment)
    test_origins = set(group_by_original(parts["test"]))
    assert (
        sum(assignment[o] == 0 for o in test_origins) == 5
        and sum(assignment[o] == 1 for o in test_origins) == 5
    )


def test_split_errors_say_the_fix():
    rows = _rows({"a": [1], "b": [0]})
    with pytest.raises(ValueError, match="must sum to 1"):
        split_by_original(rows, fractions={"train": 0.5, "test": 0.4})
    with pytest.raises(ValueError, match="no 'category' value"):
        split_by_original(rows, stratify_by="category")
    mixed = [ManifestRow("a", "g1", 1, category="x", line=1), ManifestRow("a", "g2", 0, category="y", line=2)]
    with pytest.raises(ValueError, match="several 'category' values"):
        split_by_original(mixed, stratify_by="category")
    with pytest.raises(ValueError, match="must be numbers >= 0"):  # NaN passed the sum check
        split_by_original(rows, fractions={"train": float("nan"), "test": float("nan")})


def test_split_names_stay_file_names_in_the_output_folder(tmp_path):
    """--fractions names the files <out>/<name>.jsonl: '../escaped' wrote outside --out."""
    from hfpc_reward.cli import main

    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"origin": "a.png", "generation": "g.png", "label": 1}\n')
    argv = ["data", "split", str(manifest), "--out", str(tmp_path / "out"), "--fractions", "../escaped=1.0"]
    with pytest.raises(SystemExit) as refused:  # argparse's usage error: one line, exit 2
        main(argv)
    assert refused.value.code == 2 and not (tmp_path / "escaped.jsonl").exists()


def test_real_manifest_counts(hfpc44k_dir):
    test = manifest_stats(read_manifest(hfpc44k_dir / "test.json"))
    assert (test["rows"], test["originals"], test["labels"]["1"], test["comparative_pairs"]) == (
        8372,
        321,
        1299,
        84780,
    )
    valid_rows = read_manifest(hfpc44k_dir / "valid_data_combine122.json")
    valid = manifest_stats(valid_rows)
    assert (valid["rows"], valid["originals"], valid["labels"]["1"], valid["comparative_pairs"]) == (
        869,
        188,
        266,
        561,
    )
    assert len(comparison_pairs(valid_rows)) == 561


def test_real_manifest_split_by_original(hfpc44k_dir):
    rows = read_manifest(hfpc44k_dir / "test.json")
    parts = split_by_original(rows, seed=0)
    owners = {}
    for name, part in parts.items():
        for row in part:
            assert owners.setdefault(row.origin, name) == name
    assert len(owners) == 321 and sum(map(len, parts.values())) == 8372
    assert json.dumps(parts["test"][0].to_record())  # records stay JSON-ready


def test_stats_command_on_real_manifests(hfpc44k_dir, capsys):
    from hfpc_reward.cli import main

    assert main(["data", "stats", str(hfpc44k_dir / "test.json"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["rows"], stats["originals"], stats["labels"]["1"], stats["comparative_pairs"]) == (
        8372,
        321,
        1299,
        84780,
    )
    assert main(["data", "stats", str(hfpc44k_dir / "valid_data_combine122.json")]) == 0
    text = capsys.readouterr().out
    assert "869" in text and "188" in text and "266" in text and "561" in text


def test_split_command_writes_disjoint_parts(tmp_path, capsys):
    from hfpc_reward.cli import main

    manifest = tmp_path / "m.jsonl"
    categories = ["shoes", "bags"]
    manifest.write_text(
        "".join(
            json.dumps(
                {
                    "origin": f"o{i}.png",
                    "generation": f"g{i}-{j}.png",
                    "label": j % 2,
                    "category": categories[i % 2],
                }
            )
            + "\n"
            for i in range(20)
            for j in range(3)
        )
    )
    out = tmp_path / "splits"
    args = [
        "data",
        "split",
        str(manifest),
        "--out",
        str(out),
        "--fractions",
        "train=0.5,test=0.5",
        "--seed",
        "4",
    ]
    assert main([*args, "--stratify", "category"]) == 0
    parts = {name: read_manifest(out / f"{name}.jsonl") for name in ("train", "test")}
    assert not set(group_by_original(parts["train"])) & set(group_by_original(parts["test"]))
    assert len(parts["train"]) == len(parts["test"]) == 30
    assert {row.category for row in parts["test"]} == set(categories)
    assert parts["test"][0].origin == str(tmp_path / parts["test"][0].origin.split("/")[-1])
    assert "train" in capsys.readouterr().out
    # a split that would write over its own input manifest is refused, the manifest untouched
    before = manifest.read_text()
    inplace = ["data", "split", str(manifest), "--out", str(manifest.parent), "--fractions"]
    assert main([*inplace, f"{manifest.stem}=0.5,other=0.5"]) == 2
    assert manifest.read_text() == before


def test_split_keeps_input_order_without_line_numbers():
    rows = [ManifestRow(f"o{i % 7}", f"g{i}", i % 2) for i in range(70)]  # line defaults to 0
    parts = split_by_original(rows, seed=0)
    for part in parts.values():
        positions = [int(row.generation[1:]) for row in part]
        assert positions == sorted(positions)


def test_append_after_an_interrupted_write_keeps_new_records(tmp_path):
    from hfpc_reward.data.manifest import append_jsonl, read_jsonl

    path = tmp_path / "log.jsonl"
    append_jsonl(path, [{"step": 1}])
    with path.open("a") as handle:
        handle.write('{"step": 2, "loss"')  # killed mid-write
    append_jsonl(path, [{"step": 3}])
    assert read_jsonl(path) == [{"step": 1}, {"step": 3}]
