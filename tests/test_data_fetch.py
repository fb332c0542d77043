"""`hfpc data fetch` against a real HTTP server on 127.0.0.1 with misbehaving routes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hfpc_reward.cli import main as hfpc_main
from hfpc_reward.data.download import Downloader
from hfpc_reward.data.fetch import FetchConfig, ImageCache, fetch_manifest
from hfpc_reward.data.manifest import ManifestError, read_jsonl, read_manifest
from hfpc_reward.images import load_rgb

REPO = Path(__file__).resolve().parents[1]
FAST = FetchConfig(workers=4, timeout_s=0.5, deadline_s=10, max_bytes=100_000, retries=2, backoff_s=0.01)


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# redirecting routes -> Location ({port}: the server's own port)
REDIRECTS = {
    "moved.png": "/img/23.png",
    "to-other-host.png": "http://localhost:{port}/img/21.png",
    "to-other-port.png": "http://127.0.0.1:9/img/22.png",
    "loop.png": "/loop.png",
}


class Server:
    """A local HTTP server whose routes misbehave in the ways real image hosts do."""

    def __init__(self):
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.release = threading.Event()  # lets /slow and /block finish (set at teardown)
        self.block_reached = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.server_address = self.server.server_address
        self.base = f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, route: str) -> str:
        return f"{self.base}/{route}"

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                route = self.path.lstrip("/")
                with server.lock:
                    server.hits[route] += 1
                    hit = server.hits[route]
                try:
                    self._serve(route, hit)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up first: expected
                    pass

            def _send(self, body: bytes, status=200, content_type="image/png", length=None):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                if length is not False:
                    self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)

            def _trickle(self, head: bytes, byte: bytes):
                """Send `head`, then one byte every 0.2 s until the client hangs up (30 s at most)."""
                self.wfile.write(head)
                for _ in range(150):
                    if server.release.wait(0.2):
                        return
                    self.wfile.write(byte)

            def _serve(self, route: str, hit: int):
                if route.startswith("img/"):
                    self._send(_png(int(route.split("/")[1].split(".")[0])))
                elif route == "same-as-1.png":
                    self._send(_png(1))
                elif route == "slow.png":
                    server.release.wait(5)
                    self._send(_png(99))
                elif route == "flaky.png":
                    self._send(b"oops", status=500, content_type="text/plain") if hit == 1 else self._send(
                        _png(7)
                    )
                elif route == "truncated.png":
                    body = _png(8)
                    self._send(body[: len(body) // 2], length=len(body))
                elif route == "page.html":
                    self._send(b"<html><body>not an image</body></html>", content_type="text/html")
                elif route == "huge-declared.png":
                    self._send(b"", length=10_000_000)
                elif route == "huge-stream.png":
                    self._send(b"\x89PNG" + b"\0" * 300_000, length=False)
                elif route == "missing.png":
                    self._send(b"not found", status=404, content_type="text/plain")
                elif route == "to-file.png":
                    self.send_response(302)
                    self.send_header("Location", "file:///etc/passwd")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif route == "block.png":
                    server.block_reached.set()
                    server.release.wait(30)
                    self._send(_png(55))
                elif route == "trickle.png" and not server.release.is_set():
                    self._trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 90000\r\n\r\n", b"\0")
                elif route == "trickle.png":  # once released, a normal image (for reruns)
                    self._send(_png(56))
                elif route == "trickle-headers.png":
                    self._trickle(b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a")
                elif route in REDIRECTS:
                    self.send_response(302)
                    self.send_header("Location", REDIRECTS[route].format(port=server.server_address[1]))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._send(b"?", status=404)

        return Handler


@pytest.fixture
def server():
    running = Server()
    yield running
    running.close()


def _write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_fetch_good_bad_and_ugly_urls(server, tmp_path):
    local_mask = tmp_path / "mask.png"
    Image.new("L", (8, 8), 255).save(local_mask)
    rows = [
        {
            "origin": server.url("img/1.png"),
            "generation": server.url("img/2.png"),
            "label": 1,
            "mask": "mask.png",
        },
        {"origin": server.url("img/1.png"), "generation": server.url("same-as-1.png"), "label": 0},
        {"origin": server.url("img/1.png"), "generation": server.url("flaky.png"), "label": 0},
    ]
    bad = ["slow.png", "truncated.png", "page.html", "huge-declared.png", "huge-stream.png", "missing.png",
           "to-file.png"]  # fmt: skip
    rows += [
        {"origin": server.url("img/3.png"), "generation": server.url(route), "label": 0} for route in bad
    ]
    manifest = _write_manifest(tmp_path / "remote.jsonl", rows)
    out = tmp_path / "local" / "manifest.jsonl"

    summary = fetch_manifest(read_manifest(manifest), tmp_path / "cache", out, FAST)

    assert summary.urls == 4 + 1 + len(bad) and summary.cached == 0
    assert summary.rows_written == 3 and summary.rows_failed == len(bad)
    reasons = {url.rsplit("/", 1)[1]: reason for url, reason in summary.failed.items()}
    assert reasons.keys() == set(bad)
    assert "timed out" in reasons["slow.png"] and "after 3 attempts" in reasons["slow.png"]
    assert "truncated" in reasons["truncated.png"] and "after 3 attempts" in reasons["truncated.png"]
    assert "not a usable image" in reasons["page.html"]
    assert "too large" in reasons["huge-declared.png"] and "too large" in reasons["huge-stream.png"]
    assert reasons["missing.png"] == "HTTP 404"
    assert "refused redirect to file:///etc/passwd" in reasons["to-file.png"]
    # retries only where another attempt can help; each URL of the manifest is requested once
    assert (
        server.hits["flaky.png"] == 2 and server.hits["slow.png"] == 3 and server.hits["truncated.png"] == 3
    )
    assert server.hits["page.html"] == server.hits["missing.png"] == server.hits["huge-declared.png"] == 1
    assert server.hits["img/1.png"] == 1 and server.hits["img/3.png"] == 1

    local = read_manifest(out)
    assert [row.label for row in local] == [1, 0, 0]
    assert np.array_equal(np.asarray(load_rgb(local[0].origin)), np.asarray(Image.open(io.BytesIO(_png(1)))))
    assert np.array_equal(
        np.asarray(load_rgb(local[2].generation)), np.asarray(Image.open(io.BytesIO(_png(7))))
    )
    assert local[0].mask == str(local_mask)  # local paths pass through
    assert local[1].generation == local[1].origin  # same bytes under two URLs: one cached file
    stored = {line["file"] for line in read_jsonl(tmp_path / "cache" / "index.jsonl")}
    assert all(len(name) == 64 + 4 and name.endswith(".png") for name in stored)
    assert not list((tmp_path / "cache" / "tmp").glob("**/*.part"))
    assert not json.loads(out.read_text().splitlines()[0])["origin"].startswith(
        "/"
    )  # relative to out's folder

    failures = read_jsonl(tmp_path / "local" / "manifest.jsonl.failures.jsonl")
    assert [record["line"] for record in failures] == list(range(4, 4 + len(bad)))
    assert failures[1]["failed"]["generation"]["url"] == server.url("truncated.png")
    assert "origin" not in failures[1]["failed"]


def test_rerun_downloads_nothing_and_retries_failures(server, tmp_path):
    rows = [{"origin": server.url(f"img/{i}.png"), "generation": server.url("page.html")} for i in range(3)]
    manifest = _write_manifest(tmp_path / "remote.jsonl", rows)
    first = fetch_manifest(read_manifest(manifest), tmp_path / "cache", tmp_path / "out.jsonl", FAST)
    assert (first.downloaded, first.cached, len(first.failed)) == (3, 0, 1)
    second = fetch_manifest(read_manifest(manifest), tmp_path / "cache", tmp_path / "out.jsonl", FAST)
    assert (second.downloaded, second.cached, len(second.failed)) == (0, 3, 1)
    assert all(server.hits[f"img/{i}.png"] == 1 for i in range(3))
    assert server.hits["page.html"] == 2  # failures are tried again on the next run


def test_resume_after_the_process_is_killed(server, tmp_path):
    routes = [f"img/{i}.png" for i in range(1, 5)] + ["block.png"] + [f"img/{i}.png" for i in range(5, 8)]
    manifest = _write_manifest(tmp_path / "remote.jsonl", [{"origin": server.url(r)} for r in routes])
    cache, out = tmp_path / "cache", tmp_path / "out.jsonl"
    script = (
        "from hfpc_reward.data.manifest import read_manifest\n"
        "from hfpc_reward.data.fetch import FetchConfig, fetch_manifest\n"
        f"fetch_manifest(read_manifest({str(manifest)!r}), {str(cache)!r}, {str(out)!r}, FetchConfig(workers=1))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.DEVNULL)
    try:
        assert server.block_reached.wait(60), "the fetch process never reached the blocking URL"
        for _ in range(300):  # the rows before the blocking URL are on disk while the run goes on
            if len(read_jsonl(out)) == 4:
                break
            time.sleep(0.1)
    finally:
        process.kill()
        process.wait(30)
    done_before = len(ImageCache(cache).index)
    assert done_before == len(read_jsonl(out)) == 4
    server.release.set()

    resumed = fetch_manifest(read_manifest(manifest), cache, out, FAST)
    assert (resumed.cached, resumed.downloaded, resumed.failed) == (
        done_before,
        len(routes) - done_before,
        {},
    )
    assert all(server.hits[route] == 1 for route in routes if route != "block.png")
    assert len(read_manifest(out)) == len(routes)
    assert not list((cache / "tmp").glob("run-*"))  # the killed run's partial download was cleaned up

    hits = sum(server.hits.values())
    again = fetch_manifest(read_manifest(manifest), cache, out, FAST)
    assert again.downloaded == 0 and sum(server.hits.values()) == hits


def test_other_schemes_are_refused(tmp_path):
    downloads = Downloader(["ftp://example.com/a.png"], tmp_path, tmp_path, FAST)
    assert list(downloads.results()) == [
        [("ftp://example.com/a.png", None, "only http:// and https:// URLs are fetched")]
    ]
    downloads.close()
    manifest = _write_manifest(tmp_path / "m.jsonl", [{"origin": "file:///etc/passwd"}])
    with pytest.raises(ManifestError, match=r"m.jsonl:1: .*unsupported URL scheme 'file'"):
        read_manifest(manifest)


def test_fetch_command(server, tmp_path, capsys):
    manifest = _write_manifest(
        tmp_path / "m.jsonl",
        [
            {"origin": server.url("img/1.png"), "generation": server.url(g), "label": 1}
            for g in ("img/2.png", "missing.png")
        ],
    )
    out = tmp_path / "local.jsonl"
    code = hfpc_main(["data", "fetch", str(manifest), "--cache", str(tmp_path / "c"), "--out", str(out),
                      "--workers", "2", "--retries", "0", "--timeout", "2"])  # fmt: skip
    assert code == 1  # something failed: the exit status says so
    assert "2 downloaded" in capsys.readouterr().out
    assert len(read_manifest(out)) == 1 and len(read_jsonl(str(out) + ".failures.jsonl")) == 1


def test_fetch_config_validation():
    with pytest.raises(ValueError, match="workers must be >= 1"):
        FetchConfig(workers=0)


def test_fetch_refuses_to_write_over_its_manifest(tmp_path):
    """--out (or --failures) naming the input manifest would rewrite it from the first row: the labels of the
    rows not fetched yet would be lost. Refused before anything is read from the network."""
    rows = [{"origin": "http://127.0.0.1:9/o.png", "generation": "http://127.0.0.1:9/g.png", "label": 1}]
    manifest = _write_manifest(tmp_path / "m.jsonl", rows)
    before = manifest.read_text()
    for flag in ("--out", "--failures"):
        argv = [
            "data",
            "fetch",
            str(manifest),
            "--cache",
            str(tmp_path / "c"),
            "--out",
            str(tmp_path / "o.jsonl"),
        ]
        assert hfpc_main([*argv, flag, str(manifest)]) == 2
        assert manifest.read_text() == before
