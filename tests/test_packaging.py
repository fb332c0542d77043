"""What `pip install .` ships: every package, hfpc_finetune / hfpc_eval (never the generic finetune / eval),
the report template, and commands that work from any directory."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
REPO = Path(__file__).resolve().parents[1]
# repo folder -> the package name it installs as
INSTALLED_AS = {"hfpc_reward": "hfpc_reward", "finetune": "hfpc_finetune", "eval": "hfpc_eval"}


def _packages_in_tree() -> set[str]:
    found = set()
    for folder, name in INSTALLED_AS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((name, *relative)))
    return found


def test_every_package_of_the_tree_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert _packages_in_tree() - listed == set(), "add the missing packages to pyproject.toml's packages"
    assert listed - _packages_in_tree() == set(), "pyproject.toml lists packages that do not exist"


def test_importing_the_package_loads_no_heavy_library_until_a_name_is_used():
    probe = (
        "import sys, hfpc_reward\n"
        "heavy = {'torch', 'transformers', 'diffusers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "hfpc_reward.ProductConsistencyChecker\n"
        "assert 'hfpc_reward.consistency.checker' in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_the_wheel_ships_renamed_packages_and_runs_from_another_directory(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("hfpc_reward-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {"hfpc_reward", "hfpc_finetune", "hfpc_eval"} <= tops
    assert not tops & {"finetune", "eval", "tests", "benchmarks"}
    assert "hfpc_eval/templates/report.html.j2" in names

    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    for args in (["--version"], ["finetune", "--help"], ["eval", "--help"]):
        done = subprocess.run(
            [sys.executable, "-m", "hfpc_reward", *args],
            check=False,
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "hfpc" in done.stdout
    located = subprocess.run(
        check=False,
        args=[
            sys.executable,
            "-c",
            "import hfpc_finetune, hfpc_eval; print(hfpc_finetune.__file__, hfpc_eval.__file__)",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert str(unpacked) in located.stdout and str(REPO) not in located.stdout
