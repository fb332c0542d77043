"""Download URLs in worker threads into a content-addressed folder; the caller's thread is their watchdog.

The thread that iterates `Downloader.results()` looks every TICK_S at the attempts in flight and ends the
ones past their deadline (http_attempt.py shuts their sockets down). An attempt that still does not
return (stuck in DNS resolution or a TLS handshake) is abandoned ABANDON_AFTER_S later: its URL counts as
failed and a new worker takes its place. Workers are daemon threads, so a stop (Ctrl-C, max_time) waits
at most STOP_GRACE_S for them to delete their partial files. Each download goes to a unique temporary
name in the run's own folder and is moved into place with os.replace: runs sharing a cache never clash.
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

from hfpc_reward.data.http_attempt import (
    STOPPED,
    Attempt,
    FetchError,
    download,
    short_reason,
    watched_session,
)
from hfpc_reward.data.manifest import is_url
from hfpc_reward.errors import UsageError
from hfpc_reward.images import DEFAULT_MAX_PIXELS, ImageLoadError, open_image

logger = logging.getLogger(__name__)

REDIRECT_POLICIES = ("same-host", "any")
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tiff"}
TICK_S = 0.1  # how often the watchdog looks at the attempts in flight
ABANDON_AFTER_S = 1.0  # an attempt still running this long after its socket was shut down is given up
STOP_GRACE_S = 1.0  # a stop waits this long for the workers to delete their partial files


class FetchConfigError(UsageError):
    """A fetch setting is out of range; the message names it and its valid values."""


@dataclass
class FetchConfig:
    workers: int = 8  # concurrent downloads (threads); a few dozen at most for one host
    timeout_s: float = 30.0  # connect timeout and the longest silence while reading, seconds
    deadline_s: float = 300.0  # wall-clock limit of one attempt whatever the server does, seconds
    max_time_s: float | None = None  # wall-clock limit of the run (None: none); a rerun continues
    max_bytes: int = 50_000_000  # larger bodies are abandoned (Content-Length and while streaming)
    retries: int = 3  # extra attempts after timeouts, deadlines, 5xx, 429 and truncated bodies
    backoff_s: float = 1.0  # wait before retry k is backoff_s * 2**k seconds
    max_redirects: int = 5  # hops followed per attempt, to http(s) URLs only; 0 refuses every redirect
    redirects: str = "same-host"  # "same-host": the URL's own host only (http->https ok); "any": any host
    redirect_allow: list[str] = field(default_factory=list)  # more hosts: "cdn.x.com", ".x.com" (+subdomains)
    max_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb guard passed to open_image
    user_agent: str = "hfpc-reward-fetch/0.1"  # sent with every request

    def __post_init__(self):
        if self.workers < 1:
            raise FetchConfigError(f"workers must be >= 1, got {self.workers}")
        if self.timeout_s <= 0 or self.deadline_s <= 0:
            raise FetchConfigError(
                f"timeout_s and deadline_s must be > 0, got {self.timeout_s}, {self.deadline_s}"
            )
        if self.max_time_s is not None and self.max_time_s <= 0:
            raise FetchConfigError(f"max_time_s must be > 0 (or None for no limit), got {self.max_time_s}")
        if self.max_bytes < 1:
            raise FetchConfigError(f"max_bytes must be >= 1, got {self.max_bytes}")
        if self.retries < 0 or self.backoff_s < 0 or self.max_redirects < 0:
            raise FetchConfigError(
                f"retries, backoff_s and max_redirects must be >= 0, got {self.retries}, {self.backoff_s}, "
                f"{self.max_redirects}"
            )
        if self.redirects not in REDIRECT_POLICIES:
            raise FetchConfigError(f"redirects must be one of {REDIRECT_POLICIES}, got {self.redirects!r}")


class Downloader:
    """Downloads URLs into `objects/<sha256>.<ext>` with worker threads; see the module docstring.

    Iterate `results()` for batches of (url, cache record or None, failure reason or None), then call
    `close()` (also after an exception); results that came in while stopping are in `late_results`.
    """

    def __init__(self, urls: list[str], objects: Path, scratch: Path, config: FetchConfig):
        self.config = config
        self.objects, self.scratch = Path(objects), Path(scratch)  # final files; this run's partial files
        self.stopped: str | None = None  # "max-time" when the run's time limit ended it early
        self.late_results: list[tuple[str, dict | None, str | None]] = []
        self._pending = len(urls)
        self._todo: queue.SimpleQueue[str] = queue.SimpleQueue()
        for url in urls:
            self._todo.put(url)
        self._done: queue.SimpleQueue[tuple[str, dict | None, str | None]] = queue.SimpleQueue()
        self._reported: set[str] = set()
        self._stop = threading.Event()
        self._attempts: dict[Attempt, threading.Thread] = {}  # in flight -> the worker making it
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._given_up: set[threading.Thread] = set()  # workers stuck in an abandoned attempt
        self._sessions = threading.local()

    def results(self) -> Iterator[list[tuple[str, dict | None, str | None]]]:
        started = time.monotonic()
        for _ in range(min(self.config.workers, self._pending)):
            self._start_worker()
        while self._pending:
            batch = self._collect() + self._watch()
            if batch:
                self._pending -= len(batch)
                yield batch
            if self.config.max_time_s is not None and time.monotonic() - started > self.config.max_time_s:
                self.stopped = "max-time"
                return

    def close(self) -> None:
        """Start nothing new, cut the attempts in flight and give the workers STOP_GRACE_S to clean up."""
        self._stop.set()
        with self._lock:
            attempts = list(self._attempts)
        for attempt in attempts:
            attempt.abort(STOPPED)
        ends = time.monotonic() + STOP_GRACE_S
        for worker in self._workers:
            if worker not in self._given_up:
                worker.join(max(0.0, ends - time.monotonic()))
        self.late_results += self._collect(wait=False)

    def _collect(self, wait: bool = True) -> list[tuple[str, dict | None, str | None]]:
        results = []
        try:
            results.append(self._done.get(timeout=TICK_S) if wait else self._done.get_nowait())
            while True:
                results.append(self._done.get_nowait())
        except queue.Empty:
            pass
        fresh = [result for result in results if result[0] not in self._reported]  # not abandoned before
        self._reported.update(url for url, *_ in fresh)
        return fresh

    def _watch(self) -> list[tuple[str, dict | None, str | None]]:
        """Abort the attempts past their deadline; give up on those that did not stop after an abort."""
        now, given_up = time.monotonic(), []
        with self._lock:
            attempts = list(self._attempts.items())
        for attempt, worker in attempts:
            if attempt.aborted_at is None and now >= attempt.ends_at:
                attempt.abort(f"deadline of {self.config.deadline_s:g}s passed {attempt.progress()}")
            elif (
                attempt.aborted_at is not None
                and now - attempt.aborted_at > ABANDON_AFTER_S
                and attempt.url not in self._reported
            ):  # stuck where a closed socket does not reach (DNS, a TLS handshake): give up on it
                self._reported.add(attempt.url)
                self._given_up.add(worker)
                given_up.append((attempt.url, None, f"{attempt.abort_reason}; the attempt did not stop"))
                self._start_worker()  # the stuck one no longer counts
        return given_up

    def _start_worker(self) -> None:
        worker = threading.Thread(target=self._work, name="hfpc-fetch", daemon=True)
        self._workers.append(worker)
        worker.start()

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                url = self._todo.get_nowait()
            except queue.Empty:
                return
            try:
                self._done.put((url, self._fetch_with_retries(url), None))
            except FetchError as exc:
                if not self._stop.is_set():  # cut short by a stop: unfinished, not failed (a rerun does it)
                    self._done.put((url, None, str(exc)))
            except Exception as exc:  # a failure on our side (disk full, ...) must not stall the other URLs
                logger.exception("unexpected error while fetching %s", url)
                self._done.put((url, None, f"unexpected error: {short_reason(exc)}"))

    def _fetch_with_retries(self, url: str) -> dict:
        if not is_url(url):
            raise FetchError("only http:// and https:// URLs are fetched", retryable=False)
        attempt = 0
        while True:
            try:
                return self._fetch_once(url)
            except FetchError as exc:
                if not exc.retryable or attempt == self.config.retries:
                    attempts = f" (after {attempt + 1} attempts)" if attempt else ""
                    raise FetchError(f"{exc}{attempts}", retryable=False) from None
            if self._stop.wait(self.config.backoff_s * 2**attempt):
                raise FetchError(STOPPED, retryable=False)
            attempt += 1

    def _fetch_once(self, url: str) -> dict:
        handle, tmp_name = tempfile.mkstemp(dir=self.scratch, suffix=".part")
        tmp_path = Path(tmp_name)
        try:
            attempt = Attempt(url, self.config.deadline_s)
            with self._lock:
                self._attempts[attempt] = threading.current_thread()
            try:
                with os.fdopen(handle, "wb") as out:
                    digest, size = download(self._session(), url, out, attempt, self.config)
            finally:
                with self._lock:
                    del self._attempts[attempt]
            try:
                loaded = open_image(tmp_path, max_pixels=self.config.max_pixels)
            except ImageLoadError as exc:
                reason = str(exc).removeprefix(str(tmp_path) + ": ")
                raise FetchError(f"not a usable image: {reason}", False) from None
            image_format = _detected_format(tmp_path)
            name = digest + EXTENSIONS.get(image_format, "." + image_format.lower())
            os.replace(tmp_path, self.objects / name)  # atomic: concurrent runs may store the same name
        finally:
            tmp_path.unlink(missing_ok=True)
        width, height = loaded.rgb.size
        return {"url": url, "file": name, "sha256": digest, "bytes": size, "format": image_format,
                "width": width, "height": height}  # fmt: skip

    def _session(self) -> requests.Session:
        if not hasattr(self._sessions, "session"):  # one per worker thread (requests sessions are not shared)
            self._sessions.session = watched_session(self.config.user_agent)
        return self._sessions.session


def _detected_format(path: Path) -> str:
    """The format PIL identified from the file's header (the file already opened via open_image)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.format or "BIN"
