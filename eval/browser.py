"""Open report.html in headless Chromium: check that it renders cleanly, or take a screenshot of it.

`check_page` injects a small script at the top of a copy of the page that records every script error,
`console.error` call and failed resource (image, stylesheet) and, once the page has loaded, writes what it
found (errors, broken images, counts of grid products / badges / chart marks) into the DOM, which
`--dump-dom` then returns. Chromium's own console log (stderr) is returned too.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome")
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)

CHECK_HOOK = """<script>
window.__errors = [];
window.addEventListener('error', e => __errors.push(e.message || ('failed to load ' + (e.target.src || e.target.href))), true);
const __consoleError = console.error;
console.error = (...args) => { __errors.push(args.join(' ')); __consoleError(...args); };
window.addEventListener('load', () => {
  const images = [...document.images];
  const chart = id => { const svg = document.querySelector(id + ' svg');
    return svg ? {width: svg.getBoundingClientRect().width, marks: svg.querySelectorAll('path, rect, use').length} : null; };
  const out = document.createElement('pre');
  out.id = '__check';
  out.textContent = JSON.stringify({errors: __errors, images: images.length,
    broken: images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute('src')),
    products: document.querySelectorAll('#grid .product').length,
    gridImages: document.querySelectorAll('#grid img').length,
    lightboxes: document.querySelectorAll('.lightbox').length,
    relativeSources: images.map(i => i.getAttribute('src')).filter(s => !s.startsWith('data:')),
    badges: document.querySelectorAll('#grid .badge').length,
    passChart: chart('#pass-rate-chart'), rewardChart: chart('#reward-chart'),
    summaryRows: document.querySelectorAll('#summary tr').length});
  document.body.appendChild(out);
});
</script>"""


def find_chromium() -> str | None:
    """Path of a Chromium / Chrome executable on PATH, or None."""
    return next((shutil.which(name) for name in BROWSER_NAMES if shutil.which(name)), None)


def _run(chromium: str, extra: list[str], url: str, timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="hfpc-chromium-") as profile:
        command = [chromium, *HEADLESS_FLAGS, f"--user-data-dir={profile}", *extra, url]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def check_page(
    page: str | Path, chromium: str | None = None, timeout: float = 60.0
) -> tuple[dict, list[str]]:
    """Load `page` headless with the check hook; returns (the hook's findings, Chromium's console lines).

    The hooked copy is written next to the page (so relative image paths resolve) and removed afterwards.
    """
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found on PATH (Debian: apt-get install -y chromium)")
    page = Path(page).resolve()
    checked = page.with_name(page.stem + ".check.html")
    checked.write_text(
        page.read_text(encoding="utf-8").replace("<head>", "<head>" + CHECK_HOOK, 1), encoding="utf-8"
    )
    try:
        done = _run(
            chromium,
            ["--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom"],
            checked.as_uri(),
            timeout,
        )
    finally:
        checked.unlink(missing_ok=True)
    found = re.search(r'<pre id="__check">(.*?)</pre>', done.stdout, re.DOTALL)
    if found is None:
        raise RuntimeError(
            f"{page} never finished loading in Chromium; its stderr ends: {done.stderr[-2000:]}"
        )
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(html.unescape(found.group(1))), console


def screenshot(
    page: str | Path,
    out_png: str | Path,
    width: int = 1280,
    height: int = 1800,
    chromium: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """A PNG of the top `height` pixels of `page` rendered `width` pixels wide."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found on PATH (Debian: apt-get install -y chromium)")
    out_png = Path(out_png).resolve()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    done = _run(
        chromium,
        [f"--window-size={width},{height}", "--virtual-time-budget=5000", f"--screenshot={out_png}"],
        Path(page).resolve().as_uri(),
        timeout,
    )
    if not out_png.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot; its stderr ends: {done.stderr[-2000:]}")
    return out_png
