"""`hfpc data fetch` bounded in time, stoppable, safe to run twice on one cache, with a redirect policy.

Against the misbehaving local server of test_data_fetch.py (127.0.0.1, bounded in requests and time).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest
from test_data_fetch import FAST, REPO, Server, _write_manifest

from hfpc_reward.cli import main as hfpc_main
from hfpc_reward.data.download import ABANDON_AFTER_S
from hfpc_reward.data.fetch import FetchConfig, FetchConfigError, fetch_manifest
from hfpc_reward.data.http_attempt import redirect_refusal
from hfpc_reward.data.manifest import read_jsonl, read_manifest


@pytest.fixture
def server():
    running = Server()
    yield running
    running.close()


def _rows(server, routes: list[str]) -> list[dict]:
    return [{"origin": server.url(route), "label": 1, "product_id": route} for route in routes]


def _reasons(summary) -> dict[str, str]:
    return {url.split("/", 3)[3]: reason for url, reason in summary.failed.items()}


def test_a_trickling_server_is_cut_at_the_deadline(server, tmp_path):
    routes = ["img/1.png", "trickle.png", "img/2.png", "trickle-headers.png", "img/3.png"]
    manifest = _write_manifest(tmp_path / "m.jsonl", _rows(server, routes))
    config = replace(FAST, timeout_s=2.0, deadline_s=1.0, retries=0)

    started = time.monotonic()
    summary = fetch_manifest(read_manifest(manifest), tmp_path / "cache", tmp_path / "out.jsonl", config)
    elapsed = time.monotonic() - started

    assert elapsed < config.deadline_s + 2  # 1 byte / 0.2 s never trips the 2 s read timeout
    reasons = _reasons(summary)
    assert set(reasons) == {"trickle.png", "trickle-headers.png"}
    assert reasons["trickle.png"] == "deadline of 1s passed while receiving the body, Content-Length 90000"
    assert reasons["trickle-headers.png"] == (
        "deadline of 1s passed while connecting or waiting for the response headers"
    )
    assert [row.label for row in read_manifest(tmp_path / "out.jsonl")] == [1, 1, 1]
    failures = read_jsonl(tmp_path / "out.jsonl.failures.jsonl")
    assert [record["line"] for record in failures] == [2, 4]
    assert not list((tmp_path / "cache" / "tmp").glob("**/*.part"))


def test_an_attempt_a_closed_socket_cannot_stop_is_abandoned(server, tmp_path):
    # TCP connections are accepted (by the kernel's backlog) and the TLS handshake never answered: the
    # socket being handshaken is out of the watchdog's reach, so the attempt is given up on
    with socket.create_server(("127.0.0.1", 0)) as silent:
        stuck = f"https://127.0.0.1:{silent.getsockname()[1]}/a.png"
        rows = [{"origin": stuck}] + _rows(server, ["img/1.png", "img/2.png"])
        manifest = _write_manifest(tmp_path / "m.jsonl", rows)
        config = replace(FAST, workers=1, timeout_s=30.0, deadline_s=0.5, retries=0)
        started = time.monotonic()
        summary = fetch_manifest(read_manifest(manifest), tmp_path / "cache", tmp_path / "out.jsonl", config)
        elapsed = time.monotonic() - started
    assert elapsed < config.deadline_s + ABANDON_AFTER_S + 1.5
    assert summary.failed == {
        stuck: "deadline of 0.5s passed while connecting or waiting for the response headers; "
        "the attempt did not stop"
    }
    assert summary.rows_written == 2  # one worker, stuck: a new one fetched the rest


def test_max_time_stops_the_run_and_a_rerun_continues(server, tmp_path):
    routes = ["img/1.png", "block.png", "img/2.png"]
    manifest = _write_manifest(tmp_path / "m.jsonl", _rows(server, routes))
    out, cache = tmp_path / "out.jsonl", tmp_path / "cache"
    argv = ["data", "fetch", str(manifest), "--cache", str(cache), "--out", str(out), "--workers", "2"]

    assert hfpc_main([*argv, "--max-time", "2"]) == 124
    assert [row.origin.endswith(".png") for row in read_manifest(out)] == [True, True]
    assert read_jsonl(str(out) + ".failures.jsonl") == []  # the unfinished URL is not a failure

    server.release.set()
    assert hfpc_main(argv) == 0
    assert len(read_manifest(out)) == 3 and server.hits["img/1.png"] == server.hits["img/2.png"] == 1


def test_ctrl_c_stops_within_seconds_and_a_rerun_completes(server, tmp_path):
    routes = [f"img/{i}.png" for i in range(1, 5)] + ["trickle.png"] + [f"img/{i}.png" for i in range(5, 8)]
    manifest = _write_manifest(tmp_path / "m.jsonl", _rows(server, routes))
    cache, out, log = tmp_path / "cache", tmp_path / "out.jsonl", tmp_path / "stderr.txt"
    command = [sys.executable, "-m", "hfpc_reward", "data", "fetch", str(manifest), "--cache", str(cache),
               "--out", str(out), "--workers", "2", "--deadline", "60"]  # fmt: skip
    with log.open("w") as stderr:
        # Ctrl-C as in a terminal even when the tests run as a background job: that ignores SIGINT and its
        # children inherit the ignoring (the fetch would never see the signal); a handled signal is reset
        # to the default in a child at exec
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=stderr)
        finally:
            signal.signal(signal.SIGINT, previous)
        try:
            polls = 0
            while len(read_jsonl(out)) < len(routes) - 1 or not server.hits["trickle.png"]:
                assert process.poll() is None and polls < 600, "the fetch never got to the trickling URL"
                time.sleep(0.1)
                polls += 1
            # the 7 finished rows are on disk while the run is still going
            process.send_signal(signal.SIGINT)
            started = time.monotonic()
            code = process.wait(timeout=10)
            stopped_after = time.monotonic() - started
        finally:
            process.kill()
            process.wait()
    assert stopped_after < 3 and code == 130
    assert "interrupted: 7 rows written" in log.read_text() and "rerun the same command" in log.read_text()
    assert not list((cache / "tmp").glob("run-*"))  # partial files and the run's folder are gone
    assert [row.product_id for row in read_manifest(out)] == [
        route for route in routes if route != "trickle.png"
    ]

    server.release.set()  # the trickling route now serves an image
    resumed = fetch_manifest(read_manifest(manifest), cache, out, FAST)
    assert (resumed.cached, resumed.downloaded, resumed.failed) == (7, 1, {})
    assert all(server.hits[route] == 1 for route in routes if route != "trickle.png")
    assert [row.product_id for row in read_manifest(out)] == routes  # every row once, in manifest order


def test_two_runs_share_one_cache(server, tmp_path):
    cache = tmp_path / "cache"
    first_manifest = _write_manifest(
        tmp_path / "a.jsonl", _rows(server, ["img/1.png", "block.png", "img/2.png"])
    )
    second_manifest = _write_manifest(tmp_path / "b.jsonl", _rows(server, ["img/3.png", "img/1.png"]))
    config = replace(FAST, deadline_s=30)
    first: dict = {}

    def first_run():
        first["summary"] = fetch_manifest(read_manifest(first_manifest), cache, tmp_path / "a.out", config)

    thread = threading.Thread(target=first_run)
    thread.start()
    try:
        assert server.block_reached.wait(30), "the first run never reached the blocking URL"
        # the second run starts and ends while the first one has a download in progress
        second = fetch_manifest(read_manifest(second_manifest), cache, tmp_path / "b.out", config)
        assert second.failed == {} and second.rows_written == 2
        assert len(list((cache / "tmp").glob("run-*"))) == 1  # the first run's folder was left alone
    finally:
        server.release.set()
        thread.join(30)
    assert first["summary"].failed == {} and first["summary"].rows_written == 3
    assert len(read_manifest(tmp_path / "a.out")) == 3 and not list((cache / "tmp").glob("run-*"))


def test_redirect_policy(server, tmp_path):
    routes = ["moved.png", "to-other-host.png", "to-other-port.png", "to-file.png", "loop.png"]
    manifest = _write_manifest(tmp_path / "m.jsonl", _rows(server, routes))
    rows, cache, port = read_manifest(manifest), tmp_path / "cache", server.server_address[1]

    strict = _reasons(fetch_manifest(rows, cache, tmp_path / "strict.jsonl", FAST))  # the default policy
    assert set(strict) == {"to-other-host.png", "to-other-port.png", "to-file.png", "loop.png"}
    assert strict["to-other-host.png"].startswith(f"refused redirect to another host localhost:{port} ")
    assert "--redirect-allow localhost" in strict["to-other-host.png"]
    assert strict["to-other-port.png"].startswith("refused redirect to another host 127.0.0.1:9 ")
    assert strict["to-file.png"].startswith("refused redirect to file:///etc/passwd (only http")
    assert strict["loop.png"] == "too many redirects (more than max_redirects 5)"
    assert server.hits["loop.png"] == 6 and server.hits["img/23.png"] == 1  # relative Location followed
    assert server.hits["img/21.png"] == server.hits["img/22.png"] == 0  # refused hops are never requested

    allowed = fetch_manifest(
        rows, cache, tmp_path / "allow.jsonl", replace(FAST, redirect_allow=["localhost"])
    )
    assert set(_reasons(allowed)) == {"to-other-port.png", "to-file.png", "loop.png"}
    assert server.hits["img/21.png"] == 1

    anywhere = replace(FAST, redirects="any", max_redirects=1)
    loose = _reasons(fetch_manifest(read_manifest(manifest)[3:], cache, tmp_path / "any.jsonl", anywhere))
    assert loose["to-file.png"].startswith("refused redirect to file:")  # never another scheme
    assert loose["loop.png"] == "too many redirects (more than max_redirects 1)"


@pytest.mark.parametrize(
    ("target", "allow", "refused"),
    [
        ("https://img.example.com/a.png", [], False),  # http -> https on the same host
        ("http://img.example.com:8080/a.png", [], True),  # another port
        ("http://cdn.example.com/a.png", [], True),
        ("http://cdn.example.com/a.png", ["cdn.example.com"], False),
        ("http://a.cdn.example.com/a.png", [".example.com"], False),
        ("http://example.com.evil.org/a.png", [".example.com"], True),
        ("ftp://img.example.com/a.png", ["img.example.com"], True),
    ],
)
def test_redirect_refusal(target, allow, refused):
    config = FetchConfig(redirect_allow=allow)
    assert (redirect_refusal("http://img.example.com/x.png", target, config) is not None) == refused


def test_new_settings_are_validated():
    with pytest.raises(FetchConfigError, match=r"redirects must be one of \('same-host', 'any'\)"):
        FetchConfig(redirects="anywhere")
    with pytest.raises(FetchConfigError, match="max_time_s must be > 0"):
        FetchConfig(max_time_s=0)
