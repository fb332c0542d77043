"""Manifests (data.py): both HFPC-44k schemas and ours, path resolution, errors naming file and line."""

import json
from pathlib import Path

import pytest

from hfpc_reward.data.manifest import ManifestError, append_jsonl, read_jsonl, read_manifest

URL_A = "https://example.com/a.jpg"


def _write(path: Path, lines) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_hfpc_test_schema_keeps_urls(tmp_path):
    path = _write(
        tmp_path / "test.json",
        [
            {"origin": URL_A, "generation": "https://example.com/g1.jpg", "label": 1},
            {"origin": URL_A, "generation": "http://example.com/g2.jpg", "label": 0},
        ],
    )
    rows = read_manifest(path)
    assert [(row.origin, row.generation, row.label, row.line) for row in rows] == [
        (URL_A, "https://example.com/g1.jpg", 1, 1),
        (URL_A, "http://example.com/g2.jpg", 0, 2),
    ]


def test_hfpc_valid_schema_expands_one_row_per_generation(tmp_path):
    path = _write(
        tmp_path / "valid.json",
        [
            {URL_A: {"generations": ["https://x/1.jpg", "https://x/2.jpg"], "labels": [0, 1]}},
            {"https://b/o.jpg": {"generations": ["https://x/3.jpg"], "labels": [1]}},
        ],
    )
    rows = read_manifest(path)
    assert [(row.origin, row.generation, row.label, row.line) for row in rows] == [
        (URL_A, "https://x/1.jpg", 0, 1),
        (URL_A, "https://x/2.jpg", 1, 1),
        ("https://b/o.jpg", "https://x/3.jpg", 1, 2),
    ]


def test_our_schema_resolves_relative_paths_and_keeps_extra_fields(tmp_path):
    record = {
        "origin": "originals/p.png",
        "generation": "../elsewhere/g.png",
        "mask": "/abs/m.png",
        "prompt": "on a table",
        "category": "bottle",
        "product_id": 7,
        "defect": "none",
        "harmless": ["jpeg_q90"],
    }
    path = _write(tmp_path / "set" / "manifest.jsonl", ["", record, "   "])  # blank lines are skipped
    (row,) = read_manifest(path)
    base = (tmp_path / "set").resolve()
    assert row.origin == str(base / "originals/p.png")
    assert row.generation == str(base / "../elsewhere/g.png")
    assert row.mask == "/abs/m.png" and row.label is None and row.line == 2
    assert (row.prompt, row.category, row.product_id) == ("on a table", "bottle", "7")
    assert row.extra == {"defect": "none", "harmless": ["jpeg_q90"]}
    assert row.to_record()["harmless"] == ["jpeg_q90"] and row.to_record()["origin"] == row.origin


def test_rows_without_generation_are_products(tmp_path):
    (row,) = read_manifest(_write(tmp_path / "p.jsonl", [{"origin": "o.png", "mask": "m.png"}]))
    assert row.generation is None and row.mask == str(tmp_path.resolve() / "m.png")


@pytest.mark.parametrize("label", [2, -1, "1", 0.5, None])
def test_bad_label_names_file_line_and_value(tmp_path, label):
    lines = [
        {"origin": "o.png", "generation": "g.png", "label": 1},
        {"origin": "o.png", "generation": "g.png"},
    ]
    if label is not None:
        lines[1]["label"] = label
        path = _write(tmp_path / "m.jsonl", lines)
        with pytest.raises(ManifestError, match=rf"m.jsonl:2: 'label' must be 0 or 1, got {label!r}"):
            read_manifest(path)
    else:  # no label at all is fine (unlabelled rows)
        assert read_manifest(_write(tmp_path / "m.jsonl", lines))[1].label is None


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        ('{"origin": "o.png", "generation": ', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"picture": "o.png"}', "unknown row schema"),
        ('{"origin": ""}', "'origin' must be a non-empty string"),
        ('{"origin": "o.png", "generation": 3}', "'generation' must be a string"),
        ('{"https://o": {"generations": ["a"], "labels": []}}', "must be lists of equal length"),
        ('{"https://o": {"generations": [1, 2], "labels": [1, 0]}}', "must be non-empty path or URL strings"),
        ('{"origin": "ftp://host/o.png"}', "unsupported URL scheme 'ftp'"),
    ],
)
def test_malformed_lines_name_file_and_line_number(tmp_path, bad_line, problem):
    path = _write(tmp_path / "broken.jsonl", [{"origin": "o.png"}, {"origin": "p.png"}, bad_line])
    with pytest.raises(ManifestError) as error:
        read_manifest(path)
    assert f"{path}:3" in str(error.value) and problem in str(error.value)


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "nope.jsonl")


def test_jsonl_append_and_read_survive_an_interrupted_write(tmp_path):
    path = tmp_path / "results.jsonl"
    append_jsonl(path, [{"a": 1}])
    with path.open("a") as handle:
        handle.write('{"a": 2, "cut')  # a write interrupted mid-line
    append_jsonl(path, [{"a": 3}])
    assert read_jsonl(path) == [{"a": 1}, {"a": 3}]
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_real_hfpc44k_manifests(hfpc44k_dir):
    test_rows = read_manifest(hfpc44k_dir / "test.json")
    assert len(test_rows) == 8372
    assert len({row.origin for row in test_rows}) == 321
    assert sum(row.label == 1 for row in test_rows) == 1299
    valid_rows = read_manifest(hfpc44k_dir / "valid_data_combine122.json")
    assert len(valid_rows) == 869
    assert len({row.origin for row in valid_rows}) == 188
    assert sum(row.label == 1 for row in valid_rows) == 266
    assert all(
        row.origin.startswith("https://") and row.generation.startswith("https://") for row in valid_rows
    )


@pytest.mark.parametrize("product_id", ["../../escaped", "/tmp/abs", "a\\b", ".."])
def test_a_product_id_that_names_files_stays_in_the_output_folder(tmp_path, product_id):
    """Eval images and labelled generations are named by product_id: none may leave the output folder."""
    from hfpc_reward.data.manifest import file_safe_product_id

    rows = [{"origin": "p.png", "product_id": "fine"}, {"origin": "o.png", "product_id": product_id}]
    path = _write(tmp_path / "m.jsonl", rows)
    first, second = read_manifest(path)  # reading alone accepts any id (e.g. a URL path in a fetch manifest)
    assert file_safe_product_id(first, path) == "fine"
    with pytest.raises(ManifestError, match=r"m.jsonl:2: product_id .* names output files"):
        file_safe_product_id(second, path)
