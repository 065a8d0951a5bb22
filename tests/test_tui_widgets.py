"""Pilot tests of every panel and key on a fixed recorded state (no daemon).

The same keys are exercised against a real daemon in ``test_tui_daemon.py``;
here the state is deterministic so exact contents can be asserted: what each
filter keeps, which node is open, what a search hits.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.text import Text
from textual.widgets._footer import FooterKey
from textual_plotext import Plot

from pipeline.events import GovernorEvent, LogEvent, StageEvent
from supervisor.protocol import RunSummary
from tests import tui_recording as rec
from tests.tui_support import loaded_state, pilot_test, replay_app, until
from tui import app as tui_app
from tui.app import GeodApp
from tui.bindings import COMMANDS
from tui.connection import Backoff
from tui.screens.confirm_kill import ConfirmKill, kill_question
from tui.screens.help import HelpScreen
from tui.widgets.banner import ConnectionBanner
from tui.widgets.log_view import LogView
from tui.widgets.memory_chart import (
    COLORS,
    MemoryChart,
    readout,
    set_xticks,
    size_ticks,
    time_ticks,
)
from tui.widgets.runs_table import SORT_COLUMNS, RunsTable
from tui.widgets.stage_tree import StageTree

SIZE = (120, 40)


def _cell(table: RunsTable, run: str, column: str) -> str:
    value = table.get_cell(run, column)
    return value.plain if isinstance(value, Text) else str(value)


@pilot_test
async def test_runs_table_shows_state_symbols_and_selects_the_active_run() -> None:
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        table = app.query_one(RunsTable)
        assert table.row_count == 2
        assert _cell(table, rec.RUN, "state") == "▶ running"
        assert _cell(table, rec.OTHER, "state") == "✘ failed"
        assert _cell(table, rec.RUN, "progress").strip() == "42.0%"
        assert _cell(table, rec.RUN, "elapsed") == "1m 00s"
        assert _cell(table, rec.RUN, "rss").strip() == "610.0 MiB"
        assert app.selected == rec.RUN
        # Selecting the other row re-points every panel.
        await pilot.press("down")
        await pilot.pause()
        assert app.selected == rec.OTHER
        assert app.query_one(StageTree).run_id == rec.OTHER
        assert app.query_one(LogView).run_id == rec.OTHER


@pilot_test
async def test_runs_table_sorts_by_header_click_and_key() -> None:
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        table = app.query_one(RunsTable)
        order = lambda: [row.key.value for row in table.ordered_rows]  # noqa: E731
        assert order() == [rec.RUN, rec.OTHER]
        labels = lambda: [column.label.plain for column in table.columns.values()]  # noqa: E731
        assert labels()[0] == "Run ▲"
        table.cycle_sort("rss")  # what a click on the RSS header does
        assert "RSS ▲" in labels() and labels()[0] == "Run"
        # The running run stays pinned above the failed one whichever way RSS sorts.
        assert order() == [rec.RUN, rec.OTHER]
        table.cycle_sort("rss")  # second click reverses
        assert "RSS ▼" in labels()
        assert order() == [rec.RUN, rec.OTHER]
        await pilot.press("o")  # the key moves to the next column
        assert table.sort_column == "peak"
        # The selection follows its run, not its row index.
        assert app.selected == rec.RUN and table.selected_run == rec.RUN


def _finished(run_id: str, peak_mib: int) -> RunSummary:
    return RunSummary(
        id=run_id,
        name=f"old-{run_id}",
        state="done",
        progress=1.0,
        started=rec.T0 - 900,
        finished=rec.T0 - 800,
        rss=5 * 1024 * 1024,
        peak_rss=peak_mib * 1024 * 1024,
    )


@pilot_test
async def test_runs_table_pins_active_runs_and_explains_queued_ones() -> None:
    app = replay_app()
    async with app.run_test(size=(160, 48)) as pilot:  # every column fits
        await pilot.pause()
        table = app.query_one(RunsTable)
        state = app.state
        state.connection.concurrency = 1
        for run_id, peak in (("r0", 900), ("r3", 100)):
            state.apply_run(_finished(run_id, peak))
        state.apply_run(RunSummary(id="r4", name="waiting", state="queued"))
        await until(pilot, lambda: table.row_count == 5)
        order = lambda: [row.key.value for row in table.ordered_rows]  # noqa: E731
        # Live runs (running, queued) above finished ones, each group by id.
        assert order() == [rec.RUN, "r4", "r0", rec.OTHER, "r3"]
        table.cycle_sort("peak")
        # No peak yet (queued, failed early) sorts lowest; descending reverses each group.
        assert order() == ["r4", rec.RUN, rec.OTHER, "r3", "r0"]
        table.cycle_sort("peak")
        assert order() == [rec.RUN, "r4", "r0", "r3", rec.OTHER]
        # The queued run says why it waits; a finished run shows no current RSS.
        assert _cell(table, "r4", "why") == "slot 1/1 busy"
        # The daemon's own reason wins: the memory broker holds it back.
        reason = "waiting for memory: needs ~3.1 GiB, 1.4 GiB free of the host budget"
        state.apply_run(RunSummary(id="r4", name="waiting", state="queued", wait_reason=reason))
        # (cut to the column's width with "…": the whole reason is in the run's detail)
        await until(pilot, lambda: _cell(table, "r4", "why").startswith("waiting for memory: "))
        assert _cell(table, "r0", "rss").strip() == "-"
        assert _cell(table, "r0", "peak").strip() == "900.0 MiB"
        # End and Home go to the last and first run.
        table.focus()
        await pilot.press("end")
        assert table.selected_run == order()[-1]
        await pilot.press("home")
        assert table.selected_run == order()[0]


@pilot_test
async def test_runs_table_fits_80_columns_without_scrolling_sideways() -> None:
    """80×24: no sideways scrolling, and a long wait reason never costs Elapsed and RSS."""
    app = replay_app()
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.runs_table
        await until(pilot, lambda: table.row_count == 2)
        fits = lambda: table.virtual_size.width <= table.size.width  # noqa: E731
        await until(pilot, fits)
        assert table.max_scroll_x == 0
        # Peak and stage are the first to go; RSS is whole (not "176.6 Mi").
        assert "peak" not in table.shown_columns and "stage" not in table.shown_columns
        assert {"id", "state", "progress", "eta", "rss"} <= set(table.shown_columns)
        assert _cell(table, rec.RUN, "rss").strip() == "610.0 MiB"
        # A queued run: its WHY is shown, cut to the room left beside Elapsed and RSS.
        reason = "waiting for a free slot (concurrency 2)"
        app.state.apply_run(RunSummary(id="r4", name="waiting", state="queued", wait_reason=reason))
        await until(pilot, lambda: "why" in table.shown_columns and table.row_count == 3)
        await until(pilot, fits)
        assert {"elapsed", "rss"} <= set(table.shown_columns)
        why = _cell(table, "r4", "why")
        assert why.endswith("…") and reason.startswith(why[:-1])
        # Room again: every column comes back, the reason cut only at the longest WHY.
        await pilot.resize_terminal(220, 60)
        await until(pilot, lambda: len(table.shown_columns) == len(SORT_COLUMNS))
        assert _cell(table, rec.RUN, "stage") == "resample/landcover"
        assert _cell(table, "r4", "why") == reason[:27] + "…"


@pilot_test
async def test_eta_is_a_clock_time_with_a_range_and_blank_once_final() -> None:
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        table = app.query_one(RunsTable)
        summary = app.state.runs[rec.RUN].summary
        clock = time.strftime("%H:%M", time.localtime(summary.eta_at))
        assert _cell(table, rec.RUN, "eta") == f"≈ {clock} ±20 s"
        done = summary.model_copy(
            update={"state": "done", "eta": None, "eta_at": None, "running_since": None}
        )
        app.state.apply_run(done)
        await until(pilot, lambda: _cell(table, rec.RUN, "eta") == "")
        assert _cell(table, rec.RUN, "rss").strip() == "-"


@pilot_test
async def test_header_click_sorts() -> None:
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        table = app.query_one(RunsTable)
        # Border (1 cell), then the Run and Name columns: land inside "State".
        widths = [column.get_render_width(table) for column in table.columns.values()]
        offset = 1 + widths[0] + widths[1]
        await pilot.click(RunsTable, offset=(offset + 3, 1))
        await pilot.pause()
        assert table.sort_column == "state"


@pilot_test
async def test_stage_tree_expands_the_active_branch_and_shows_failures() -> None:
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        tree = app.query_one(StageTree)
        nodes = tree._by_stage
        assert nodes["resample"].is_expanded
        assert nodes["resample/landcover"].parent is nodes["resample"]
        label = nodes["resample/landcover"].label.plain
        assert label.endswith("5/8 windows · 1.0/s")
        # The root carries the run's progress and its one ETA, as a clock time.
        summary = app.state.runs[rec.RUN].summary
        clock = time.strftime("%H:%M", time.localtime(summary.eta_at))
        assert tree.root.label.plain.endswith(f"done ≈ {clock} (±20 s)")
        failed = nodes["merge"].label
        assert "merge: disk full writing part-0003" in failed.plain
        assert any("red" in str(span.style) for span in failed.spans)
        assert nodes["resample/richness"].label.plain.startswith("✔")


@pilot_test
async def test_paused_run_shows_pause_marks_and_no_rate_and_its_clock_stops() -> None:
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        tree = app.query_one(StageTree)
        table = app.query_one(RunsTable)
        summary = app.state.runs[rec.RUN].summary
        paused = summary.model_copy(
            update={"state": "paused", "running_time": 60.0, "running_since": None}
        )
        app.state.apply_run(paused)
        landcover = tree._by_stage["resample/landcover"]
        await until(pilot, lambda: landcover.label.plain.startswith("‖"))
        assert "/s" not in landcover.label.plain and "done ≈" not in tree.root.label.plain
        elapsed = _cell(table, rec.RUN, "elapsed")
        app.state.clock = lambda: rec.T0 + 500  # time passes while paused
        table.tick()
        assert _cell(table, rec.RUN, "elapsed") == elapsed == "1m 00s"


@pilot_test
async def test_stage_tree_updates_incrementally() -> None:
    state = loaded_state()
    app = GeodApp(state=state, connect=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        tree = app.query_one(StageTree)
        node = tree._by_stage["resample/landcover"]
        richness = tree._by_stage["resample/richness"]
        richness_label = richness.label
        seq = state.runs[rec.RUN].applied_seq
        state.apply_event(
            StageEvent(
                run=rec.RUN,
                seq=seq + 1,
                time=rec.T0 + 30,
                id="resample/landcover",
                parent="resample",
                kind="dataset",
                name="landcover",
                status="done",
                done=8,
                total=8,
            )
        )
        await until(pilot, lambda: node.label.plain.startswith("✔"))
        assert tree._by_stage["resample/landcover"] is node  # same node, relabelled
        assert "8/8" in node.label.plain
        assert not node.is_expanded  # auto-opened while running, closed when done
        assert richness.label is richness_label  # untouched sibling not relabelled


@pilot_test
async def test_log_level_filter_key() -> None:
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        log = app.query_one(LogView)
        levels = lambda: {line.level for line in log.shown}  # noqa: E731
        assert "DEBUG" in levels()
        await pilot.press("l")
        assert log.min_level == "INFO" and "DEBUG" not in levels() and "INFO" in levels()
        await pilot.press("l")
        assert levels() == {"WARNING", "ERROR"}
        await pilot.press("l")
        assert levels() == {"ERROR"}
        await pilot.press("l")
        assert log.min_level == "DEBUG"
        assert "≥DEBUG" in str(log.border_subtitle)


@pilot_test
async def test_log_stage_filter_follows_the_tree_cursor() -> None:
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        tree = app.query_one(StageTree)
        tree.focus()
        tree.move_cursor(tree._by_stage["resample/landcover"])
        await pilot.press("s")
        log = app.query_one(LogView)
        assert log.stage_filter == "resample/landcover"
        assert log.shown and all(
            line.dataset == "landcover" or line.stage == "resample/landcover" for line in log.shown
        )
        await pilot.press("s")  # again: all stages
        assert log.stage_filter is None
        assert len(log.shown) == len(app.state.runs[rec.RUN].logs)


@pilot_test
async def test_search_highlights_and_jumps() -> None:
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        log = app.query_one(LogView)
        await pilot.press("slash")
        assert app.focused is app.query_one("#search")
        await pilot.press(*"window 3/8")
        await pilot.press("enter")
        await pilot.pause()
        hits = log.hits()
        assert [log.shown[row].message for row in hits] == [
            "richness: window 3/8 written",
            "endemism: window 3/8 written",
            "landcover: window 3/8 written",
        ]
        assert not log.follow  # a search freezes the view
        assert app.focused is log
        # Like less's backward search from the bottom: the newest hit first, n wraps.
        assert log.current_hit == hits[-1]
        await pilot.press("n")
        assert log.current_hit == hits[0]
        await pilot.press("n")
        assert log.current_hit == hits[1]
        await pilot.press("N")
        assert log.current_hit == hits[0]
        # Highlight is in the rendered strips: the hit row carries the search style.
        row = list(log.row_strip(hits[0]))
        highlighted = [seg.text for seg in row if seg.style and seg.style.reverse]
        assert highlighted == ["window 3/8"]
        assert not any(seg.style and seg.style.reverse for seg in log.row_strip(0))


@pilot_test
async def test_follow_toggle_freezes_and_resumes() -> None:
    state = loaded_state()
    app = GeodApp(state=state, connect=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        log = app.query_one(LogView)
        shown = len(log.shown)
        await pilot.press("f")
        assert not log.follow
        seq = state.runs[rec.RUN].applied_seq
        for offset in range(1, 4):
            state.apply_event(
                LogEvent(run=rec.RUN, seq=seq + offset, level="INFO", logger="t", message="new")
            )
        await until(pilot, lambda: "+3 new" in str(log.border_subtitle))
        # The new lines join below; what is being read does not move.
        top = log.scroll_y
        assert len(log.shown) == shown + 3 and log.scroll_y == top
        assert "scroll held" in str(log.border_subtitle) and "paused" not in str(
            log.border_subtitle
        )
        await pilot.press("f")
        assert log.follow and len(log.shown) == shown + 3
        assert log.scroll_y == log.max_scroll_y


@pilot_test
async def test_search_counts_lines_that_arrive_while_searching() -> None:
    state = loaded_state()
    app = GeodApp(state=state, connect=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        log = app.query_one(LogView)
        assert log.set_search("zebra-crossing") == 0
        assert "(0 hits)" in str(log.border_subtitle)
        seq = state.runs[rec.RUN].applied_seq
        message = "a zebra-crossing appeared"
        state.apply_event(
            LogEvent(run=rec.RUN, seq=seq + 1, level="INFO", logger="t", message=message)
        )
        await until(pilot, lambda: "(1 hit)" in str(log.border_subtitle))
        assert log.jump(1) == len(log.shown) - 1


@pilot_test
async def test_empty_filter_says_so_and_stage_filter_resets_per_run() -> None:
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        log = app.query_one(LogView)
        log.set_stage_filter("export-that-never-ran")
        await pilot.pause()
        assert not log.shown
        assert log.empty_message() == (
            "no lines in stage export-that-never-ran — s clears the stage"
        )
        assert "no lines" in "".join(seg.text for seg in log.render_line(0))
        app.select_run(rec.OTHER)
        assert log.stage_filter is None  # another run's stage ids mean nothing here
        log.set_stage_filter("catalog")
        await pilot.press("S")  # pinned: it survives the next selection
        app.select_run(rec.RUN)
        assert log.stage_filter == "catalog" and "(pinned)" in str(log.border_subtitle)


@pilot_test
async def test_long_lines_say_they_scroll_sideways() -> None:
    state = loaded_state()
    app = GeodApp(state=state, connect=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        log = app.query_one(LogView)
        seq = state.runs[rec.RUN].applied_seq
        state.apply_event(
            LogEvent(run=rec.RUN, seq=seq + 1, level="INFO", logger="t", message="x" * 300)
        )
        await until(pilot, lambda: "→ more" in str(log.border_subtitle))


@pilot_test
async def test_kill_asks_for_confirmation_and_cancel_keeps_the_run() -> None:
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("k")
        assert isinstance(app.screen, ConfirmKill)
        assert not app.screen.force
        await pilot.press("n")
        assert not isinstance(app.screen, ConfirmKill)
        await pilot.press("K")
        assert isinstance(app.screen, ConfirmKill) and app.screen.force
        await pilot.press("escape")
        assert not isinstance(app.screen, ConfirmKill)


def test_kill_question_depends_on_the_state() -> None:
    queued = kill_question("r7", "queued", force=False)
    assert "current window" not in queued and "nothing is lost" in queued
    assert "current window" in kill_question("r7", "running", force=False)
    assert "SIGKILL" in kill_question("r7", "running", force=True)
    assert "paused" in kill_question("r7", "paused", force=False)


@pilot_test
async def test_help_lists_every_key_and_closes() -> None:
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


@pilot_test
async def test_command_palette_has_an_entry_per_action() -> None:
    app = replay_app()
    async with app.run_test(size=SIZE):
        titles = [command.title for command in app.get_system_commands(app.screen)]
        for command in COMMANDS:
            assert any(title.startswith(command.title) for title in titles), command.title
        # geod's own actions come first, Textual's built-ins after them.
        ours = len(COMMANDS)
        assert [t.split(" (")[0] for t in titles[:ours]] == [c.title for c in COMMANDS]
        assert {"Pause all", "Resume all"} <= set(titles[:ours])
        assert any(t in ("Screenshot", "Quit", "Theme", "Keys") for t in titles[ours:])


@pilot_test
async def test_narrow_terminal_shows_one_panel_at_a_time_and_tab_switches() -> None:
    app = replay_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        panels = (app.stage_tree, app.memory_chart, app.events_pane, app.log_view)
        visible = lambda: [p.id for p in panels if p.region.area]  # noqa: E731
        assert visible() == ["stages"]
        assert app.stage_tree.region.width >= 76  # the whole width, not 45 % of it
        await pilot.press("tab")  # runs → stages
        await pilot.press("tab")
        await pilot.pause()
        assert visible() == ["memory"] and app.focused is app.memory_chart
        await pilot.press("tab")
        await pilot.pause()
        assert visible() == ["events"] and app.focused is app.events_pane
        await pilot.press("tab")
        await pilot.pause()
        assert visible() == ["log"]
        await pilot.resize_terminal(160, 48)
        await pilot.pause()
        assert visible() == ["stages", "memory", "events", "log"]


@pilot_test
async def test_footer_keeps_help_visible_at_80x24() -> None:
    app = replay_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        keys = [key for key in app.query(FooterKey) if key.key == "question_mark"]
        assert keys, "no ? key in the footer"
        region = keys[0].region
        assert region.width > 0 and region.right <= 80
        assert "Help" in str(keys[0].render())


@pilot_test
async def test_memory_chart_span_cycles_and_draws_levels() -> None:
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.6)
        chart = app.query_one(MemoryChart)
        assert chart.span_label == "5 min"
        await pilot.press("m")
        assert chart.span_label == "1 h"
        await pilot.press("m")
        assert chart.span_label == "whole run"
        await pilot.press("m")
        assert chart.span_label == "5 min"
        built = chart.plt.build()
        # The legend is in the border, outside the plot; each series has its own colour.
        legend = str(chart.border_subtitle)
        for name in ("RSS", "budget", "warning", "critical", "window px"):
            assert name in legend and name not in built
        assert len(set(COLORS.values())) == len(COLORS)

        # Free memory (2.9 GiB) is above the worker's range (budget 2 GiB): stated, not drawn.
        assert "avail" not in legend.split("·")[0]
        assert "avail 2.9 GiB" in legend
        # Sizes on the y axis, clock times on the x axis, whole window sizes on the right.
        assert "GiB" in built or "MiB" in built
        sizes = {s.window_size for s in app.state.runs[rec.RUN].worker_memory if s.window_size}
        assert sizes and all(f"┤{size}" in built or f"├{size}" in built for size in sizes)
        assert not re.search(r"├\d+\.\d", built), built
        assert re.search(r"\d\d:\d\d:\d\d", built), built
        # The readout quotes the numbers behind the lines.
        assert re.fullmatch(
            r"RSS [\d.]+ MiB · peak [\d.]+ MiB · budget 2\.0 GiB \(\d+ %\)",
            str(chart.border_title),
        )


@pilot_test
async def test_memory_lines_have_the_colours_their_legend_shows() -> None:
    """Each series is painted in its legend's colour: plotext and the legend read the same
    standard colour number (plotext has no "yellow": a name it does not know is painted
    in its next default colour, which once made the warning line purple)."""
    app = replay_app()
    async with app.run_test(size=(160, 48)) as pilot:  # room for every level line
        await pilot.pause(0.6)
        chart = app.memory_chart
        chart.redraw()
        await pilot.pause()
        legend = str(chart.border_subtitle)
        painted = {
            segment.style.color.number
            for y in range(chart.size.height)
            for segment in chart.render_line(y)
            if segment.style and segment.style.color and segment.text.strip()
            if not segment.text.strip("▀▄▖▗▘▝▚▞▐▌")
        }
        ansi = ("black", "red", "green", "yellow", "blue", "magenta", "cyan", "white")
        for name in ("RSS", "budget", "warning", "critical", "window px"):
            assert COLORS[name] in painted, name
            bright = "bright_" if COLORS[name] >= len(ansi) else ""
            assert f"[ansi_{bright}{ansi[COLORS[name] % len(ansi)]}]━" in legend, name


def test_memory_chart_ticks_read_as_clock_times_and_sizes() -> None:
    now = 1_767_225_600.0 + 3600  # 01:00:00 UTC
    ticks, labels = time_ticks(-300.0, now)
    assert ticks == [-300.0, -225.0, -150.0, -75.0, 0.0]
    assert labels == [time.strftime("%H:%M:%S", time.localtime(now + t)) for t in ticks]
    assert time_ticks(-7200.0, now, count=2)[1][0] == time.strftime(
        "%H:%M", time.localtime(now - 7200)
    )
    assert size_ticks(1024.0, count=3)[1] == ["0 B", "512.0 MiB", "1.0 GiB"]
    assert readout(174 * 1024**2, 732 * 1024**2, 1024**3) == (
        "RSS 174.0 MiB · peak 732.0 MiB · budget 1.0 GiB (17 %)"
    )


#: Draws the recorded chart's x axis (close labels at the right end) and prints it.
_AXIS_SCRIPT = """
from textual_plotext import Plot
from tui.widgets.memory_chart import set_xticks
plt = Plot()
plt.plot([-24.0, 0.0], [1.0, 2.0])
plt.xlim(-24.0, 0.0)
ticks = [-24.0, -18.0, -12.0, -6.0, 0.0]
set_xticks(plt, ticks, ["00:00:01", "00:00:07", "00:00:13", "00:00:19", "00:00:25"])
plt.plotsize(64, 12)
print(plt.build().splitlines()[-1])
"""


def test_memory_chart_axis_is_the_same_in_every_process() -> None:
    """plotext keeps ticks in string-hash order, which a new process changes; ours keeps them."""
    axes = {
        subprocess.run(
            [sys.executable, "-c", _AXIS_SCRIPT],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in range(6)
    }
    assert len(axes) == 1, axes


def test_set_xticks_keeps_the_order_given() -> None:
    plt = Plot()
    labels = ["a", "b", "c", "d", "e", "f"]
    set_xticks(plt, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], labels)
    assert plt.monitor.xlabels[plt.monitor.xside_to_pos(None)] == labels


@pilot_test
async def test_tab_cycles_panels() -> None:
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        seen = []
        for _ in range(5):
            await pilot.press("tab")
            seen.append(app.focused.id if app.focused else None)
        assert seen == ["stages", "memory", "events", "log", "runs"]


@pilot_test
async def test_mouse_selects_a_run() -> None:
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.click(RunsTable, offset=(3, 3))  # second data row (border, header, r1)
        await pilot.pause()
        assert app.selected == rec.OTHER


@pilot_test
async def test_actions_without_a_daemon_say_so() -> None:
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        await until(
            pilot, lambda: any("not attached" in str(n.message) for n in app._notifications)
        )


@pytest.mark.parametrize("size", [(80, 24), (200, 60)])
@pilot_test
async def test_small_and_large_terminals_and_resize(size: tuple[int, int]) -> None:
    app = replay_app()
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        await pilot.resize_terminal(100, 30)
        await pilot.pause()
        await pilot.resize_terminal(*size)
        await pilot.pause()
        assert app.query_one(RunsTable).row_count == 2
        # Narrow: the one panel shown fills the body; wide: the log has room too.
        panel = app.query_one(StageTree) if size[0] <= 100 else app.query_one(LogView)
        assert panel.size.height > 0


@pilot_test
async def test_q_detaches() -> None:
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


@pilot_test
async def test_no_daemon_shows_the_banner_and_keeps_retrying(tmp_path) -> None:
    socket = tmp_path / "absent.sock"
    app = GeodApp(socket_path=socket, backoff=Backoff(first=0.05, ceiling=0.1))
    async with app.run_test(size=SIZE) as pilot:
        banner = app.query_one(ConnectionBanner)
        for _ in range(100):
            await pilot.pause(0.05)
            if app.state.connection.attempts >= 3 and banner.display:
                break
        headline, details = str(banner.content).splitlines()
        assert re.fullmatch(
            r"daemon unreachable — showing the last known state, retrying \(\d+\)", headline
        )
        assert len(headline) <= 80  # the point of the banner fits an 80-column terminal
        assert details.count(str(socket)) == 1 and str(socket) not in headline
        assert app.state.connection.attempts >= 3
        assert "disconnected" in app.sub_title


class _BellCountingApp(GeodApp):
    """The dashboard, counting the bells it rings (the terminal bell itself is real)."""

    CSS_PATH = str(Path(tui_app.__file__).with_name("app.tcss"))
    rung = 0

    def bell(self) -> None:
        self.rung += 1
        super().bell()


@pytest.mark.parametrize("bell", [True, False])
@pilot_test
async def test_bell_rings_when_a_run_ends_or_memory_turns_critical(bell: bool) -> None:
    app = _BellCountingApp(state=loaded_state(), connect=False, bell=bell)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.3)
        assert app.rung == 0  # what was already so at attach rings nothing
        summary = app.state.runs[rec.RUN].summary
        seq = app.state.runs[rec.RUN].applied_seq
        app.state.apply_event(
            GovernorEvent(
                run=rec.RUN,
                seq=seq + 1,
                old_size=256,
                new_size=256,
                rss=1900 * 1024 * 1024,
                budget=rec.BUDGET,
                level="critical",
                reason="RSS ≥ 90 % of budget",
            )
        )
        await pilot.pause(0.3)
        app.state.apply_run(summary.model_copy(update={"state": "failed"}))
        await pilot.pause(0.3)
        assert app.rung == (2 if bell else 0)
        app.state.apply_run(summary.model_copy(update={"state": "failed", "error": "again"}))
        await pilot.pause(0.3)
        assert app.rung == (2 if bell else 0)  # no change of state, no second bell
