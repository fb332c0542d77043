"""One HTTP attempt at a URL, bounded in wall-clock time whatever the server does, and the redirect policy.

Every connection the attempt uses registers itself with the attempt (`Attempt.watch`, through the pool
classes of `watched_session`), so the watchdog thread can end an overdue attempt by shutting down its
socket: that wakes the worker blocked in connect, in a header line, in a body trickling one byte at a
time or in a TLS record. What a shut-down socket does not reach (DNS resolution, a TLS handshake, whose
socket urllib3 only publishes once it is done, a SOCKS proxy) is left to the watchdog's abandonment
(see download.py).

Redirects are followed here, not by requests, so that every hop is checked against the policy: http(s)
only (never file: or another scheme), at most `max_redirects` hops, and by default only to the host of
the URL itself (`redirects="same-host"`; `redirect_allow` adds hosts, `redirects="any"` lifts the limit).
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urljoin, urlsplit

import requests
import urllib3.exceptions
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

if TYPE_CHECKING:
    from hfpc_reward.data.download import FetchConfig

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
REDIRECT_STATUS = {301, 302, 303, 307, 308}
DEFAULT_PORTS = {"http": 80, "https": 443}
CHUNK_BYTES = 64 * 1024
STOPPED = "stopped before it finished"  # the reason of attempts cut short by a stop (never reported)


class FetchError(Exception):
    """One URL could not be fetched; `retryable` says whether another attempt may succeed."""

    def __init__(self, reason: str, retryable: bool):
        super().__init__(reason)
        self.retryable = retryable


def redirect_refusal(url: str, target: str, config: FetchConfig) -> str | None:
    """Why a redirect from `url` (the manifest's URL) to `target` is refused; None when it may be followed."""
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https"):
        return f"refused redirect to {target[:100]} (only http:// and https:// redirects are followed)"
    if config.redirects == "any":
        return None
    try:
        if _same_host(urlsplit(url), parts):
            return None
    except ValueError:
        return f"refused redirect to an invalid URL {target[:100]}"
    host = (parts.hostname or "").lower()
    if any(_host_listed(host, entry.lower()) for entry in config.redirect_allow):
        return None
    return (
        f"refused redirect to another host {parts.netloc} (redirect policy 'same-host'; allow it with "
        f"redirect_allow / --redirect-allow {host}, or redirects=any / --redirects any)"
    )


def _host_listed(host: str, entry: str) -> bool:
    """`entry` is a host name, or ".example.com" for example.com and every host under it."""
    return host == entry.lstrip(".") or (entry.startswith(".") and host.endswith(entry))


def _same_host(origin, target) -> bool:
    """Same host name and port, where a change between the default ports (http -> https) counts as same."""
    if (origin.hostname or "").lower() != (target.hostname or "").lower():
        return False
    origin_port = origin.port or DEFAULT_PORTS[origin.scheme]
    target_port = target.port or DEFAULT_PORTS[target.scheme]
    defaults = set(DEFAULT_PORTS.values())
    return origin_port == target_port or (origin_port in defaults and target_port in defaults)


def download(
    session: requests.Session, url: str, out: BinaryIO, attempt: Attempt, config: FetchConfig
) -> tuple[str, int]:
    """Follow the redirects of `url` and stream its body into `out`; returns (sha256 hex, byte count)."""
    _current.attempt = attempt
    try:
        response = _open_following_redirects(session, url, attempt, config)
        try:
            result = _stream_body(response, out, attempt, config)
        finally:
            _release(response, attempt)
    except Exception as exc:
        if attempt.abort_reason is not None:  # the watchdog closed the connection: that is the cause
            raise attempt.failure() from None
        if isinstance(exc, FetchError):
            raise
        failure = _network_failure(exc, config, attempt.in_body)
        if failure is None:
            raise
        raise failure from None
    finally:
        _current.attempt = None
    if attempt.abort_reason is not None:  # closed at the end of a body without Content-Length: cut short
        raise attempt.failure()
    return result


def _open_following_redirects(
    session: requests.Session, url: str, attempt: Attempt, config: FetchConfig
) -> requests.Response:
    current = url
    for _ in range(config.max_redirects + 1):
        timeout = (config.timeout_s, config.timeout_s)
        response = session.get(current, stream=True, allow_redirects=False, timeout=timeout)
        if response.status_code not in REDIRECT_STATUS:
            return response
        location = response.headers.get("Location")
        _release(response, attempt)
        if not location:
            raise FetchError(f"HTTP {response.status_code} redirect without a Location header", False)
        target = urljoin(current, location)
        refusal = redirect_refusal(url, target, config)
        if refusal is not None:
            raise FetchError(refusal, False)
        current = target
    raise FetchError(f"too many redirects (more than max_redirects {config.max_redirects})", False)


def _stream_body(
    response: requests.Response, out: BinaryIO, attempt: Attempt, config: FetchConfig
) -> tuple[str, int]:
    if response.status_code != 200:
        raise FetchError(f"HTTP {response.status_code}", retryable=response.status_code in RETRY_STATUS)
    declared = response.headers.get("Content-Length")
    declared = int(declared) if declared and declared.isdigit() else None
    attempt.in_body, attempt.declared = True, declared
    if declared is not None and declared > config.max_bytes:
        raise FetchError(f"too large: Content-Length {declared} > max_bytes {config.max_bytes}", False)
    digest, size = hashlib.sha256(), 0
    for chunk in response.raw.stream(CHUNK_BYTES, decode_content=True):
        size += len(chunk)
        if size > config.max_bytes:
            raise FetchError(f"too large: more than max_bytes {config.max_bytes} bytes", False)
        digest.update(chunk)
        out.write(chunk)
    if declared is not None and size < declared and "Content-Encoding" not in response.headers:
        raise FetchError(f"body truncated: got {size} of {declared} bytes", True)
    if size == 0:
        raise FetchError("empty response body", True)
    return digest.hexdigest(), size


def _network_failure(exc: Exception, config: FetchConfig, in_body: bool) -> FetchError | None:
    """The FetchError a network exception stands for; None for anything else (a bug: let it surface)."""
    if isinstance(exc, (requests.exceptions.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError)):
        return FetchError(f"timed out (no connection within {config.timeout_s:g}s)", True)
    timeouts = (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)
    if isinstance(exc, timeouts):
        when = "while downloading" if in_body else "for the response"
        return FetchError(f"timed out (no data for {config.timeout_s:g}s {when})", True)
    if isinstance(exc, (requests.exceptions.InvalidURL, urllib3.exceptions.LocationParseError)):
        return FetchError(f"invalid URL: {short_reason(exc)}", False)
    if isinstance(exc, (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError)):
        what = "body truncated or connection broken" if in_body else "connection failed"
        return FetchError(f"{what}: {short_reason(_innermost(exc))}", True)
    return None


def _innermost(exc: BaseException) -> BaseException | str:
    """The cause inside requests' and urllib3's wrappers, without their `Pool(host=..., port=...): ` prefix."""
    cause = exc.args[0] if isinstance(exc, requests.exceptions.ConnectionError) and exc.args else exc
    cause = getattr(cause, "reason", None) or cause  # urllib3's MaxRetryError wraps the real error
    return str(cause).split("): ", 1)[-1]


def _release(response: requests.Response, attempt: Attempt) -> None:
    attempt.forget_connection()  # before the pool may hand the connection to another attempt
    response.close()


class Attempt:
    """One HTTP attempt in flight: its deadline, and the connection the watchdog shuts down to end it."""

    def __init__(self, url: str, deadline_s: float):
        self.url = url
        self.ends_at = time.monotonic() + deadline_s
        self.abort_reason: str | None = None
        self.aborted_at: float | None = None
        self.in_body, self.declared = False, None  # headers received?; their Content-Length if any
        self._connection: HTTPConnection | None = None
        self._lock = threading.Lock()

    def watch(self, connection: HTTPConnection) -> None:
        with self._lock:
            self._connection = connection
            if self.abort_reason is not None:  # aborted while the connection was being made
                _shut_down(connection)

    def forget_connection(self) -> None:
        with self._lock:
            self._connection = None

    def abort(self, reason: str) -> None:
        with self._lock:
            if self.abort_reason is None:
                self.abort_reason, self.aborted_at = reason, time.monotonic()
            if self._connection is not None:
                _shut_down(self._connection)

    def failure(self) -> FetchError:
        return FetchError(self.abort_reason or STOPPED, retryable=self.abort_reason != STOPPED)

    def progress(self) -> str:
        if not self.in_body:
            return "while connecting or waiting for the response headers"
        declared = f", Content-Length {self.declared}" if self.declared is not None else ""
        return f"while receiving the body{declared}"


def _shut_down(connection: HTTPConnection) -> None:
    """Wake whatever thread is blocked on the connection's socket (plain or TLS) with an end of stream."""
    sock = connection.sock
    if sock is None:
        return
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the OS call itself, also under a TLS socket
    except OSError:  # already closed
        pass


_current = threading.local()  # .attempt: the attempt the calling worker thread is making


class _Watched:
    """Connection mixin: registers itself with the calling thread's attempt whenever it is used."""

    def connect(self):
        _watch(self)
        super().connect()
        _watch(self)  # an abort that came while connecting takes effect now

    def request(self, *args, **kwargs):
        _watch(self)
        return super().request(*args, **kwargs)


def _watch(connection) -> None:
    attempt = getattr(_current, "attempt", None)
    if attempt is not None:
        attempt.watch(connection)


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


def watched_session(user_agent: str) -> requests.Session:
    """A requests session whose connections register with the calling thread's attempt."""
    session = requests.Session()
    session.headers["User-Agent"] = user_agent
    adapter = _WatchedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter with connections the watchdog can shut down (direct and through http(s) proxies)."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = WATCHED_POOLS

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS pools have classes of their own
            manager.pool_classes_by_scheme = WATCHED_POOLS
        return manager


def short_reason(exc: BaseException | str) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."
