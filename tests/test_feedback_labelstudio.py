"""A real Label Studio server: push picks, two annotators label (one skips, a task is deleted), pull, agree.

The fixture installs Label Studio from PyPI into its own virtual environment (it pins its own Django
stack; kept out of ours) under ~/.cache/hfpc-reward/ (reused once complete), starts it on 127.0.0.1 on a
free port with a throw-away data folder and two users, and always stops it. Install ~1 min, start
~40 s. Marked slow: `make test-slow` and .ci/run run it. Without PyPI it skips, unless
HFPC_REQUIRE_LABEL_STUDIO=1 (.ci/run sets it) makes that a failure.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from hfpc_reward.cli import main
from hfpc_reward.data.manifest import read_jsonl, read_manifest
from hfpc_reward.feedback.labelstudio import LabelStudioClient, choices_result

pytestmark = pytest.mark.slow  # ~1 min install once, ~40 s start (minutes on a busy box): .ci/run runs it

LABEL_STUDIO = "label-studio==1.23.2"  # the version this integration was written against
VENV = Path(
    os.environ.get("HFPC_LABEL_STUDIO_VENV", Path.home() / ".cache" / "hfpc-reward" / "label-studio-venv")
)
COMPLETE = VENV / ".hfpc-install-complete"  # written last: a half-finished install is redone
ANNOTATORS = {
    "a": ("annotator-a@hfpc.test", "pw-annotator-a", "token-annotator-a"),
    "b": ("annotator-b@hfpc.test", "pw-annotator-b", "token-annotator-b"),
}
START_TIMEOUT_S, INSTALL_TIMEOUT_S = 240, 900


def _unavailable(reason: str):
    if os.environ.get("HFPC_REQUIRE_LABEL_STUDIO") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _label_studio() -> Path:
    executable = VENV / "bin" / "label-studio"
    if COMPLETE.is_file() and executable.is_file():
        return executable
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=120)
    try:
        install = subprocess.run(
            [str(VENV / "bin" / "pip"), "install", "--quiet", LABEL_STUDIO],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,  # a failed install is reported below
        )
    except subprocess.TimeoutExpired:
        _unavailable(f"pip install {LABEL_STUDIO} took over {INSTALL_TIMEOUT_S} s")
    if install.returncode != 0:
        _unavailable(f"pip cannot install {LABEL_STUDIO}: {install.stderr.strip().splitlines()[-1:]}")
    COMPLETE.write_text(LABEL_STUDIO)
    return executable


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _user_args(name: str) -> list[str]:
    email, password, token = ANNOTATORS[name]
    return ["--username", email, "--password", password, "--user-token", token, "--enable-legacy-api-token"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    executable = _label_studio()
    base = tmp_path_factory.mktemp("label-studio")
    root = base / "files"  # the server's document root; the pool is a folder inside it
    (root / "pool").mkdir(parents=True)
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(base / "data"),
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
    }
    log = (base / "server.log").open("w")
    # annotator b first (creates the organisation with legacy tokens on), annotator a joins at start
    subprocess.run(
        [str(executable), "init", *_user_args("b")], env=env, stdout=log, stderr=log, timeout=600, check=True
    )
    port = _free_port()
    process = subprocess.Popen(
        [
            str(executable),
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(port),
            *_user_args("a"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped with everything it started
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if requests.get(f"{url}/health", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Label Studio did not come up: {(base / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield {"url": url, "root": root, "pool": root / "pool"}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def pushed(server, tiny_reward_kit, tmp_path_factory):
    """A scored sample pool, picks pushed to a new project: {picks, receipt, project, ...}."""
    from hfpc_reward.data.manifest import append_jsonl
    from hfpc_reward.sample.pairs import generate_pairs

    work = tmp_path_factory.mktemp("loop")
    manifest = generate_pairs(server["pool"], n_pairs=16, seed=5, size=128)
    scores, picks = work / "scores.jsonl", work / "picks.jsonl"
    reward = tiny_reward_kit["reward"]
    assert (
        main(["score", "--manifest", str(manifest), "--out", str(scores), f"reward_model.path={reward}"]) == 0
    )
    assert (
        main(["feedback", "select", str(scores), "--out", str(picks), "--n", "6", "--reward-model", reward])
        == 0
    )
    selected = read_jsonl(picks)
    secret = server["root"] / "secret.png"  # under the server's document root, but outside the pool
    secret.write_bytes(Path(selected[0]["generation"]).read_bytes())
    append_jsonl(picks, [{**selected[0], "generation": str(secret), "pair_id": "outside-the-pool"}])
    push = f"feedback push {picks} --url {server['url']} --token {ANNOTATORS['a'][2]} "
    push += f"--document-root {server['root']} --images-root {server['pool']}"
    assert main(push.split()) == 0
    receipt = json.loads((work / "picks.pushed.json").read_text())
    assert "outside-the-pool" not in receipt["tasks"]  # never served: not pushed, the others are
    return {**server, "work": work, "picks": selected, "picks_path": picks, "receipt": receipt}


def test_push_annotate_pull_agreement_through_a_real_server(pushed):
    url, project, picks = pushed["url"], pushed["receipt"]["project"], pushed["picks"]
    tasks = [pushed["receipt"]["tasks"][pick["pair_id"]] for pick in picks]
    assert len(tasks) == len(picks) == 6
    a, b = (LabelStudioClient(url, ANNOTATORS[name][2]) for name in "ab")
    exported = a.export(project)
    image = requests.get(url + exported[0]["data"]["generation"], headers=a.session.headers, timeout=30)
    assert image.status_code == 200  # local-files storage serves the pool's images
    assert image.headers["content-type"].startswith("image/")
    assert "label" not in exported[0]["data"]["hfpc_pick"]  # annotators never see a known label

    fail = choices_result("fail", ["product expanded"])
    a.annotate(tasks[0], choices_result("pass"), lead_time=3.0)  # agree: pass
    b.annotate(tasks[0], choices_result("pass"), lead_time=2.0)
    a.annotate(tasks[1], fail, lead_time=5.0)  # agree: fail, product expanded
    b.annotate(tasks[1], fail, lead_time=4.0)
    a.annotate(tasks[2], choices_result("pass"))  # disagree: contested, no majority
    b.annotate(tasks[2], choices_result("fail", ["background artefacts"]))
    a.annotate(tasks[3], choices_result("pass"))  # b skips
    b.annotate(tasks[3], [], cancelled=True)
    a.delete_task(tasks[4])  # deleted in the UI; tasks[5] is never labelled (a half-finished project)

    folder = pushed["work"] / "feedback"
    pull = f"feedback pull {folder} --url {url} --token {ANNOTATORS['a'][2]} --project {project} "
    pull = (pull + f"--picks {pushed['picks_path']}").split()
    assert main(pull) == 0
    labels = read_jsonl(folder / "labels.jsonl")
    assert len(labels) == 7
    assert {row["annotator"] for row in labels} == {ANNOTATORS["a"][0], ANNOTATORS["b"][0]}
    assert all(row["annotated_at"] and row["lead_time_s"] is not None for row in labels)
    majority = {row.generation: row for row in read_manifest(folder / "manifest.jsonl")}
    generation = [pick["generation"] for pick in picks]
    assert {g: row.label for g, row in majority.items()} == {
        generation[0]: 1,
        generation[1]: 0,
        generation[3]: 1,
    }
    assert majority[generation[1]].extra["reasons"] == ["product expanded"]
    assert majority[generation[0]].mask == picks[0]["mask"]  # the pick's fields come back with the label
    assert majority[generation[0]].category == picks[0]["category"]
    assert [row["generation"] for row in read_jsonl(folder / "contested.jsonl")] == [generation[2]]
    problems = {(p.get("pair_id"), p["problem"]) for p in read_jsonl(folder / "problems.jsonl")}
    assert (picks[3]["pair_id"], "annotator skipped the task") in problems
    assert (picks[4]["pair_id"], "task deleted in Label Studio (pushed, not exported)") in problems
    assert len(problems) == 2  # the pick outside the pool was never pushed, so it is not "deleted"

    figures = json.loads((folder / "agreement.json").read_text())
    # 3 pairs labelled by both: a votes pass/fail/pass, b pass/fail/fail: p_o 2/3, p_e 4/9 -> kappa 0.4
    assert figures["pairs_with_several_annotators"] == 3
    assert figures["percent_agreement"] == pytest.approx(2 / 3)
    assert list(figures["cohen_kappa"].values()) == [pytest.approx(0.4)]
    assert figures["krippendorff_alpha_per_reason"]["product expanded"] == pytest.approx(1.0)

    assert main(pull) == 0  # the same export again adds nothing
    assert len(read_jsonl(folder / "labels.jsonl")) == 7


def test_our_labelling_interface_renders_both_images_in_label_studio(pushed, tmp_path):
    from hfpc_reward.feedback.screenshot import screenshot_task, session_cookies
    from hfpc_reward.images import load_rgb

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("HFPC_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium is required (HFPC_REQUIRE_BROWSER=1) but not installed")
        pytest.skip("no Chromium on PATH")
    email, password, _ = ANNOTATORS["a"]
    task = pushed["receipt"]["tasks"][pushed["picks"][5]["pair_id"]]
    page = f"/projects/{pushed['receipt']['project']}/data?task={task}"
    out = tmp_path / "labelling.png"
    loaded = screenshot_task(
        chromium,
        pushed["url"],
        page,
        session_cookies(pushed["url"], email, password),
        out,
        choose=["fail", "product moved"],
    )
    assert loaded >= 2  # the original and the generated image, served by local-files storage
    assert load_rgb(out).size == (1400, 860)
