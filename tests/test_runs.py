"""The run contract: output ownership, settings stamp, resume policy."""

import json

import pytest

from hfpc_reward.errors import UsageError
from hfpc_reward.runs import (
    OutputExistsError,
    OutputIsInputError,
    ResumeMismatchError,
    RunLockedError,
    RunOutput,
    changed_settings,
    settings_hash,
    stamp_path,
    write_json_atomic,
)


def enter(out, settings, **options):
    """Open and close a RunOutput (what a refused run gets as far as)."""
    with RunOutput(out, settings, **options):
        pass


SETTINGS = {"train": {"lr": 1e-5, "epochs": 2}, "data": {"manifest": "m.jsonl"}}


def test_settings_hash_is_stable_and_order_free():
    assert settings_hash({"a": 1, "b": {"c": 2}}) == settings_hash({"b": {"c": 2}, "a": 1})
    assert settings_hash({"a": 1}) != settings_hash({"a": 2})


def test_changed_settings_names_dotted_keys():
    changes = changed_settings(SETTINGS, {"train": {"lr": 1e-4, "epochs": 2}})
    assert changes == {"data.manifest": ("m.jsonl", None), "train.lr": (1e-5, 1e-4)}


def test_stamp_is_named_after_the_output(tmp_path):
    assert stamp_path(tmp_path / "check" / "results.jsonl") == tmp_path / "check" / "results.run.json"
    assert stamp_path(tmp_path / "reward") == tmp_path / "reward" / "run.json"
    with (
        RunOutput(tmp_path / "a.jsonl", SETTINGS, resume=False),
        RunOutput(tmp_path / "b.jsonl", {"x": 1}, resume=False),
    ):
        pass
    a = json.loads((tmp_path / "a.run.json").read_text())
    assert a["settings"] == SETTINGS and a["settings_hash"] == settings_hash(SETTINGS)
    assert json.loads((tmp_path / "b.run.json").read_text())["settings"] == {"x": 1}


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(tmp_path):
    out = tmp_path / "results.jsonl"
    with (
        RunOutput(out, SETTINGS, resume=False),
        pytest.raises(RunLockedError, match="another run is writing"),
    ):
        enter(out, SETTINGS, resume=True)
    with RunOutput(out, SETTINGS, resume=True) as run:  # released on exit
        assert run.resuming


def test_resume_with_a_changed_result_setting_is_refused_naming_the_keys(tmp_path):
    out = tmp_path / "results.jsonl"
    with RunOutput(out, SETTINGS, resume=False):
        out.write_text("{}\n")
    changed = {"train": {"lr": 1e-4, "epochs": 2}, "data": {"manifest": "other.jsonl"}}
    with pytest.raises(ResumeMismatchError) as error:
        enter(out, changed, resume=True, safe_keys=["train.epochs"])
    message = str(error.value)
    assert "train.lr" in message and "data.manifest" in message and "\n" not in message
    assert isinstance(error.value, UsageError)
    assert json.loads(stamp_path(out).read_text())["settings"] == SETTINGS  # refused: stamp untouched


def test_resume_with_a_safe_change_updates_the_stamp(tmp_path):
    out = tmp_path / "run"
    with RunOutput(out, SETTINGS, resume=False):
        (out / "metrics.jsonl").write_text("")
    more = {"train": {"lr": 1e-5, "epochs": 5}, "data": {"manifest": "m.jsonl"}}
    with RunOutput(out, more, resume=True, safe_keys=["train.epochs"]) as run:
        assert run.resuming and run.previous == SETTINGS
    stamp = json.loads((out / "run.json").read_text())
    assert stamp["settings"]["train"]["epochs"] == 5 and stamp["resumes"] == 1


def test_fresh_run_over_an_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "results.jsonl"
    with RunOutput(out, SETTINGS, resume=False):
        out.write_text("{}\n")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        enter(out, SETTINGS, resume=False)
    with RunOutput(out, {"other": 1}, resume=False, overwrite=True) as run:
        assert not run.resuming
    assert json.loads(stamp_path(out).read_text())["settings"] == {"other": 1}


def test_resume_without_any_output_starts_fresh_and_without_a_stamp_is_refused(tmp_path):
    with RunOutput(tmp_path / "new.jsonl", SETTINGS, resume=True) as run:
        assert not run.resuming
    legacy = tmp_path / "legacy.jsonl"
    legacy.write_text("{}\n")
    with pytest.raises(ResumeMismatchError, match="no run stamp"):
        enter(legacy, SETTINGS, resume=True)


def test_output_equal_to_or_over_an_input_is_refused(tmp_path):
    manifest = tmp_path / "data" / "manifest.jsonl"
    manifest.parent.mkdir()
    manifest.write_text("{}\n")
    for out in (manifest, tmp_path / "data", manifest.parent / "model" / "x.jsonl"):
        inputs = [manifest, manifest.parent / "model"] if out.name == "x.jsonl" else [manifest]
        (manifest.parent / "model").mkdir(exist_ok=True)
        with pytest.raises(OutputIsInputError, match="choose an --out outside the inputs"):
            enter(out, SETTINGS, resume=False, inputs=inputs)
    assert manifest.read_text() == "{}\n"


def test_the_lock_holds_across_processes_and_dies_with_its_holder(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "results.jsonl"
    holder = (
        "import sys, time\n"
        "from hfpc_reward.runs import RunOutput\n"
        f"with RunOutput({str(out)!r}, {{}}, resume=False):\n"
        "    print('holding', flush=True)\n"
        "    time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "holding"
        with pytest.raises(RunLockedError):
            enter(out, SETTINGS, resume=True)
    finally:
        process.kill()  # a crashed holder: the OS drops its lock, no stale lock file blocks the next run
        process.wait()
    with RunOutput(out, {}, resume=True) as run:
        assert run.resuming is True and run.previous == {}


def test_a_hint_joins_the_refusal_of_its_key(tmp_path):
    out = tmp_path / "run"
    enter(out, {"schedule": 2}, resume=False)
    with pytest.raises(ResumeMismatchError, match="schedule \\(2 -> 4\\); fix it from the start"):
        enter(out, {"schedule": 4}, resume=True, hints={"schedule": "fix it from the start"})


def test_write_json_atomic_round_trips_into_a_new_folder(tmp_path):
    data = {"metrics": {"f1": 0.75, "rows": [1, 2]}, "model": "ünïcode"}
    path = write_json_atomic(tmp_path / "new" / "report.json", data)
    assert json.loads(path.read_text(encoding="utf-8")) == data
    assert path.read_text(encoding="utf-8").endswith("}\n")
    assert json.loads(write_json_atomic(path, {"p": tmp_path}, default=str).read_text()) == {
        "p": str(tmp_path)
    }
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]  # no temp file left behind


def test_a_failed_json_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    from pathlib import Path

    path = write_json_atomic(tmp_path / "report.json", {"version": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"version": 2, "path": tmp_path})  # not JSON without default=str
    real_write_text = Path.write_text

    def write_half_then_fail(self, text, **kwargs):
        real_write_text(self, text[: len(text) // 2], **kwargs)
        raise OSError("No space left on device")

    monkeypatch.setattr(Path, "write_text", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        write_json_atomic(path, {"version": 3, "padding": "x" * 100})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
