"""Every ```python and ```bash block of README.md runs against the tiny kit, so an example cannot rot.

Hub ids, model folders and example file names are replaced as `SUBSTITUTIONS` lists (longest first);
blocks then run in a scratch folder: Python blocks with `exec`, shell blocks line by line (`hfpc ...` in
process, `python ...` as a subprocess of this interpreter). A block whose first line is `# needs: WHAT`
(a GPU, real weights, your data, ...) is skipped with that reason. Shell blocks are slow (they run real
commands end to end) and run with `make test-slow`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^```(python|bash)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
NEEDS = re.compile(r"^#\s*needs:\s*(?P<what>.+)$")

# text in README blocks -> what it becomes here ({kit}, {pair}: fixture folders filled in at run time)
SUBSTITUTIONS = {
    "stable-diffusion-v1-5/stable-diffusion-inpainting": "{kit}/sd_inpaint/pipeline",
    "outputs/reward_blip_base/model": "{kit}/reward_model/reward_model",
    "Salesforce/blip-itm-base-coco": "{kit}/reward_model/blip",
    "bottle_mask.png": "{mask}",
    "bottle.png": "{origin}",
    "generated.png": "{generation}",
    "num_inference_steps=30": "num_inference_steps=2",
}


def readme_blocks() -> list[tuple[str, str, str]]:
    """(id, language, code) of every fenced python / bash block; ids name the section and the block."""
    text = README.read_text(encoding="utf-8")
    blocks = []
    for number, match in enumerate(FENCE.finditer(text), start=1):
        heading = re.findall(r"^## (.+)$", text[: match.start()], re.MULTILINE)
        section = re.sub(r"[^a-z0-9]+", "-", (heading[-1] if heading else "top").lower()).strip("-")[:40]
        blocks.append((f"{number:02d}-{section}", match.group(1), match.group(2)))
    return blocks


def _params(language: str) -> list:
    params = []
    for block_id, block_language, code in readme_blocks():
        if block_language != language:
            continue
        needs = NEEDS.match(code.splitlines()[0]) if code.strip() else None
        marks = [pytest.mark.skip(reason=f"README block needs: {needs['what']}")] if needs else []
        if language == "bash":
            marks.append(pytest.mark.slow)
        params.append(pytest.param(code, id=block_id, marks=marks))
    return params


@pytest.fixture(scope="module")
def readme_world(tmp_path_factory) -> dict[str, str]:
    """The tiny kit and one sample pair, as the values of SUBSTITUTIONS' placeholders."""
    from hfpc_reward.data.manifest import read_manifest
    from hfpc_reward.sample.pairs import generate_pairs
    from hfpc_reward.testing import write_tiny_models

    root = tmp_path_factory.mktemp("readme")
    write_tiny_models(root / "kit", only=["reward_model", "sd_inpaint"])
    row = read_manifest(generate_pairs(root / "pairs", n_pairs=2, seed=11, size=96))[0]
    return {
        "kit": str(root / "kit"),
        "origin": row.origin,
        "mask": row.mask,
        "generation": row.generation,
        "scratch": str(root / "scratch"),
    }


def substituted(code: str, world: dict[str, str]) -> str:
    for text in sorted(SUBSTITUTIONS, key=len, reverse=True):
        code = code.replace(text, SUBSTITUTIONS[text].format(**world))
    return code


@pytest.mark.parametrize("code", _params("python"))
def test_readme_python_block_runs(code, readme_world, monkeypatch):
    scratch = Path(readme_world["scratch"])
    scratch.mkdir(exist_ok=True)
    monkeypatch.chdir(scratch)
    program = compile(substituted(code, readme_world), "README.md block", "exec")
    exec(program, {"__name__": "__readme__"})  # noqa: S102 (running the README's own code is the point)


def shell_commands(code: str) -> list[list[str]]:
    """The block's commands as argv lists: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


@pytest.mark.parametrize("code", _params("bash"))
def test_readme_shell_block_runs(code, readme_world, monkeypatch):
    from hfpc_reward.cli import main

    scratch = Path(readme_world["scratch"])
    scratch.mkdir(exist_ok=True)
    monkeypatch.chdir(scratch)
    for argv in shell_commands(substituted(code, readme_world)):
        if argv[0] == "hfpc":
            allowed = (0, 1) if argv[1:2] == ["check"] else (0,)  # hfpc check: exit 1 = inconsistent
            assert main(argv[1:]) in allowed, argv
        elif argv[0] == "python":  # scripts and -m modules of the repository, outputs in the scratch folder
            args = [str(REPO / a) if (REPO / a).is_file() else a for a in argv[1:]]
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            done = subprocess.run(
                [sys.executable, *args], check=False, capture_output=True, text=True, timeout=600, env=env
            )
            assert done.returncode == 0, (argv, done.stderr[-2000:])
        else:
            pytest.fail(
                f"{argv[0]!r} cannot run here: start the block with '# needs: ...' to say what it needs"
            )


def test_every_readme_block_is_collected():
    """The extraction finds the blocks (a changed fence style would silently skip them all)."""
    languages = [language for _, language, _ in readme_blocks()]
    assert languages.count("python") >= 2 and languages.count("bash") >= 2
