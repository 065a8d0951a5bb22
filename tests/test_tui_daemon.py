"""geo-tui against a real daemon running the real demo pipeline (Pilot, no mock server).

One daemon per module (its own state dir and short socket path), the real
``pipeline.worker`` on the demo layers with small windows. The run is paused
between tests so it neither finishes early nor eats the two cores the app
needs; a test that wants activity resumes it and pauses it again.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import write_demo_config
from tests.daemon_harness import DaemonHarness
from tests.tui_support import pilot_test
from tui import connection
from tui.app import GeodApp
from tui.connection import Backoff
from tui.screens.confirm_kill import ConfirmKill
from tui.screens.help import HelpScreen
from tui.widgets.banner import ConnectionBanner
from tui.widgets.log_view import LogView
from tui.widgets.memory_chart import MemoryChart
from tui.widgets.run_map import RunMapPanel
from tui.widgets.runs_table import RunsTable
from tui.widgets.stage_tree import StageTree

SIZE = (120, 40)
#: The issue's bound: a pause shows as paused within a second of the key press.
PAUSE_VISIBLE_S = 1.0
#: Bound for anything else asynchronous (worker start, a page of logs, a reconnect).
WAIT_S = 60.0
#: Daemon falls back to SIGSTOP after this: a pause is visible even between windows.
PAUSE_GRACE_S = 0.5
#: Fast reconnects so the outage test does not sit in backoff.
FAST_BACKOFF = Backoff(first=0.1, ceiling=0.5)
SMALL_WINDOWS = {"window_size": 512, "threads": 1}
#: A budget below the worker's RSS: the governor shrinks the window and says so at
#: WARNING level, so the level filter and the chart's levels have real material.
TIGHT_MEMORY = {"budget": "96MiB", "reduced_window": 256, "min_window": 256}


@pytest.fixture(scope="module")
def daemon(
    demo_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DaemonHarness, str]]:
    """The daemon and one demo run, paused once its resample stage has produced logs."""
    tmp = tmp_path_factory.mktemp("tui-daemon")
    harness = DaemonHarness(
        tmp,
        worker_command=[sys.executable, "-m", "pipeline.worker"],
        pause_grace=PAUSE_GRACE_S,
        concurrency=2,
    )
    harness.start()
    try:
        config = write_demo_config(tmp, demo_dir, resampling=SMALL_WINDOWS, memory=TIGHT_MEMORY)
        run_id = harness.submit(config)
        harness.wait(run_id, lambda run: (run["stage"] or "").startswith("resample/"), WAIT_S)
        harness.call("runs.pause", run=run_id)
        harness.wait(run_id, "paused")
        yield harness, run_id
    finally:
        harness.cleanup()


def attached(harness: DaemonHarness, run_id: str | None = None) -> GeodApp:
    return GeodApp(socket_path=harness.socket_path, run=run_id, backoff=FAST_BACKOFF)


async def until(pilot, predicate: Callable[[], bool], timeout: float = WAIT_S) -> float:
    """Let the app run until ``predicate`` holds; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        await pilot.pause(0.02)
    return time.monotonic() - start


def _cell_seconds(table: RunsTable, run_id: str) -> int:
    """The Elapsed cell (``1m 05s``, ``7s``) in seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    text = str(table.get_cell(run_id, "elapsed"))
    return sum(int(part[:-1]) * units[part[-1]] for part in text.split())


def _state(app: GeodApp, run_id: str) -> str:
    cell = app.query_one(RunsTable).get_cell(run_id, "state")
    return cell.plain


@pilot_test
async def test_attach_shows_runs_stage_tree_logs_and_memory(daemon) -> None:
    harness, run_id = daemon
    app = attached(harness)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.selected == run_id)
        view = app.state.runs[run_id]
        tree = app.query_one(StageTree)
        log = app.query_one(LogView)
        await until(pilot, lambda: bool(log.shown) and bool(view.memory))
        assert app.state.connection.state == "connected"
        assert app.state.connection.daemon_version
        assert "connected" in app.sub_title and "daemon" in app.sub_title
        assert _state(app, run_id).endswith("paused")
        # The tree mirrors the daemon's stages, with the run at the root.
        assert set(tree._by_stage) == set(view.stages)
        assert tree.root.data == "run"
        assert "resample" in tree._by_stage and tree._by_stage["resample"].is_expanded
        # The back-filled log holds the daemon's newest lines, in order, once each.
        seqs = [line.seq for line in log.shown]
        assert seqs == sorted(set(seqs))
        newest = harness.call("logs.tail", run=run_id, limit=1)[-1]
        assert seqs[-1] == newest["seq"]
        assert view.memory[-1].rss > 0


@pilot_test
async def test_pause_and_resume_keys(daemon) -> None:
    harness, run_id = daemon
    app = attached(harness, run_id)
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one(RunsTable)
        await until(pilot, lambda: app.selected == run_id and run_id in table.rows)
        await pilot.press("r")
        await until(pilot, lambda: _state(app, run_id) == "▶ running")
        assert harness.run(run_id)["state"] == "running"
        before = app.state.runs[run_id].applied_seq
        await until(pilot, lambda: app.state.runs[run_id].applied_seq > before)  # live events
        await pilot.press("p")
        took = await until(pilot, lambda: _state(app, run_id).startswith("‖ paused"))
        assert took < PAUSE_VISIBLE_S, f"paused showed after {took:.2f} s"
        assert harness.run(run_id)["state"] == "paused"


@pilot_test
async def test_level_stage_filters_and_search_on_live_logs(daemon) -> None:
    harness, run_id = daemon
    app = attached(harness, run_id)
    async with app.run_test(size=SIZE) as pilot:
        log = app.query_one(LogView)
        await until(pilot, lambda: app.state.runs.get(run_id) is not None and bool(log.shown))
        everything = list(log.shown)
        assert any(line.level == "INFO" for line in everything)
        for _ in range(2):
            await pilot.press("l")
        assert log.min_level == "WARNING"
        # What stays is exactly what the daemon itself returns for level=WARNING.
        daemon_view = harness.call("logs.tail", run=run_id, limit=10_000, level="WARNING")
        held = {line.seq for line in everything}
        expected = [e["seq"] for e in daemon_view if e["seq"] in held]
        assert [line.seq for line in log.shown] == expected
        assert all(line.level != "INFO" for line in log.shown)
        for _ in range(2):
            await pilot.press("l")
        assert log.min_level == "DEBUG" and log.shown == everything
        # Stage filter from the tree's cursor.
        tree = app.query_one(StageTree)
        tree.focus()
        tree.move_cursor(tree._by_stage["catalog"])
        await pilot.press("s")
        assert log.stage_filter == "catalog"
        assert log.shown == [line for line in everything if line.stage == "catalog"]
        assert 0 < len(log.shown) < len(everything)
        await pilot.press("s")
        assert log.stage_filter is None and log.shown == everything
        # Search: the hits are exactly the rows whose message contains the term.
        term = "started"
        await pilot.press("slash", *term, "enter")
        hits = log.hits()
        assert hits == [i for i, line in enumerate(log.shown) if term in line.message]
        assert hits


@pilot_test
async def test_view_keys_on_a_live_run(daemon) -> None:
    """f, m, o, tab and ? on real data: they change the view, never the run."""
    harness, run_id = daemon
    app = attached(harness, run_id)
    async with app.run_test(size=SIZE) as pilot:
        log, chart = app.query_one(LogView), app.query_one(MemoryChart)
        view_of = lambda: app.state.runs.get(run_id)  # noqa: E731
        await until(pilot, lambda: view_of() is not None and bool(view_of().memory))
        await until(pilot, lambda: bool(log.shown))
        await pilot.press("f")
        assert not log.follow and "scroll held" in str(log.border_subtitle)
        await pilot.press("f")
        assert log.follow
        assert [line.seq for line in log.shown] == [line.seq for line in view_of().logs]
        # The chart plots the daemon's samples of this run; m changes the span only.
        await pilot.pause(0.6)
        # The readout and the legend live in the borders, outside the plot.
        assert str(chart.border_title).startswith("RSS ")
        assert "[ansi_green]━[/ansi_green] RSS" in str(chart.border_subtitle)
        for span in ("1 h", "whole run", "5 min"):
            await pilot.press("m")
            assert str(chart.border_subtitle).endswith(span)
        await pilot.press("o")
        assert app.query_one(RunsTable).sort_column == "name"
        await pilot.press("tab")
        assert app.focused is app.query_one(StageTree)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert harness.run(run_id)["state"] == "paused"


def _windows_in_history(run_dir: Path) -> dict[str, set[tuple[int, int]]]:
    """Every window position each dataset wrote, read straight from the run's history."""
    written: dict[str, set[tuple[int, int]]] = {}
    for line in (run_dir / "events.ndjson").read_text().splitlines():
        event = json.loads(line)
        if event.get("type") == "checkpoint" and event.get("row_off") is not None:
            written.setdefault(event["dataset"], set()).add((event["row_off"], event["col_off"]))
    return written


@pilot_test
async def test_map_shows_windows_written_before_attach(daemon) -> None:
    """The run wrote windows before the dashboard existed: the Map has them all at once."""
    harness, run_id = daemon
    expected = _windows_in_history(Path(harness.run(run_id)["run_dir"]))
    assert expected, "the fixture's run should have written windows before attaching"
    app = attached(harness, run_id)
    async with app.run_test(size=SIZE) as pilot:
        view_of = lambda: app.state.runs.get(run_id)  # noqa: E731
        await until(pilot, lambda: view_of() is not None and bool(view_of().map.datasets))
        run_map = view_of().map
        # Windows can only have been added since (the run is paused, but a resume by
        # another test is not excluded): at least everything the history held.
        for dataset, boxes in expected.items():
            got = {(row, col) for row, col, _, _ in run_map.datasets[dataset].writes}
            assert boxes <= got, dataset
        await pilot.press("w")
        panel = app.query_one(RunMapPanel)
        await until(pilot, lambda: panel.display and panel.size.height > 0)
        first = next(iter(expected))
        while panel.dataset is not None and panel.dataset.name != first:
            await pilot.press("left_square_bracket")  # go back to the first dataset
        counts = panel.dataset.counts()
        assert counts["done"] + counts["recomputed"] >= len(expected[first])


@pilot_test
async def test_scrolling_up_pages_older_lines_from_the_daemon(daemon, monkeypatch) -> None:
    harness, run_id = daemon
    # A demo run logs a few dozen lines: pages of two make the paging visible.
    monkeypatch.setattr(connection, "LOG_PAGE", 2)
    app = attached(harness, run_id)
    async with app.run_test(size=SIZE) as pilot:
        log = app.query_one(LogView)
        await until(pilot, lambda: len(log.shown) >= 2)
        oldest = log.shown[0].seq
        first_row_before = log.shown[0]
        log.focus()
        await pilot.press("home")  # leaves follow mode and hits the top: asks for older
        await until(pilot, lambda: log.shown[0].seq < oldest)
        assert not log.follow
        seqs = [line.seq for line in log.shown]
        assert seqs == sorted(set(seqs))
        expected = harness.call("logs.tail", run=run_id, limit=2, before_seq=oldest)
        assert [e["seq"] for e in expected] == seqs[: len(expected)]
        # The line the user was reading stays where it was, below the prepended page
        # (as far as the view can scroll: a short log fits on screen whole).
        assert log.scroll_y == min(seqs.index(first_row_before.seq), log.max_scroll_y)


@pilot_test
async def test_two_dashboards_see_the_same_actions(daemon) -> None:
    harness, run_id = daemon
    first, second = attached(harness, run_id), attached(harness, run_id)
    async with first.run_test(size=SIZE) as pilot_a, second.run_test(size=SIZE) as pilot_b:
        for app, pilot in ((first, pilot_a), (second, pilot_b)):
            await until(pilot, lambda app=app: run_id in app.query_one(RunsTable).rows)
        # The events pane has the changes from before either attached (the run was
        # queued, started and paused by the fixture) ...
        lines = lambda app: [strip.text for strip in app.events_pane.lines]  # noqa: E731
        mine = lambda app: [t.split(" ", 1)[1] for t in lines(app) if f" {run_id} " in t]  # noqa: E731
        await until(pilot_a, lambda: any(" paused" in t for t in mine(first)))
        assert f"{run_id} ◌ queued" in mine(first)[0] and "started" in mine(first)[1]
        await pilot_a.press("r")
        await until(pilot_b, lambda: _state(second, run_id) == "▶ running")
        await pilot_b.press("p")
        await until(pilot_a, lambda: _state(first, run_id).startswith("‖ paused"))

        # ... and both show the same lines for what happened since: resumed, paused (the
        # state column can show the pause before the events pane has its two lines).
        def since(app: object) -> bool:
            return len(mine(app)) > 3 and mine(app)[-2].endswith("resumed")

        await until(pilot_a, lambda: since(first) and since(second))
        await until(pilot_a, lambda: mine(first)[-2:] == mine(second)[-2:])
        assert mine(first)[-2].endswith("resumed") and " paused" in mine(first)[-1]
        assert lines(first) == lines(second)


@pilot_test
async def test_daemon_restart_banner_keeps_state_and_resyncs_without_duplicates(daemon) -> None:
    harness, run_id = daemon
    app = attached(harness, run_id)
    async with app.run_test(size=SIZE) as pilot:
        log = app.query_one(LogView)
        banner = app.query_one(ConnectionBanner)
        await until(pilot, lambda: bool(log.shown))
        assert not banner.display
        shown_before = list(log.shown)
        await until(pilot, lambda: app.state.runs[run_id].summary.progress > 0)
        before = app.state.runs[run_id].summary
        elapsed_before = app.state.elapsed(before) or 0.0
        harness.stop()  # graceful: the worker checkpoints and says so in its last lines
        await until(pilot, lambda: app.state.connection.state != "connected")
        await until(pilot, lambda: banner.display)
        assert "unreachable" in str(banner.content)
        # The last picture stays.
        assert app.query_one(RunsTable).row_count >= 1
        assert log.shown[: len(shown_before)] == shown_before
        harness.start()
        await until(pilot, lambda: app.state.connection.state == "connected")
        await until(pilot, lambda: not banner.display)
        # The new daemon logs its start-up for the run; resync brings those lines in once.
        await pilot.pause(0.5)
        seqs = [line.seq for line in app.state.runs[run_id].logs]
        assert seqs == sorted(set(seqs))
        shown = [line.seq for line in log.shown]
        assert shown == sorted(set(shown))
        # And the table agrees with the new daemon about the run.
        await until(pilot, lambda: _state(app, run_id).split()[1] == harness.run(run_id)["state"])
        # Progress and running time went through the restart and the resume: not back to
        # zero, never lower than what was on screen before.
        after = app.state.runs[run_id].summary
        assert after.progress >= before.progress
        assert (app.state.elapsed(after) or 0.0) >= elapsed_before


@pilot_test
async def test_kill_confirms_then_retry(daemon) -> None:
    harness, run_id = daemon
    app = attached(harness, run_id)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: run_id in app.query_one(RunsTable).rows)
        await pilot.press("k")
        assert isinstance(app.screen, ConfirmKill)
        await pilot.press("n")
        await pilot.pause(0.3)
        assert harness.run(run_id)["state"] != "killed"  # cancelled: nothing sent
        await pilot.press("K")
        await pilot.press("y")
        await until(pilot, lambda: _state(app, run_id) == "✖ killed")
        killed = app.state.runs[run_id].summary
        worked = app.state.elapsed(killed) or 0.0
        assert worked > 0
        await pilot.press("R")
        await until(pilot, lambda: _state(app, run_id) == "▶ running")
        # The retry continues the run: STARTED stays the first start, Elapsed goes on
        # from what it had worked (the table shows the same figure).
        retried = app.state.runs[run_id].summary
        assert retried.started == killed.started
        assert (app.state.elapsed(retried) or 0.0) >= worked
        table = app.query_one(RunsTable)
        await until(pilot, lambda: _cell_seconds(table, run_id) >= int(worked))
        # The events pane says what happened, in order.
        lines = [strip.text for strip in app.events_pane.lines if f" {run_id} " in strip.text]
        assert "killed" in lines[-3] and "queued" in lines[-2] and "started" in lines[-1]
        harness.call("runs.kill", run=run_id, force=True)
        await until(pilot, lambda: _state(app, run_id) == "✖ killed")
