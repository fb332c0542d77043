"""The user-error contract: every mistake a user can make ends `hfpc` with exit 2 and exactly one error line
that says what to change, never a traceback (in-process through `hfpc_reward.cli.main`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hfpc_reward.cli import main


def refused(argv: list[str], capsys, caplog) -> str:
    """Run hfpc with `argv`, expect exit 2 and one error line with no traceback; return that line."""
    caplog.clear()
    assert main(argv) == 2
    captured = capsys.readouterr()
    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1, [record.getMessage() for record in errors]
    assert errors[0].exc_info is None and "\n" not in errors[0].getMessage()
    assert "Traceback" not in captured.out + captured.err + caplog.text
    return errors[0].getMessage()


@pytest.fixture
def pair(tmp_path) -> dict[str, Path]:
    """A grey product on white, a generation of it on a new background, and its mask."""
    mask = np.zeros((64, 80), dtype=bool)
    mask[16:48, 24:56] = True
    original = np.full((64, 80, 3), 250, np.uint8)
    original[mask] = (90, 90, 120)
    generated = np.zeros_like(original)
    generated[:] = (40, 160, 60)
    generated[mask] = (90, 90, 120)
    paths = {name: tmp_path / f"{name}.png" for name in ("original", "generated", "mask")}
    Image.fromarray(original).save(paths["original"])
    Image.fromarray(generated).save(paths["generated"])
    Image.fromarray(mask).save(paths["mask"])
    return paths


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_missing_manifest(tmp_path, capsys, caplog):
    message = refused(
        ["check", "--manifest", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "r.jsonl")],
        capsys,
        caplog,
    )
    assert "does not exist" in message


def test_non_utf8_manifest_names_the_line(tmp_path, capsys, caplog):
    manifest = tmp_path / "latin1.jsonl"
    manifest.write_bytes(b'{"origin": "a.png", "generation": "b.png"}\n{"origin": "caf\xe9.png"}\n')
    message = refused(
        ["check", "--manifest", str(manifest), "--out", str(tmp_path / "r.jsonl")], capsys, caplog
    )
    assert "latin1.jsonl:2: not UTF-8" in message and "save the manifest as UTF-8" in message


def test_malformed_manifest_names_the_line(tmp_path, capsys, caplog):
    manifest = tmp_path / "broken.jsonl"
    manifest.write_text('{"origin": "a.png", "generation": "b.png"}\n{"origin": "a.png", \n')
    message = refused(
        ["score", "--manifest", str(manifest), "--out", str(tmp_path / "r.jsonl")], capsys, caplog
    )
    assert "broken.jsonl:2: not valid JSON" in message


def test_missing_or_unreadable_model_folder(pair, tmp_path, capsys, caplog):
    manifest = write_rows(
        tmp_path / "labelled.jsonl",
        [{"origin": str(pair["original"]), "generation": str(pair["generated"]), "label": 1}],
    )
    base = ["eval-reward", "--manifest", str(manifest), "--out", str(tmp_path / "m.json"), "--model"]
    message = refused([*base, str(tmp_path / "no_such_model")], capsys, caplog)
    assert "does not exist" in message and "Repo id" not in message
    (tmp_path / "empty_model").mkdir()
    message = refused([*base, str(tmp_path / "empty_model")], capsys, caplog)
    assert "has no config.json" in message
    score = ["score", "--manifest", str(manifest), "--out", str(tmp_path / "r.jsonl")]
    message = refused([*score, f"reward_model.path={tmp_path / 'no_such_model'}"], capsys, caplog)
    assert "does not exist" in message and "Repo id" not in message


def test_impossible_calibration_target(tiny_reward_kit, pair, tmp_path, capsys, caplog):
    # every row shows the same pair: one score for all, so no threshold separates the labels
    rows = [
        {"origin": str(pair["original"]), "generation": str(pair["generated"]), "label": label}
        for label in (1, 0, 1, 0)
    ]
    manifest = write_rows(tmp_path / "labelled.jsonl", rows)
    model = Path(tiny_reward_kit["reward"])
    argv = [
        "calibrate-reward",
        "--model",
        str(model),
        "--manifest",
        str(manifest),
        "--target-precision",
        "0.99",
    ]
    message = refused(argv, capsys, caplog)
    assert "no threshold reaches precision 0.990" in message and "lower the target precision" in message


def test_resume_with_other_settings_names_them(pair, tmp_path, capsys, caplog):
    manifest = write_rows(
        tmp_path / "pairs.jsonl",
        [{"origin": str(pair["original"]), "generation": str(pair["generated"]), "mask": str(pair["mask"])}],
    )
    out = tmp_path / "results.jsonl"
    assert main(["check", "--manifest", str(manifest), "--out", str(out)]) == 0
    message = refused(
        ["check", "--manifest", str(manifest), "--out", str(out), "--resume", "thresholds.min_ssim=0.9"],
        capsys,
        caplog,
    )
    assert "consistency.thresholds.min_ssim" in message and "another --out" in message


def test_wrong_size_mask_is_resized_with_a_warning_or_refused(pair, tmp_path, capsys, caplog):
    """Documented choice: a mask of the same aspect ratio is resized (warning); another aspect ratio is the
    mask of another image and is refused."""
    half = tmp_path / "half_mask.png"
    Image.open(pair["mask"]).resize((40, 32), Image.NEAREST).save(half)
    check = ["check", str(pair["original"]), str(pair["generated"]), "--mask"]
    assert main([*check, str(half)]) == 0
    assert "resizing a 40x32 mask to its 80x64 image" in caplog.text
    square = tmp_path / "square_mask.png"
    Image.open(pair["mask"]).resize((64, 64), Image.NEAREST).save(square)
    message = refused([*check, str(square)], capsys, caplog)
    assert "another aspect ratio" in message and "give the product mask of this image" in message


def test_eval_compare_and_folder_versions_name_the_mistake(pair, tmp_path, capsys, caplog):
    missing = str(tmp_path / "nope" / "results.json")
    assert "does not exist" in refused(["eval", "compare", missing, missing], capsys, caplog)
    manifest = write_rows(
        tmp_path / "products.jsonl", [{"origin": str(pair["original"]), "mask": str(pair["mask"])}]
    )
    out = tmp_path / "run"
    versions = json.dumps([{"name": "theirs", "kind": "folder", "path": str(tmp_path / "no-such-folder")}])
    message = refused(
        ["eval", "run", f"manifest={manifest}", f"out_dir={out}", f"versions={versions}"], capsys, caplog
    )
    assert "no-such-folder" in message and "does not exist" in message
    assert not out.exists()  # nothing stamped: the corrected command runs without --overwrite


def test_a_plain_blip_folder_is_no_trained_reward_model(tiny_reward_kit, pair, tmp_path, capsys, caplog):
    """calibrate-reward on the BLIP folder (the training config's `model=`) wrote a reward-model config.json
    over BLIP's, so the folder then loaded as neither; eval-reward scored with a random head. Both exit 2."""
    import shutil

    blip = tmp_path / "blip"
    shutil.copytree(tiny_reward_kit["blip"], blip)
    before = (blip / "config.json").read_text()
    rows = [{"origin": str(pair["original"]), "generation": str(pair["generated"]), "label": 1}]
    manifest = write_rows(tmp_path / "labelled.jsonl", rows)
    for argv in (
        ["calibrate-reward", "--model", str(blip), "--manifest", str(manifest)],
        ["eval-reward", "--model", str(blip), "--manifest", str(manifest), "--out", str(tmp_path / "m.json")],
        [
            "feedback",
            "select",
            str(manifest),
            "--out",
            str(tmp_path / "p.jsonl"),
            "--reward-model",
            str(blip),
        ],
    ):
        assert "not a trained reward model" in refused(argv, capsys, caplog)
    assert (blip / "config.json").read_text() == before


def test_world_commands_name_the_mistake(tmp_path, capsys, caplog):
    for argv, problem in (
        (["world", "summary", str(tmp_path)], "holds no eval/results.json"),
        (["world", "products", str(tmp_path / "p"), "--split", "train", "--count", "2", "--scenes-per-product", "7"],
         "scenes_per_product must be in 1.."),
        (["world", "oracle", str(tmp_path / "o.json"), "--renders-per-kind", "0"], "renders_per_kind must be >= 1"),
    ):  # fmt: skip
        assert problem in refused(argv, capsys, caplog)
    products = tmp_path / "products.jsonl"
    products.write_text(
        '{"origin": "t.png", "mask": "m.png", "prompt": "a jar on a lawn", "product_id": "t"}\n'
    )
    label = [
        "world",
        "label",
        "--pipeline",
        str(tmp_path),
        "--products",
        str(products),
        "--out",
        str(tmp_path / "l"),
    ]
    assert "does not exist" in refused([*label, "--oracle", str(tmp_path / "none.json")], capsys, caplog)


def test_data_clusters_names_the_mistake(pair, tmp_path, capsys, caplog):
    manifest = write_rows(
        tmp_path / "m.jsonl",
        [{"origin": str(pair["original"]), "generation": str(pair["generated"]), "label": 1}],
    )
    clusters = ["data", "clusters", str(manifest), "--out", str(tmp_path / "c")]
    assert "k must be >= 1" in refused([*clusters, "--k", "0"], capsys, caplog)
    assert "has no config.json" in refused([*clusters, "--backbone", str(tmp_path)], capsys, caplog)


def test_feedback_push_and_pull_name_bad_inputs(pair, tmp_path, capsys, caplog):
    """Picks that are no picks, images on no common folder, a malformed export or receipt, a missing --picks
    file: one line each (tracebacks before; a missing --picks silently turned deleted-task checks off)."""
    server = ["--url", "http://127.0.0.1:9", "--document-root", str(tmp_path)]
    manifest_row = {"origin": str(pair["original"]), "generation": str(pair["generated"]), "label": 1}
    picks = write_rows(tmp_path / "manifest.jsonl", [manifest_row])
    assert "a pick needs origin, generation and pair_id" in refused(
        ["feedback", "push", str(picks), *server], capsys, caplog
    )
    mixed = [{"origin": "o.png", "generation": str(pair["generated"]), "pair_id": "p0"}]
    picks = write_rows(tmp_path / "mixed.jsonl", mixed)
    assert "pass --images-root" in refused(["feedback", "push", str(picks), *server], capsys, caplog)
    export = tmp_path / "export.json"
    export.write_text('["a"]')
    pull = ["feedback", "pull", str(tmp_path / "fb"), "--export", str(export)]
    assert "not a Label Studio JSON export" in refused(pull, capsys, caplog)
    export.write_text("[]")
    assert "does not exist" in refused([*pull, "--picks", str(tmp_path / "nope.jsonl")], capsys, caplog)
    (tmp_path / "mixed.pushed.json").write_text('{"url": 1}')
    assert "is not a push receipt" in refused([*pull, "--picks", str(picks)], capsys, caplog)
