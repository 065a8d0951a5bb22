"""Headless Chromium for report tests: screenshot, DOM dump, and the requests a page made.

Debian's ``chromium`` makes requests of its own (update checks, account probes)
whatever the flags; a request *the page* made carries the page's ``file://``
network isolation key in Chromium's net log, so that is what
:func:`page_requests` keeps.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

#: Seconds a headless Chromium run may take before the test fails.
BROWSER_TIMEOUT = 120
#: Flags for a quiet, sandbox-free (root in CI containers) headless browser.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_browser(page: Path, *args: str) -> str:
    """Run Chromium on ``page`` with extra flags; returns its stdout."""
    browser = chromium()
    assert browser is not None
    result = subprocess.run(
        [browser, *FLAGS, *args, page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT,
        check=True,
    )
    return result.stdout


def screenshot(page: Path, png: Path, width: int = 1200, height: int = 3800) -> None:
    run_browser(page, f"--window-size={width},{height}", f"--screenshot={png}")


def dump_dom(page: Path, net_log: Path) -> str:
    """The DOM after load; Chromium's net log of the visit goes to ``net_log``."""
    return run_browser(page, f"--log-net-log={net_log}", "--dump-dom")


def page_requests(net_log: Path) -> list[str]:
    """URLs the page itself requested (not ``data:``/``file:``), from the net log."""
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] != start_job or "url" not in params:
            continue
        if "file://" in params.get("network_isolation_key", "") and not params["url"].startswith(
            ("data:", "file:")
        ):
            urls.append(params["url"])
    return urls
