"""Snapshot of the main screen in a fixed state (a recorded event sequence, no daemon).

Update after an intended visual change with ``pytest tests/test_tui_snapshot.py
--snapshot-update`` and review the SVG diff.
"""

from __future__ import annotations

import time

import pytest

from tests.tui_support import replay_app


@pytest.fixture()
def utc(monkeypatch: pytest.MonkeyPatch):
    """Log timestamps are local time: pin the zone so the picture is the same everywhere."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


async def _settle(pilot) -> None:
    await pilot.pause(0.6)  # past the first frame and the chart's redraw interval
    # The chart is redrawn on a timer: on a loaded machine its last draw may predate the
    # final layout, so draw it once more at the size it has now.
    pilot.app.memory_chart.redraw()
    await pilot.pause()


def test_main_screen(snap_compare, utc) -> None:
    assert snap_compare(replay_app(), terminal_size=(120, 40), run_before=_settle)


def test_main_screen_80x24(snap_compare, utc) -> None:
    assert snap_compare(replay_app(), terminal_size=(80, 24), run_before=_settle)


def test_main_screen_160x48(snap_compare, utc) -> None:
    assert snap_compare(replay_app(), terminal_size=(160, 48), run_before=_settle)


def test_main_screen_220x60(snap_compare, utc) -> None:
    assert snap_compare(replay_app(), terminal_size=(220, 60), run_before=_settle)


def test_map_panel_160x48(snap_compare, utc) -> None:
    assert snap_compare(replay_app(), terminal_size=(160, 48), press=["w"], run_before=_settle)


def test_kill_confirmation(snap_compare, utc) -> None:
    assert snap_compare(replay_app(), terminal_size=(100, 30), press=["k"], run_before=_settle)


def test_events_panel_80x24(snap_compare, utc) -> None:
    """Narrow: tab to the events pane (runs → stages → memory → events)."""
    press = ["tab", "tab", "tab"]
    assert snap_compare(replay_app(), terminal_size=(80, 24), press=press, run_before=_settle)


def test_runs_filter_80x24(snap_compare, utc) -> None:
    press = ["colon", *"failed", "enter"]
    assert snap_compare(replay_app(), terminal_size=(80, 24), press=press, run_before=_settle)
