"""Download a manifest's image URLs once into a content-addressed cache and write a local manifest.

Cache layout (several `hfpc data fetch` runs may share one cache folder at the same time):
    CACHE/objects/<sha256 of the content>.<ext of the detected format>   the images
    CACHE/index.jsonl    one line per finished URL: {"url", "file", "sha256", "bytes", "format", ...}
    CACHE/tmp/run-*/     one folder of partial downloads per running fetch, locked by its owner
File names come only from the content hash, never from a URL or a manifest path. A finished download is
moved into place with os.replace (atomic, so two runs storing the same image do not clash) and only then
appended to the index. A run removes only its own temporary folder, and at start-up the folders of runs
that died (their lock is free); never the files of a run still going.

Progress is on disk as it happens: the moment a row's last URL finishes, the row is appended to the local
manifest or to the failures report (one line each, synced to disk), so a killed run loses at most the rows in
flight. At the end both files are rewritten in manifest order. A rerun starts from the cache index: what
was downloaded is not requested again, failed URLs are tried again. Ctrl-C stops within about a second
(nothing new starts, downloads in flight are cut and their partial files deleted) and raises
FetchInterrupted; `max_time_s` stops the same way and returns a summary with `stopped="max-time"`.

Workers, watchdog and retries: download.py; one HTTP attempt, its deadline and the redirect policy:
http_attempt.py.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from hfpc_reward.data.download import Downloader, FetchConfig, FetchConfigError, FetchError
from hfpc_reward.data.manifest import ManifestRow, append_jsonl, is_url, read_jsonl, write_jsonl

__all__ = ["FetchConfig", "FetchConfigError", "FetchError", "FetchInterrupted", "FetchSummary", "ImageCache",
           "fetch_manifest"]  # fmt: skip

logger = logging.getLogger(__name__)

URL_FIELDS = ("origin", "generation", "mask")  # row fields that may hold an image URL
SWEEP_LOCK_WAIT_S = 60.0  # how long a starting run waits for another one's start-up sweep


@dataclass
class FetchSummary:
    urls: int = 0  # distinct URLs in the manifest
    downloaded: int = 0  # fetched in this run
    cached: int = 0  # already in the cache index
    failed: dict[str, str] = field(default_factory=dict)  # url -> reason
    rows_written: int = 0  # rows in the local manifest
    rows_failed: int = 0  # rows left out (listed in the failures report)
    rows_pending: int = 0  # rows not finished because the run stopped early (a rerun does them)
    stopped: str | None = None  # "interrupted" (Ctrl-C) or "max-time" when the run ended early, else None


class FetchInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a fetch; what was finished is on disk and `summary` says how far it got."""

    def __init__(self, summary: FetchSummary):
        super().__init__(f"fetch interrupted with {summary.rows_pending} rows left; rerun it to continue")
        self.summary = summary


class ImageCache:
    """The content-addressed cache folder, its url -> file index and the runs' temporary folders."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.index_path = self.root / "index.jsonl"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.index: dict[str, dict] = {}
        for record in read_jsonl(self.index_path):
            if (self.objects / record.get("file", "")).is_file():
                self.index[record["url"]] = record

    @contextmanager
    def run_folder(self) -> Iterator[Path]:
        """A temporary folder of this run's own, locked while it runs and removed at the end.

        Start-up sweeps and folder creation happen under one cache-wide lock, so a sweep never sees a
        folder whose owner has not locked it yet; a folder whose lock is free belongs to a dead run.
        """
        with FileLock(self.tmp / ".sweep.lock", timeout=SWEEP_LOCK_WAIT_S, thread_local=False):
            for folder in self.tmp.glob("run-*"):
                dead_owner = FileLock(folder / ".owner.lock", thread_local=False)
                try:
                    dead_owner.acquire(timeout=0)
                except Timeout:
                    continue  # a run still going
                shutil.rmtree(folder, ignore_errors=True)
                dead_owner.release()
            folder = Path(tempfile.mkdtemp(prefix="run-", dir=self.tmp))
            owner = FileLock(folder / ".owner.lock", thread_local=False)
            owner.acquire()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            owner.release()

    def path_of(self, url: str) -> Path:
        return self.objects / self.index[url]["file"]

    def add(self, records: list[dict]) -> None:
        if records:
            append_jsonl(self.index_path, records)
            self.index.update((record["url"], record) for record in records)


def fetch_manifest(
    rows: list[ManifestRow],
    cache_dir: str | Path,
    out_path: str | Path,
    config: FetchConfig | None = None,
    failures_path: str | Path | None = None,
) -> FetchSummary:
    """Fetch every distinct URL of `rows` into the cache; write the local manifest and failures report.

    Rows whose URLs all succeeded go to `out_path` (JSON Lines) with local paths relative to its
    folder; the others go to `failures_path` (default `<out>.failures.jsonl`) with a reason per URL.
    Raises FetchInterrupted on Ctrl-C, after writing what was finished.
    """
    config = config or FetchConfig()
    out_path = Path(out_path)
    failures_path = (
        Path(failures_path) if failures_path else out_path.with_name(out_path.name + ".failures.jsonl")
    )
    cache = ImageCache(cache_dir)
    progress = _RowProgress(rows, cache, out_path, failures_path)
    todo = [url for url in progress.urls if url not in cache.index]
    summary = FetchSummary(urls=len(progress.urls), cached=len(progress.urls) - len(todo))
    with cache.run_folder() as scratch:
        downloads = Downloader(todo, cache.objects, scratch, config)
        try:
            with tqdm(total=len(todo), desc="fetch", unit="url") as bar:
                for batch in downloads.results():
                    progress.record(batch)
                    bar.update(len(batch))
        except KeyboardInterrupt:
            summary.stopped = "interrupted"
        finally:
            downloads.close()
        progress.record(downloads.late_results)
    summary.stopped = summary.stopped or downloads.stopped
    summary.failed = progress.failed
    summary.downloaded = len(todo) - len(progress.failed) - len(progress.waiting)
    summary.rows_written, summary.rows_failed, summary.rows_pending = progress.finish()
    logger.info(
        "fetched %d URLs (%d downloaded, %d cached, %d failed); wrote %d rows to %s, %d failed rows to %s%s",
        summary.urls, summary.downloaded, summary.cached, len(summary.failed), summary.rows_written,
        out_path, summary.rows_failed, failures_path,
        f"; stopped early ({summary.stopped}), {summary.rows_pending} rows left" if summary.stopped else "",
    )  # fmt: skip
    if summary.stopped == "interrupted":
        raise FetchInterrupted(summary)
    return summary


class _RowProgress:
    """Which rows wait on which URLs; a row is written the moment its last URL has finished."""

    def __init__(self, rows: list[ManifestRow], cache: ImageCache, out_path: Path, failures_path: Path):
        self.rows, self.cache = rows, cache
        self.out_path, self.failures_path = out_path, failures_path
        self.out_dir = out_path.parent.resolve()
        self.failed: dict[str, str] = {}  # url -> reason
        self.waiting: dict[str, list[int]] = {}  # unfinished url -> indices of the rows that need it
        self.unfinished_urls = [0] * len(rows)  # per row
        # row index -> (written to the manifest?, its manifest or failure record), for finished rows
        self.outcomes: dict[int, tuple[bool, dict]] = {}
        row_urls = [
            dict.fromkeys(getattr(row, name) for name in URL_FIELDS if _is_remote(row, name)) for row in rows
        ]
        self.urls = list(dict.fromkeys(url for urls in row_urls for url in urls))
        for index, urls in enumerate(row_urls):
            for url in urls:
                if url not in cache.index:
                    self.waiting.setdefault(url, []).append(index)
                    self.unfinished_urls[index] += 1
        ready = [self._settle(index)[1] for index, count in enumerate(self.unfinished_urls) if count == 0]
        write_jsonl(out_path, ready)  # rows complete from the cache; earlier failures are tried again
        write_jsonl(failures_path, [])

    def record(self, results: list[tuple[str, dict | None, str | None]]) -> None:
        """Index the finished downloads, then append every row they completed to its file."""
        self.cache.add([record for _, record, _ in results if record is not None])
        written, failures = [], []
        for url, record, reason in results:
            if record is None:
                self.failed[url] = reason
            for index in self.waiting.pop(url, []):
                self.unfinished_urls[index] -= 1
                if self.unfinished_urls[index] == 0:
                    ok, settled = self._settle(index)
                    (written if ok else failures).append(settled)
        if written:
            append_jsonl(self.out_path, written)
        if failures:
            append_jsonl(self.failures_path, failures)

    def finish(self) -> tuple[int, int, int]:
        """Rewrite both files in manifest order; returns (rows written, rows failed, rows unfinished)."""
        ordered = [self.outcomes[index] for index in sorted(self.outcomes)]
        written = [record for ok, record in ordered if ok]
        failures = [record for ok, record in ordered if not ok]
        write_jsonl(self.out_path, written)
        write_jsonl(self.failures_path, failures)
        return len(written), len(failures), len(self.rows) - len(ordered)

    def _settle(self, index: int) -> tuple[bool, dict]:
        """(True, local-manifest record) when all the row's URLs are cached, else (False, failure record)."""
        row = self.rows[index]
        record, reasons = row.to_record(), {}
        for name in URL_FIELDS:
            if not _is_remote(row, name):
                continue
            url = getattr(row, name)
            if url in self.cache.index:
                record[name] = os.path.relpath(self.cache.path_of(url), self.out_dir)
            else:
                reasons[name] = {"url": url, "reason": self.failed[url]}
        if reasons:
            record = {"line": row.line, "origin": row.origin, "generation": row.generation, "failed": reasons}
        self.outcomes[index] = (not reasons, record)
        return self.outcomes[index]


def _is_remote(row: ManifestRow, name: str) -> bool:
    value = getattr(row, name)
    return value is not None and is_url(value)
