"""End to end as a user does it: ``geod start``, ``geo-tui attach`` in tmux, keys, detach.

Everything is the installed entry points in real processes: the daemon that
``geod start`` puts in the background, the dashboard in a 120×40 tmux pane
(tmux's own TERM, so no true colour), keys sent with ``send-keys`` and the
screen read back with ``capture-pane``. After ``q`` the dashboard is gone and
the run must still be making progress.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import write_demo_config

SCRIPTS = Path(sysconfig.get_path("scripts"))
GEOD = str(SCRIPTS / "geod")
GEO_TUI = str(SCRIPTS / "geo-tui")
WIDTH, HEIGHT = 120, 40
#: Bound for the screen to show what a key should have changed.
SCREEN_TIMEOUT = 30.0
#: How often the screen (a ``capture-pane``) is read while waiting for it to change.
POLL = 0.05
#: A pause between two keys whose second should find the first one's effect on screen.
KEY_GAP = 0.2

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")


class Tmux:
    """One private tmux server (``-L``) so the test never touches a user's sessions."""

    def __init__(self) -> None:
        self.server = f"geod-test-{uuid.uuid4().hex[:8]}"

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-L", self.server, *args], capture_output=True, text=True, timeout=30
        )

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "tui").stdout

    def keys(self, *keys: str) -> None:
        assert self("send-keys", "-t", "tui", *keys).returncode == 0

    def wait_screen(self, predicate: Callable[[str], bool], what: str) -> str:
        deadline = time.monotonic() + SCREEN_TIMEOUT
        while True:
            text = self.screen()
            if predicate(text):
                return text
            assert time.monotonic() < deadline, f"screen never showed {what}:\n{text}"
            time.sleep(POLL)

    def start(self, command: str, width: int, height: int) -> None:
        """A ``width`` × ``height`` pane, then ``command`` typed into it, as a user would.

        The command starts only once tmux reports the pane's size: a detached
        session may begin at tmux's default 80×24 and be resized a moment later,
        and a program started in that moment reads the old size.
        """
        size = ("-x", str(width), "-y", str(height))
        assert self("new-session", "-d", "-s", "tui", *size).returncode == 0
        deadline = time.monotonic() + SCREEN_TIMEOUT
        wanted = f"{width}x{height}"
        while (
            self("display", "-p", "-t", "tui", "#{pane_width}x#{pane_height}").stdout.strip()
            != wanted
        ):
            assert time.monotonic() < deadline, f"the tmux pane never became {wanted}"
            time.sleep(POLL)
        self.keys(f"exec {command}", "Enter")

    def detach(self) -> None:
        """``q``, then wait for the dashboard to be gone."""
        self.keys("q")
        deadline = time.monotonic() + SCREEN_TIMEOUT
        while self.alive():
            assert time.monotonic() < deadline, "q did not end the dashboard"
            time.sleep(POLL)

    def alive(self) -> bool:
        return self("has-session", "-t", "tui").returncode == 0


@pytest.fixture()
def geod_env(demo_dir: Path) -> Iterator[tuple[dict[str, str], Path]]:
    root = Path(tempfile.mkdtemp(prefix="geod-tmux-", dir="/tmp"))  # short socket path
    settings = root / "xdg" / "geod" / "geod.yml"
    settings.parent.mkdir(parents=True)
    settings.write_text("telemetry: false\npause_grace: 1.0\n")
    env = dict(
        os.environ,
        GEOD_STATE_DIR=str(root / "state"),
        GEOD_SOCKET=str(root / "geod.sock"),
        XDG_CONFIG_HOME=str(root / "xdg"),
    )
    env.pop("NOTIFY_SOCKET", None)
    config = write_demo_config(root, demo_dir, resampling={"window_size": 256, "threads": 1})
    yield env, config
    # The demo run is still going: end it first (SIGKILL), so the stop below need not
    # wait for its worker to reach a checkpoint. Nothing is checked after the test.
    subprocess.run([GEOD, "kill", "--all", "--force"], env=env, capture_output=True, timeout=90)
    subprocess.run([GEOD, "stop", "--timeout", "60"], env=env, capture_output=True, timeout=90)
    shutil.rmtree(root, ignore_errors=True)


def _geod(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([GEOD, *args], env=env, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _run_row(text: str, run_id: str) -> str:
    return next((line for line in text.splitlines() if f" {run_id} " in line), "")


def test_attach_keys_and_detach_in_tmux(geod_env) -> None:
    env, config = geod_env
    run_id = _geod(env, "start", str(config))
    tmux = Tmux()
    exports = " ".join(f"{k}={env[k]}" for k in ("GEOD_SOCKET", "GEOD_STATE_DIR"))
    command = f"env {exports} {GEO_TUI} attach"
    try:
        tmux.start(command, WIDTH, HEIGHT)
        screen = tmux.wait_screen(
            lambda text: "▶ running" in _run_row(text, run_id), "the running run"
        )
        assert "connected" in screen and "Stages" in screen and "Log" in screen, screen

        tmux.keys("p")
        tmux.wait_screen(lambda text: "‖ paused" in _run_row(text, run_id), "paused")
        tmux.keys("r")
        tmux.wait_screen(lambda text: "▶ running" in _run_row(text, run_id), "running again")

        tmux.keys("?")
        tmux.wait_screen(lambda text: "geo-tui keys" in text, "the help screen")
        tmux.keys("Escape")
        tmux.wait_screen(lambda text: "geo-tui keys" not in text, "help closed")

        tmux.keys("k")
        tmux.wait_screen(lambda text: f"Kill run {run_id}?" in text, "the kill confirmation")
        tmux.keys("n")
        tmux.wait_screen(lambda text: "Kill run" not in text, "the dialog closed")

        tmux.keys("l")
        tmux.wait_screen(lambda text: "≥INFO" in text, "the level filter in the log title")

        tmux.detach()
    finally:
        tmux("kill-server")

    # Detaching left the run alone: it is still going (or already done), never stopped.
    run = _status(env, run_id)
    assert run["state"] in ("running", "done"), run
    first = float(run["progress"])
    deadline = time.monotonic() + SCREEN_TIMEOUT
    while float(_status(env, run_id)["progress"]) <= first and first < 1.0:
        assert time.monotonic() < deadline, "the run made no progress after detaching"
        time.sleep(POLL)


def test_attach_at_80x24_one_panel_at_a_time_help_visible(geod_env) -> None:
    """At 80×24: the footer keeps ``? Help``, the table fits, the body shows one panel, tab
    and ``w`` switch (map, events, log), ``:`` filters the runs."""
    env, config = geod_env
    run_id = _geod(env, "start", str(config))
    tmux = Tmux()
    exports = " ".join(f"{k}={env[k]}" for k in ("GEOD_SOCKET", "GEOD_STATE_DIR"))
    try:
        tmux.start(f"env {exports} {GEO_TUI} attach", 80, 24)
        screen = tmux.wait_screen(
            lambda text: "▶ running" in _run_row(text, run_id), "the running run"
        )
        footer = [line for line in screen.splitlines() if line.strip()][-1]
        assert "? Help" in footer, footer
        assert "Stages" in screen and "Log" not in screen  # one body panel at a time
        # The runs table fits: no cell cut at the border ("176.6 Mi"), no sideways scroll.
        table = screen.split("Stages")[0]
        assert not re.search(r"\d Mi│|\d M│", table), table
        header = next(line for line in table.splitlines() if "Run" in line and "State" in line)
        last = header.strip("│ ").split()[-1]
        assert last in {"Name", "State", "Done", "Elapsed", "ETA", "Stage", "RSS", "Peak", "Why"}
        assert all(len(line) <= 80 for line in table.splitlines())
        tmux.keys("Tab")  # runs → stages (the panel already shown)
        time.sleep(KEY_GAP)
        tmux.keys("Tab")  # stages → memory
        tmux.wait_screen(lambda text: "RSS " in text and "Stages" not in text, "the memory panel")
        tmux.keys("w")
        tmux.wait_screen(lambda text: "Map" in text, "the map panel")
        tmux.keys("Tab")  # map → events: the run's changes, from before we attached too
        tmux.wait_screen(
            lambda text: "Events" in text and f"{run_id} ▶ started" in text, "the events pane"
        )
        tmux.keys("Tab")
        tmux.wait_screen(lambda text: "Log" in text and "Map" not in text, "the log panel")
        # ':' filters the runs table by state; escape in the table clears it.
        tmux.keys(":")
        tmux.wait_screen(lambda text: "filter runs" in text, "the filter prompt")
        tmux.keys("done", "Enter")
        tmux.wait_screen(lambda text: ":done (" in text, "the filter in the table's title")
        assert _run_row(tmux.screen(), run_id) == "" or _status(env, run_id)["state"] == "done"
        tmux.keys("Escape")
        tmux.wait_screen(lambda text: ":done" not in text and run_id in text, "the filter cleared")
        tmux.detach()
    finally:
        tmux("kill-server")


def _status(env: dict[str, str], run_id: str) -> dict:
    return json.loads(_geod(env, "status", run_id, "--json"))
