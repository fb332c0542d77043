"""Download a manifest's image URLs once into a content-addressed cache and write a local manifest.

Cache layout (one `hfpc data fetch` at a time per cache folder):
    CACHE/objects/<sha256 of the content>.<ext of the detected format>   the images
    CACHE/index.jsonl    one line per finished URL: {"url", "file", "sha256", "bytes", "format", ...}
    CACHE/tmp/           downloads in progress (emptied at the start of each run)
File names come only from the content hash, never from a URL or a manifest path. A finished download
is moved into place with os.replace and only then appended to the index, so an interrupted run loses
at most the downloads in flight and a rerun fetches only what is missing. Failed URLs are not indexed
and are tried again on the next run.

Per URL: http(s) only; connect/read timeouts plus a deadline per attempt; the body is streamed and
abandoned past `max_bytes`; a body shorter than its Content-Length counts as truncated; timeouts,
connection errors, truncation, 408/429 and 5xx are retried with exponential backoff; the content must
open as an image through `hfpc_reward.images.open_image`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import requests
import urllib3.exceptions
from tqdm.auto import tqdm

from hfpc_reward.data.manifest import ManifestRow, append_jsonl, is_url, read_jsonl, write_jsonl
from hfpc_reward.images import DEFAULT_MAX_PIXELS, ImageLoadError, open_image

logger = logging.getLogger(__name__)

URL_FIELDS = ("origin", "generation", "mask")  # row fields that may hold an image URL
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
CHUNK_BYTES = 64 * 1024
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tiff"}


@dataclass
class FetchConfig:
    workers: int = 8  # concurrent downloads (threads); a few dozen at most for one host
    timeout_s: float = 30.0  # connect and per-read socket timeout, seconds
    deadline_s: float = 300.0  # wall-clock limit of one attempt (a server trickling bytes), seconds
    max_bytes: int = (
        50_000_000  # larger responses are abandoned (checked on Content-Length and while streaming)
    )
    retries: int = 3  # extra attempts after a retryable failure (timeouts, 5xx, 429, truncated bodies)
    backoff_s: float = 1.0  # wait before retry k is backoff_s * 2**k seconds
    max_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb guard passed to open_image
    user_agent: str = "hfpc-reward-fetch/0.1"  # sent with every request

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.timeout_s <= 0 or self.deadline_s <= 0:
            raise ValueError(f"timeout_s and deadline_s must be > 0, got {self.timeout_s}, {self.deadline_s}")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {self.max_bytes}")
        if self.retries < 0 or self.backoff_s < 0:
            raise ValueError(f"retries and backoff_s must be >= 0, got {self.retries}, {self.backoff_s}")


class FetchError(Exception):
    """One URL could not be fetched; `retryable` says whether another attempt may succeed."""

    def __init__(self, reason: str, retryable: bool):
        super().__init__(reason)
        self.retryable = retryable


@dataclass
class FetchSummary:
    urls: int = 0  # distinct URLs in the manifest
    downloaded: int = 0  # fetched in this run
    cached: int = 0  # already in the cache index
    failed: dict[str, str] = field(default_factory=dict)  # url -> reason
    rows_written: int = 0  # rows in the local manifest
    rows_failed: int = 0  # rows left out (listed in the failures report)


class ImageCache:
    """The content-addressed cache folder and its url -> file index."""

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

    def clear_tmp(self) -> None:
        """Remove partial downloads left by an interrupted run."""
        for leftover in self.tmp.iterdir():
            leftover.unlink()

    def path_of(self, url: str) -> Path:
        return self.objects / self.index[url]["file"]

    def add(self, record: dict) -> None:
        append_jsonl(self.index_path, [record])
        self.index[record["url"]] = record


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
    """
    config = config or FetchConfig()
    out_path = Path(out_path)
    failures_path = (
        Path(failures_path) if failures_path else out_path.with_name(out_path.name + ".failures.jsonl")
    )
    cache = ImageCache(cache_dir)
    urls = list(
        dict.fromkeys(getattr(row, name) for row in rows for name in URL_FIELDS if _is_remote(row, name))
    )
    summary = FetchSummary(urls=len(urls), cached=sum(url in cache.index for url in urls))
    summary.failed = download_all([url for url in urls if url not in cache.index], cache, config)
    summary.downloaded = summary.urls - summary.cached - len(summary.failed)

    written, failures = [], []
    for row in rows:
        record = row.to_record()
        reasons = {}
        for name in URL_FIELDS:
            if not _is_remote(row, name):
                continue
            url = getattr(row, name)
            if url in cache.index:
                record[name] = os.path.relpath(cache.path_of(url), out_path.parent.resolve())
            else:
                reasons[name] = {"url": url, "reason": summary.failed[url]}
        if reasons:
            failures.append(
                {"line": row.line, "origin": row.origin, "generation": row.generation, "failed": reasons}
            )
        else:
            written.append(record)
    write_jsonl(out_path, written)
    write_jsonl(failures_path, failures)
    summary.rows_written, summary.rows_failed = len(written), len(failures)
    logger.info(
        "fetched %d URLs (%d downloaded, %d cached, %d failed); wrote %d rows to %s, %d failed rows to %s",
        summary.urls, summary.downloaded, summary.cached, len(summary.failed),
        summary.rows_written, out_path, summary.rows_failed, failures_path,
    )  # fmt: skip
    return summary


def download_all(urls: list[str], cache: ImageCache, config: FetchConfig) -> dict[str, str]:
    """Download `urls` concurrently into `cache`; returns {url: reason} of the ones that failed."""
    cache.clear_tmp()
    failed: dict[str, str] = {}
    if not urls:
        return failed
    sessions = threading.local()
    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        futures = {pool.submit(_fetch_with_retries, url, cache, config, sessions): url for url in urls}
        try:
            for future in tqdm(as_completed(futures), total=len(futures), desc="fetch", unit="url"):
                url = futures[future]
                try:
                    cache.add(future.result())
                except FetchError as exc:
                    failed[url] = str(exc)
                    logger.debug("failed %s: %s", url, exc)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return failed


def _fetch_with_retries(url: str, cache: ImageCache, config: FetchConfig, sessions: threading.local) -> dict:
    if not is_url(url):
        raise FetchError("only http:// and https:// URLs are fetched", retryable=False)
    if not hasattr(sessions, "session"):
        sessions.session = requests.Session()
        sessions.session.headers["User-Agent"] = config.user_agent
        sessions.session.max_redirects = 5
    attempt = 0
    while True:
        try:
            return _fetch_once(url, cache, config, sessions.session)
        except FetchError as exc:
            if not exc.retryable or attempt == config.retries:
                attempts = f" (after {attempt + 1} attempts)" if attempt else ""
                raise FetchError(f"{exc}{attempts}", retryable=False) from None
        time.sleep(config.backoff_s * 2**attempt)
        attempt += 1


def _fetch_once(url: str, cache: ImageCache, config: FetchConfig, session: requests.Session) -> dict:
    handle, tmp_name = tempfile.mkstemp(dir=cache.tmp, suffix=".part")
    tmp_path = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            digest, size = _stream_to(url, out, config, session)
        try:
            loaded = open_image(tmp_path, max_pixels=config.max_pixels)
        except ImageLoadError as exc:
            raise FetchError(
                f"not a usable image: {str(exc).removeprefix(str(tmp_path) + ': ')}", False
            ) from None
        image_format = _detected_format(tmp_path)
        name = digest + EXTENSIONS.get(image_format, "." + image_format.lower())
        os.replace(tmp_path, cache.objects / name)
    finally:
        tmp_path.unlink(missing_ok=True)
    width, height = loaded.rgb.size
    return {"url": url, "file": name, "sha256": digest, "bytes": size, "format": image_format,
            "width": width, "height": height}  # fmt: skip


def _stream_to(url: str, out, config: FetchConfig, session: requests.Session) -> tuple[str, int]:
    """Stream the body of `url` into `out`; returns (sha256 hex, byte count) or raises FetchError."""
    started = time.monotonic()
    try:
        with session.get(url, stream=True, timeout=(config.timeout_s, config.timeout_s)) as response:
            if response.status_code != 200:
                raise FetchError(
                    f"HTTP {response.status_code}", retryable=response.status_code in RETRY_STATUS
                )
            declared = response.headers.get("Content-Length")
            declared = int(declared) if declared and declared.isdigit() else None
            if declared is not None and declared > config.max_bytes:
                raise FetchError(
                    f"too large: Content-Length {declared} > max_bytes {config.max_bytes}", False
                )
            digest, size = hashlib.sha256(), 0
            for chunk in response.raw.stream(CHUNK_BYTES, decode_content=True):
                size += len(chunk)
                if size > config.max_bytes:
                    raise FetchError(f"too large: more than max_bytes {config.max_bytes} bytes", False)
                if time.monotonic() - started > config.deadline_s:
                    raise FetchError(f"deadline of {config.deadline_s:g}s passed while downloading", True)
                digest.update(chunk)
                out.write(chunk)
    except requests.exceptions.Timeout:
        raise FetchError(f"timed out (no response within {config.timeout_s:g}s)", True) from None
    except requests.exceptions.InvalidSchema as exc:
        raise FetchError(f"refused scheme: {exc}", False) from None
    except requests.exceptions.TooManyRedirects:
        raise FetchError("too many redirects", False) from None
    except (requests.exceptions.RequestException, OSError) as exc:
        raise FetchError(f"connection failed or body truncated: {_short(exc)}", True) from None
    except urllib3.exceptions.TimeoutError:
        raise FetchError(f"timed out (no data for {config.timeout_s:g}s while downloading)", True) from None
    except urllib3.exceptions.HTTPError as exc:
        raise FetchError(f"body truncated: {_short(exc)}", True) from None
    if declared is not None and size < declared and "Content-Encoding" not in response.headers:
        raise FetchError(f"body truncated: got {size} of {declared} bytes", True)
    if size == 0:
        raise FetchError("empty response body", True)
    return digest.hexdigest(), size


def _detected_format(path: Path) -> str:
    """The format PIL identified from the file's header (the file already opened via open_image)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.format or "BIN"


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."


def _is_remote(row: ManifestRow, name: str) -> bool:
    value = getattr(row, name)
    return value is not None and is_url(value)
