"""The runs table's ``:`` filter: by state and by name, its indicator, escape to clear."""

from __future__ import annotations

import pytest

from supervisor.protocol import RunSummary
from tests import tui_recording as rec
from tests.tui_support import pilot_test, replay_app, until
from tui.run_filter import FilterError, RunFilter


def _run(run_id: str, name: str, state: str) -> RunSummary:
    return RunSummary(id=run_id, name=name, state=state)  # type: ignore[arg-type]


def test_words_are_states_or_a_name() -> None:
    run_filter = RunFilter.parse(":run paused /Demo")
    assert run_filter == RunFilter(frozenset({"running", "paused"}), "demo")
    assert str(run_filter) == ":running paused /demo"
    assert run_filter.matches(_run("r1", "my-demo", "paused"))
    assert not run_filter.matches(_run("r2", "my-demo", "done"))
    assert not run_filter.matches(_run("r3", "other", "running"))
    assert not RunFilter.parse("  ")  # nothing typed: no filter


@pytest.mark.parametrize("text", ["bogus", "running x"])
def test_a_word_naming_no_state_is_refused(text: str) -> None:
    with pytest.raises(FilterError, match="names no state") as raised:
        RunFilter.parse(text)
    assert "running" in str(raised.value)  # the message lists the states


@pilot_test
async def test_colon_filters_the_table_says_so_and_escape_clears() -> None:
    app = replay_app()
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.runs_table
        app.state.apply_run(_run("r5", "demo-two", "running"))
        await until(pilot, lambda: table.row_count == 3)
        rows = lambda: [row.key.value for row in table.ordered_rows]  # noqa: E731
        await pilot.press("colon")
        assert app.filter_box.display and app.focused is app.filter_box
        await pilot.press(*"running")
        await pilot.press("enter")
        assert not app.filter_box.display and app.focused is table
        assert set(rows()) == {rec.RUN, "r5"}
        assert str(table.border_title) == "Runs · :running (2 of 3) · esc clears"
        # A run leaving the state leaves the table; the count follows.
        app.state.apply_run(_run("r5", "demo-two", "done"))
        await until(pilot, lambda: rows() == [rec.RUN])
        assert "(1 of 3)" in str(table.border_title)
        # By name, with the prompt showing the filter in force first.
        await pilot.press("colon")
        assert app.filter_box.value == "running"
        app.filter_box.value = ""
        await pilot.press(*"/big", "enter")
        assert rows() == [rec.OTHER] and ":/big" in str(table.border_title)
        # A word naming no state: said in one line, the prompt stays open.
        await pilot.press("colon")
        app.filter_box.value = ""
        await pilot.press(*"bogus", "enter")
        assert app.filter_box.display and rows() == [rec.OTHER]
        await pilot.press("escape")  # leaves the prompt with no filter
        assert not app.filter_box.display
        await until(pilot, lambda: table.row_count == 3)
        assert str(table.border_title) == "Runs"
        # Escape in the table clears a filter too.
        await pilot.press("colon", *"done", "enter")
        assert rows() == ["r5"]
        await pilot.press("escape")
        assert table.row_count == 3 and str(table.border_title) == "Runs"
