"""Look at a task in a running Label Studio through headless Chromium: are both images shown? Screenshot it.

Signs in like a person (Django login form over `requests`), hands the session cookie to Chromium and
drives it over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages ended by NUL on
file descriptors 3 and 4, so no websocket client is needed): open the task page, wait until the two
task images (served from local-files storage) have loaded, capture a PNG.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from hfpc_reward.errors import UsageError

LOADED_IMAGES = (
    "[...document.images].filter(i => i.complete && i.naturalWidth > 0"
    " && i.src.includes('/data/local-files/'))"
    ".length"
)
CLICK_CHOICE = (  # true when the choice was there to click
    "(l => l ? (l.click(), true) : false)"
    "([...document.querySelectorAll('label')].find(l => l.textContent.trim().startsWith(%s)))"
)
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--hide-scrollbars",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def session_cookies(url: str, email: str, password: str, timeout_s: float = 30) -> dict[str, str]:
    """Sign in through Label Studio's login form; returns its cookies (sessionid, csrftoken)."""
    import requests

    session = requests.Session()
    page = session.get(f"{url}/user/login/", timeout=timeout_s).text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    if token is None:
        raise UsageError(f"{url}/user/login/ has no login form")
    session.post(
        f"{url}/user/login/",
        timeout=timeout_s,
        headers={"Referer": f"{url}/user/login/"},
        data={"email": email, "password": password, "csrfmiddlewaretoken": token.group(1)},
    )
    if "sessionid" not in session.cookies:
        raise UsageError(f"Label Studio at {url} refused the login of {email}")
    return dict(session.cookies)


def _above_4(fd: int) -> int:
    """The same pipe end on a descriptor above 4, so wiring it to 3 / 4 cannot overwrite the other end."""
    import fcntl

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


class _DevTools:
    """A minimal DevTools-protocol client over Chromium's --remote-debugging-pipe."""

    def __init__(self, chromium: str, profile: str):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        to_browser_r, from_browser_w = _above_4(to_browser_r), _above_4(from_browser_w)

        # the browser reads commands on fd 3 and writes answers on fd 4: bash moves the pipe ends there
        wiring = f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        command = [
            chromium,
            *HEADLESS_FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.process = subprocess.Popen(
            ["bash", "-c", wiring, "bash", *command],  # bash, not sh: pipe fds may be above 9
            pass_fds=(to_browser_r, from_browser_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id, self._buffer = 0, b""

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise UsageError("Chromium closed its DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise UsageError(f"Chromium {method}: {answer['error']}")
                return answer.get("result", {})

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (UsageError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def screenshot_task(
    chromium: str,
    url: str,
    page: str,
    cookies: dict[str, str],
    out: Path,
    size: tuple[int, int] = (1400, 860),
    timeout_s: float = 90,
    choose: Sequence[str] = (),
) -> int:
    """Open `url + page` signed in with `cookies`, wait for the task's images, click the `choose` choices,
    write a PNG; returns how many local-files images had loaded (0 if none before `timeout_s`)."""
    host = url.split("://", 1)[1].split(":")[0].split("/")[0]
    with tempfile.TemporaryDirectory(prefix="hfpc-chromium-") as profile:
        browser = _DevTools(chromium, profile)
        try:
            browser.call(
                "Storage.setCookies",
                {
                    "cookies": [
                        {"name": name, "value": value, "domain": host, "path": "/"}
                        for name, value in cookies.items()
                    ]
                },
            )
            target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            tab = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            width, height = size
            metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
            browser.call("Emulation.setDeviceMetricsOverride", metrics, tab)
            browser.call("Page.navigate", {"url": url + page}, tab)
            loaded, deadline = 0, time.monotonic() + timeout_s
            while loaded < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
                loaded = browser.call("Runtime.evaluate", {"expression": LOADED_IMAGES}, tab)["result"].get(
                    "value", 0
                )
            for text in choose:  # click a choice like an annotator would (once the interface shows it)
                click = {"expression": CLICK_CHOICE % json.dumps(text)}
                while not browser.call("Runtime.evaluate", click, tab)["result"].get("value"):
                    if time.monotonic() > deadline:
                        raise UsageError(f"the labelling interface shows no choice {text!r}")
                    time.sleep(0.5)
                time.sleep(0.5)
            time.sleep(1.0)  # let the layout settle after the last image
            shot = browser.call("Page.captureScreenshot", {"format": "png"}, tab)["data"]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(base64.b64decode(shot))
            return int(loaded)
        finally:
            browser.close()
