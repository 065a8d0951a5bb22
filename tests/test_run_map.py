"""The map of a run's windows: states from window events, drawn the same in the CLI and the TUI."""

from __future__ import annotations

from pipeline.events import CheckpointEvent, StageEvent, decode, encode
from supervisor.protocol import RunSummary
from supervisor.run_map import STATE_COLORS, RunMap, fit, from_reply, legend, render, to_reply
from tests import tui_recording as rec
from tests.tui_support import pilot_test, replay_app, until
from tui.state import DashboardState
from tui.widgets.run_map import RunMapPanel

GRID_H, GRID_W, WIN = 180, 360, 90  # a 2 × 4 lattice of windows


def window(
    dataset: str, row: int, col: int, run: str | None = None, seq: int = 0
) -> CheckpointEvent:
    return CheckpointEvent(
        stage="resample",
        dataset=dataset,
        done=1,
        total=8,
        row_off=row * WIN,
        col_off=col * WIN,
        height=WIN,
        width=WIN,
        grid_height=GRID_H,
        grid_width=GRID_W,
        run=run,
        seq=seq or None,
    )


def colours(lines) -> set[str]:
    return {str(span.style) for line in lines for span in line.spans}


def test_states_follow_window_events_and_a_rewrite_is_recomputed() -> None:
    run_map = RunMap()
    run_map.apply(window("bio1", 0, 0))
    run_map.apply(window("bio1", 0, 1))
    dataset = run_map.datasets["bio1"]
    codes = dataset.cells(2, 4)
    # Top-left done, top row's second window is the newest of a running dataset.
    assert codes.tolist() == [[1, 3, 0, 0], [0, 0, 0, 0]]
    run_map.apply(window("bio1", 0, 0))  # written again: recomputed after a fault
    run_map.apply(
        StageEvent(
            id="resample/bio1", parent="resample", kind="dataset", name="bio1", status="done"
        )
    )
    assert dataset.cells(2, 4).tolist() == [[2, 1, 0, 0], [0, 0, 0, 0]]
    assert dataset.counts() == {"done": 1, "recomputed": 1}
    assert "recomputed 1" in legend(dataset).plain


def test_render_is_half_blocks_with_square_cells_in_the_given_size() -> None:
    run_map = RunMap().feed([window("bio1", 1, 3)])
    dataset = run_map.datasets["bio1"]
    assert fit(dataset, 40, 100) == (20, 40)  # 2:1 grid → 20 cell rows = 10 text rows
    assert fit(dataset, 200, 5) == (10, 20)  # too tall: narrower instead
    lines = render(dataset, 40, 100)
    assert len(lines) == 10 and all(line.cell_len == 40 for line in lines)
    assert set("".join(line.plain for line in lines)) == {"▀"}
    # Bottom-right quarter is the running window (yellow), the rest pending (grey).
    assert f"{STATE_COLORS['running']} on {STATE_COLORS['running']}" in colours(lines[-1:])
    assert f"{STATE_COLORS['pending']} on {STATE_COLORS['pending']}" in colours(lines[:1])


def test_old_checkpoints_without_a_position_still_decode_and_are_ignored() -> None:
    old = '{"type":"checkpoint","stage":"resample","dataset":"a","done":1,"total":2}'
    event = decode(old)
    assert isinstance(event, CheckpointEvent) and event.row_off is None
    assert not RunMap().apply(event)
    new = window("a", 1, 2)
    assert decode(encode(new)) == new


@pilot_test
async def test_map_panel_colours_follow_window_events() -> None:
    app = replay_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        panel = app.query_one(RunMapPanel)
        assert not panel.region.area
        await pilot.press("w")
        await pilot.pause()
        assert panel.region.area and not app.memory_chart.region.area
        # The recording's last windows are landcover's; one of them was written twice.
        assert "landcover (3/3)" in str(panel.border_title)
        shown = colours(panel.render().renderables[:-1])
        assert any(STATE_COLORS["recomputed"] in style for style in shown)
        assert any(STATE_COLORS["running"] in style for style in shown)
        # A window of another dataset arrives: the map follows it, coloured as running.
        seq = app.state.runs[rec.RUN].applied_seq
        app.state.apply_event(window("threat", 1, 3, run=rec.RUN, seq=seq + 1))
        await until(pilot, lambda: "threat (4/4)" in str(panel.border_title))
        lines = panel.render().renderables[:-1]
        assert STATE_COLORS["running"] in str(lines[-1].spans[-1].style)
        assert not any(STATE_COLORS["done"] in style for style in colours(lines))
        app.state.apply_event(window("threat", 0, 0, run=rec.RUN, seq=seq + 2))
        await until(
            pilot,
            lambda: any(
                style.startswith(STATE_COLORS["done"])
                for style in colours(panel.render().renderables[:-1])
            ),
        )
        panel.focus()
        await pilot.press("left_square_bracket")  # the dataset before threat
        await until(pilot, lambda: "landcover (3/4)" in str(panel.border_title))
        await pilot.press("w")
        await pilot.pause()
        assert app.memory_chart.region.area and not panel.region.area


def test_wire_form_round_trips() -> None:
    run_map = RunMap().feed(
        [window("bio1", 0, 0, seq=1), window("bio1", 0, 0, seq=2), window("bio2", 1, 1, seq=3)]
    )
    again = from_reply(to_reply("r0001", run_map))
    assert again.last_seq == 3 and again.latest == "bio2"
    for name, dataset in run_map.datasets.items():
        copy = again.datasets[name]
        assert copy.writes == dataset.writes and copy.newest == dataset.newest
        assert copy.cells(2, 4).tolist() == dataset.cells(2, 4).tolist()


def test_history_fetched_after_attach_counts_each_window_once() -> None:
    """Attach: windows 1-2 before it (history only), 3-4 arrive live while ``runs.map`` is on
    its way, the reply counts 1-3: the merged map has 1-4, each written once."""
    state = DashboardState()
    state.apply_run(RunSummary(id="r1", name="demo", state="running"))
    state.hold_windows("r1")
    live = [window("bio1", 1, col, run="r1", seq=seq) for col, seq in ((0, 3), (1, 4))]
    for event in live:
        state.apply_event(event)
    history = [window("bio1", 0, col, run="r1", seq=seq) for col, seq in ((0, 1), (1, 2))]
    reply = to_reply("r1", RunMap().feed([*history, live[0]]))
    assert reply.last_seq == 3
    state.merge_map("r1", from_reply(reply))
    dataset = state.runs["r1"].map.datasets["bio1"]
    assert dataset.counts() == {"done": 4, "recomputed": 0}
    assert dataset.newest == (WIN, WIN, WIN, WIN)
    assert state.runs["r1"].map_held is None
    # Later live windows still count, older seqs never again.
    state.apply_event(window("bio1", 0, 0, run="r1", seq=5))
    state.apply_event(window("bio1", 0, 1, run="r1", seq=2))
    assert dataset.counts() == {"done": 3, "recomputed": 1}


def test_a_drawn_map_follows_new_windows_as_a_fresh_one_would() -> None:
    """The raster kept per drawn size is painted window by window: after more windows (one
    written again) it equals a map built from scratch, at every size asked for."""
    run_map = RunMap().feed([window("bio1", 0, 0, seq=1)])
    dataset = run_map.datasets["bio1"]
    sizes = [(2, 4), (8, 16), (3, 5)]  # three sizes: one more than a dataset keeps
    for rows, columns in sizes:
        dataset.cells(rows, columns)
    run_map.feed([window("bio1", 1, 3, seq=2), window("bio1", 0, 0, seq=3)])
    fresh = RunMap().feed([window("bio1", 0, 0), window("bio1", 1, 3), window("bio1", 0, 0)])
    for rows, columns in sizes:
        drawn = dataset.cells(rows, columns).tolist()
        assert drawn == fresh.datasets["bio1"].cells(rows, columns).tolist()
    assert dataset.cells(2, 4).tolist() == [[3, 0, 0, 0], [0, 0, 0, 1]]  # newest: running
    dataset.running = False
    assert dataset.cells(2, 4).tolist() == [[2, 0, 0, 0], [0, 0, 0, 1]]  # written twice
