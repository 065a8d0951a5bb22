"""The events pane: run-state changes in words, from the snapshot's history and live events."""

from __future__ import annotations

import pytest

from pipeline.events import RunStateEvent
from supervisor import formatting
from tests import tui_recording as rec
from tests.tui_support import pilot_test, replay_app, until
from tui.widgets.events_pane import change_line


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"state": "queued"}, "queued"),
        ({"state": "queued", "previous": "interrupted", "stage": "resample/bio1"}, "queued"),
        ({"state": "running", "previous": "queued"}, "started"),
        (
            {"state": "running", "previous": "queued", "retries": 2, "max_retries": 3},
            "started (retry 2/3)",
        ),
        (
            {
                "state": "queued",
                "previous": "running",
                "stage": "export",
                "retries": 1,
                "max_retries": 3,
                "error": "worker exited with code 1; retry 1/3 in 5 s",
            },
            "failed at export, retry 1/3",
        ),
        (
            {"state": "paused", "previous": "running", "stage": "resample/bio1"},
            "paused at resample/bio1",
        ),
        ({"state": "running", "previous": "paused"}, "resumed"),
        ({"state": "done", "previous": "running", "running_time": 252.0}, "done in 4m 12s"),
        ({"state": "killed", "previous": "stopping", "stage": "merge"}, "killed at merge"),
        (
            {"state": "failed", "previous": "running", "stage": "catalog", "error": "x" * 100},
            "failed at catalog: " + "x" * (formatting.CHANGE_ERROR_CHARS - 1) + "…",
        ),
    ],
)
def test_state_changes_read_as_words(fields: dict, words: str) -> None:
    assert formatting.state_change(RunStateEvent(**fields)) == words


def test_a_retried_failure_is_marked_as_a_failure() -> None:
    event = RunStateEvent(
        run="r0007", state="queued", previous="running", stage="export", retries=1
    )
    line = change_line(event)
    assert "r0007 ✘ failed at export, retry 1" in line.plain
    assert any("red" in str(span.style) for span in line.spans)
    # Only the clock time is dim: the words keep the pane's own colour.
    assert not line.style
    words = line.plain.index("failed")
    assert all(span.end <= words for span in line.spans)


@pilot_test
async def test_pane_shows_the_history_from_before_attach_then_live_changes() -> None:
    app = replay_app()
    async with app.run_test(size=(160, 48)) as pilot:
        pane = app.events_pane
        lines = lambda: [strip.text for strip in pane.lines]  # noqa: E731
        await until(pilot, lambda: len(lines()) == len(rec.transitions()))
        assert "r2 ✘ failed at catalog, retry 1/1" in lines()[2]
        assert lines()[-1].endswith("r1 ▶ started")
        assert pane.region.area  # on screen next to the log at 160×48
        # Shorter than its history: the newest lines are the ones in view.
        await until(pilot, lambda: pane.scroll_y == pane.max_scroll_y > 0)
        app.state.apply_event(
            RunStateEvent(
                run=rec.RUN, seq=10_000, time=rec.T0 + 61, state="paused", previous="running"
            )
        )
        await until(pilot, lambda: lines()[-1].endswith("r1 ‖ paused"))
        # A resync replaces the list with the daemon's (no line twice).
        app.state.apply_snapshot(rec.snapshot_before(rec.events(), len(rec.events())))
        await until(pilot, lambda: len(lines()) == len(rec.transitions()))


@pilot_test
async def test_the_newest_change_stays_in_view_after_a_resize() -> None:
    app = replay_app()
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.events_pane
        await pilot.press("tab", "tab", "tab")  # runs → stages → memory → events
        await until(pilot, lambda: bool(pane.region.area) and len(pane.lines) > 0)
        await pilot.resize_terminal(160, 48)  # a short pane next to the log now
        await until(pilot, lambda: pane.size.height < len(pane.lines))
        await until(pilot, lambda: pane.scroll_y == pane.max_scroll_y > 0)
