"""`hfpc check` (pair and manifest mode), bad inputs, resuming, overlays, workers and `hfpc calibrate-consistency`."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_consistency import SIZE, draw_product, product_mask, textured_background

from hfpc_reward.cli import main
from hfpc_reward.config import load_config
from hfpc_reward.consistency.commands import check_manifest
from hfpc_reward.consistency.config import ConsistencyConfig
from hfpc_reward.data.manifest import read_jsonl, read_manifest


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb is refused before decoding)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """A folder with an original, its mask, good and defective generations, and broken files."""
    root = tmp_path_factory.mktemp("pairs")
    mask = product_mask()
    original = draw_product(np.full((SIZE, SIZE, 3), 245, np.uint8), mask)
    Image.fromarray(original).save(root / "original.png")
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(np.zeros_like(mask)).save(root / "empty_mask.png")
    Image.fromarray(np.ones_like(mask)).save(root / "full_mask.png")
    for seed in (1, 2, 3):
        Image.fromarray(draw_product(textured_background(seed), mask)).save(root / f"good{seed}.png")
    grown = mask.copy()
    grown[int(SIZE * 0.3) : int(SIZE * 0.6), int(SIZE * 0.65) : int(SIZE * 0.75)] = True
    expanded = draw_product(textured_background(4), mask)
    expanded[grown & ~mask] = (190, 30, 40)
    Image.fromarray(expanded).save(root / "expanded.png")
    recoloured = draw_product(textured_background(5), mask)
    recoloured[mask] = recoloured[mask][:, ::-1]
    Image.fromarray(recoloured).save(root / "recoloured.png")
    truncated = draw_product(textured_background(6), mask)
    truncated[int(SIZE * 0.6) :, :] = textured_background(6)[int(SIZE * 0.6) :, :]
    Image.fromarray(truncated).save(root / "truncated.png")
    valid = (root / "good1.png").read_bytes()
    (root / "corrupt.png").write_bytes(valid[: len(valid) // 3])
    (root / "zero.png").write_bytes(b"")
    (root / "text.png").write_text("this is not an image\n")
    (root / "bomb.png").write_bytes(png_header_only(20000, 20000))
    return root


def write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


BAD_ROWS = [  # (generation, mask, expected words in the row's error)
    ("missing.png", "mask.png", "does not exist"),
    ("corrupt.png", "mask.png", "corrupt or truncated"),
    ("zero.png", "mask.png", "file is empty (0 bytes)"),
    ("text.png", "mask.png", "not an image file"),
    ("bomb.png", "mask.png", "decompression bomb"),
    ("good1.png", "empty_mask.png", "product mask (given) is empty"),
    ("good1.png", "full_mask.png", "covers 100.0% of the image"),
]


def test_manifest_mode_reports_every_row_and_resumes(pairs, tmp_path, capsys):
    rows = [
        {
            "origin": "original.png",
            "generation": "good1.png",
            "mask": "mask.png",
            "consistent": True,
            "sku": "a",
        },
        {"origin": "original.png", "generation": "expanded.png", "mask": "mask.png", "consistent": False},
    ]
    rows += [{"origin": "original.png", "generation": gen, "mask": mask} for gen, mask, _ in BAD_ROWS]
    rows.append({"origin": "https://example.com/o.png", "generation": "good2.png"})
    manifest = write_manifest(pairs / "manifest.jsonl", rows)
    out, overlays = tmp_path / "run" / "results.jsonl", tmp_path / "overlays"

    assert main(["check", "--manifest", str(manifest), "--out", str(out), "--overlays", str(overlays)]) == 0
    records = sorted(read_jsonl(out), key=lambda r: r["manifest_index"])
    assert [r["manifest_index"] for r in records] == list(range(len(rows)))
    assert records[0]["consistent"] is True and records[0]["error"] is None and records[0]["sku"] == "a"
    assert records[0]["consistent_truth"] is True and set(records[0]["metrics"]) >= {
        "iou",
        "expansion",
        "ssim",
    }
    assert records[1]["consistent"] is False and records[1]["consistent_truth"] is False
    assert any(reason.startswith("expanded") for reason in records[1]["reasons"])
    for record, (_, _, words) in zip(records[2:], BAD_ROWS):
        assert words in record["error"], record["error"]
        assert record["consistent"] is None and record["consistency_score"] == 0.0
    assert "is a URL" in records[-1]["error"]
    stamp = json.loads((out.parent / "results.run.json").read_text())
    assert (
        stamp["settings"]["consistency"]["thresholds"]["max_expansion"]
        == ConsistencyConfig().thresholds.max_expansion
    )
    assert sorted(p.name for p in overlays.iterdir()) == [
        "000000.png",
        "000001.png",
    ]  # names from the row index
    assert Image.open(overlays / "000000.png").size[0] == 3 * SIZE
    summary = capsys.readouterr().out
    assert "errors 8" in summary and "precision 1.000" in summary and "consistent rejected 0.0%" in summary

    lines = out.read_text().splitlines()
    out.write_text(
        "\n".join(lines[:-2]) + "\n" + lines[-2][:10]
    )  # interrupted: one row lost, one half-written
    assert main(["check", "--manifest", str(manifest), "--out", str(out), "--resume"]) == 0
    indices = [r["manifest_index"] for r in read_jsonl(out)]
    assert indices == list(range(len(rows)))  # the lost rows re-checked, nothing twice, in manifest order
    assert f"rows {len(rows)} " in capsys.readouterr().out  # the summary counts each row once


def test_workers_give_the_same_results(pairs, tmp_path):
    rows = [{"origin": "original.png", "generation": f"good{k}.png", "mask": "mask.png"} for k in (1, 2, 3)]
    rows.append({"origin": "good1.png", "generation": "recoloured.png", "mask": "mask.png"})
    manifest = read_manifest(write_manifest(pairs / "workers.jsonl", rows))
    config = ConsistencyConfig()
    one = check_manifest(manifest, config, tmp_path / "one.jsonl", workers=1)
    two = check_manifest(manifest, config, tmp_path / "two.jsonl", workers=2)
    by_index = lambda records: {r["manifest_index"]: r["metrics"] for r in records}
    assert by_index(one) == by_index(two) and len(one) == 4


def test_single_pair_json_exit_codes_and_overrides(pairs, capsys):
    original, mask = str(pairs / "original.png"), str(pairs / "mask.png")
    assert main(["check", original, str(pairs / "good1.png"), "--mask", mask, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (
        report["consistent"] is True and report["error"] is None and 0.5 <= report["consistency_score"] <= 1
    )
    assert main(["check", original, str(pairs / "recoloured.png"), "--mask", mask]) == 1
    assert "recoloured" in capsys.readouterr().out
    loose = [
        "thresholds.max_delta_e=1000",
        "thresholds.max_changed_area=1.01",
        "thresholds.min_ssim=0.01",
        "thresholds.max_edge_changed=1.01",
    ]
    assert main(["check", original, str(pairs / "recoloured.png"), *loose, "--mask", mask]) == 0
    assert main(["check", original, str(pairs / "zero.png")]) == 2
    assert (
        main(["check", original, str(pairs / "good1.png"), "thresholds.max_expansoin=1"]) == 2
    )  # typo refused


def test_calibrate_writes_a_loadable_config_that_separates_the_labels(pairs, tmp_path, capsys):
    rows = [
        {"origin": "original.png", "generation": f"good{k}.png", "mask": "mask.png", "label": 1}
        for k in (1, 2, 3)
    ]
    rows += [
        {"origin": "original.png", "generation": f"{name}.png", "mask": "mask.png", "consistent": False}
        for name in ("expanded", "recoloured", "truncated")
    ]
    manifest = write_manifest(pairs / "labelled.jsonl", rows)
    out = tmp_path / "fitted.yaml"
    assert main(["calibrate-consistency", "--manifest", str(manifest), "--out", str(out), "--best-f1"]) == 0
    assert "after  precision 1.000  recall 1.000  F1 1.000" in capsys.readouterr().out
    fitted = load_config(ConsistencyConfig, out)
    assert fitted.thresholds != ConsistencyConfig().thresholds
    assert (
        main(["check", "--manifest", str(manifest), "--out", str(tmp_path / "r.jsonl"), "--config", str(out)])
        == 0
    )
    records = read_jsonl(tmp_path / "r.jsonl")
    assert sorted(r["consistent"] for r in records) == [False, False, False, True, True, True]
    # the checked-rows cache serves a rerun on this manifest (other thresholds too), never another manifest
    calibrate = ["calibrate-consistency", "--out", str(out), "--manifest"]
    assert main([*calibrate, str(manifest), "thresholds.min_ssim=0.2"]) == 0
    other = write_manifest(pairs / "labelled_other.jsonl", rows[::-1])
    assert main([*calibrate, str(other)]) == 2


def check_args(manifest: Path, out: Path, *extra: str) -> list[str]:
    return ["check", "--manifest", str(manifest), "--out", str(out), *extra]


def one_line_error(capsys, caplog) -> str:
    """The single error line a refused command logged (and no traceback anywhere)."""
    captured = capsys.readouterr()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert "Traceback" not in captured.out + captured.err
    return errors[0]


@pytest.fixture
def good_manifest(pairs, tmp_path) -> Path:
    rows = [{"origin": "original.png", "generation": f"good{k}.png", "mask": "mask.png"} for k in (1, 2)]
    return write_manifest(
        tmp_path / "good.jsonl",
        [
            {
                **row,
                "origin": str(pairs / row["origin"]),
                "generation": str(pairs / row["generation"]),
                "mask": str(pairs / "mask.png"),
            }
            for row in rows
        ],
    )


def test_calibration_that_cannot_give_what_was_asked_says_so(pairs, tmp_path, capsys, caplog):
    """An unreachable target, a target out of range or fitted rows of one label: exit 2 with one line and no
    config written (an unreachable precision was written silently; one label was a ValueError traceback)."""
    row = {"origin": "original.png", "generation": "good1.png", "mask": "mask.png"}
    contradictory = [{**row, "consistent": True}, {**row, "consistent": False}]  # same pair, both labels
    contradictory.append({**row, "generation": "good2.png", "consistent": True})
    one_label = [{**row, "generation": f"good{k}.png", "consistent": True} for k in (1, 2)]
    out = tmp_path / "fitted.yaml"
    for rows, extra, problem in (
        (contradictory, ["--target-precision", "1.0"], "no thresholds reach precision 1.000"),
        (contradictory, ["--target-precision", "5"], "--target-precision must be in (0, 1]"),
        (one_label, ["--best-f1"], "the rows to fit on are all consistent"),
    ):
        manifest = write_manifest(pairs / f"calibration_{len(rows)}.jsonl", rows)
        caplog.clear()
        argv = ["calibrate-consistency", "--manifest", str(manifest), "--out", str(out), *extra]
        argv += ["--results", str(tmp_path / f"{manifest.stem}.results.jsonl")]
        assert main(argv) == 2
        assert problem in one_line_error(capsys, caplog)
        assert not out.exists()
    # the default cache of `out` holds another manifest's rows: the advice fits calibrate (no --overwrite)
    manifest = write_manifest(pairs / "calibration_other.jsonl", contradictory[::-1])
    for rows_manifest in (pairs / "calibration_3.jsonl", manifest):
        caplog.clear()
        code = main(
            ["calibrate-consistency", "--manifest", str(rows_manifest), "--out", str(out), "--best-f1"]
        )
    assert code == 2 and "delete it or give another --results" in one_line_error(capsys, caplog)


def test_a_second_check_on_the_same_out_is_refused_while_the_first_runs(
    good_manifest, tmp_path, capsys, caplog
):
    from hfpc_reward.runs import RunOutput

    out = tmp_path / "results.jsonl"
    with RunOutput(out, {}, resume=False):  # what a running `hfpc check --out results.jsonl` holds
        assert main(check_args(good_manifest, out)) == 2
    assert "another run is writing" in one_line_error(capsys, caplog)
    assert not out.exists()  # nothing interleaved into the other run's output


def test_resume_with_other_thresholds_or_manifest_is_refused_naming_the_keys(
    good_manifest, pairs, tmp_path, capsys, caplog
):
    out = tmp_path / "results.jsonl"
    assert main(check_args(good_manifest, out)) == 0
    before = out.read_text()
    assert main(check_args(good_manifest, out, "--resume", "thresholds.max_expansion=0.5")) == 2
    assert "consistency.thresholds.max_expansion" in one_line_error(capsys, caplog)
    caplog.clear()
    other = write_manifest(
        tmp_path / "other.jsonl", [json.loads(line) for line in good_manifest.read_text().splitlines()[:1]]
    )
    assert main(check_args(other, out, "--resume")) == 2
    message = one_line_error(capsys, caplog)
    assert "manifest.path" in message and "manifest.sha256" in message
    caplog.clear()
    assert main(check_args(good_manifest, out)) == 2  # neither --resume nor --overwrite: refused
    assert "--overwrite" in one_line_error(capsys, caplog)
    assert out.read_text() == before
    assert main(check_args(good_manifest, out, "--resume", "--workers", "2")) == 0  # a safe change


def test_out_equal_to_the_manifest_is_refused(good_manifest, capsys, caplog):
    before = good_manifest.read_text()
    assert main(check_args(good_manifest, good_manifest, "--overwrite")) == 2
    assert "choose an --out outside the inputs" in one_line_error(capsys, caplog)
    assert good_manifest.read_text() == before


def test_outputs_over_inputs_are_refused_for_overlays_and_calibration(
    pairs, good_manifest, tmp_path, capsys, caplog
):
    """Overlays are named by row index (000000.png...): a folder holding the images would have them replaced;
    calibrate-consistency's --out would replace its manifest. Both exit 2 and leave the inputs as they were."""
    images = {path: path.read_bytes() for path in pairs.glob("*.png")}
    argv = check_args(good_manifest, tmp_path / "results.jsonl", "--overlays", str(pairs))
    assert main(argv) == 2 and "choose an --out outside the inputs" in one_line_error(capsys, caplog)
    assert {path: path.read_bytes() for path in pairs.glob("*.png")} == images
    caplog.clear()
    before = good_manifest.read_text()
    assert main(["calibrate-consistency", "--manifest", str(good_manifest), "--out", str(good_manifest)]) == 2
    assert "choose an --out outside the inputs" in one_line_error(capsys, caplog)
    assert good_manifest.read_text() == before


def test_a_manifest_made_from_results_keeps_every_row(good_manifest, tmp_path, capsys):
    """Results rows carry manifest_index; checked again as a manifest (here twice over), every row is one
    record with its own index: the input's index no longer overwrote it (rows were dropped, resume broke)."""
    first = tmp_path / "first.jsonl"
    assert main(check_args(good_manifest, first)) == 0
    twice = tmp_path / "twice.jsonl"
    twice.write_text(first.read_text() * 2)
    again = tmp_path / "again.jsonl"
    assert main(check_args(twice, again)) == 0
    records = [json.loads(line) for line in again.read_text().splitlines()]
    assert [record["manifest_index"] for record in records] == [0, 1, 2, 3]


def test_a_manifest_run_in_which_every_row_failed_exits_2(pairs, tmp_path, capsys, caplog):
    manifest = write_manifest(
        tmp_path / "bad.jsonl",
        [
            {"origin": str(pairs / "original.png"), "generation": str(pairs / name)}
            for name in ("zero.png", "text.png")
        ],
    )
    out = tmp_path / "results.jsonl"
    assert main(check_args(manifest, out)) == 2
    assert "every one of the 2 rows failed" in one_line_error(capsys, caplog)
    assert [r["consistent"] for r in read_jsonl(out)] == [None, None]  # the error rows are still written


def test_results_without_an_extension_are_a_file(good_manifest, tmp_path):
    """--out r/results was taken for a folder: run.json went inside it, then writing the results raised."""
    out = tmp_path / "r" / "results"
    assert main(check_args(good_manifest, out)) == 0
    assert out.is_file() and len(read_jsonl(out)) == 2
