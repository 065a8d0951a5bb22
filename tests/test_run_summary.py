"""What a run's summary says about progress, running time and time left, live and rebuilt.

Progress counts windows weighted by their cells and never goes back (a retry
re-announces its stages); the running clock stops while paused; the time left is a
smoothed estimate with a range, and a finished run has none — not while the daemon
that ran it lives, and not after a new daemon rebuilds it from ``events.ndjson``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.events import Event, StageEvent, encode
from supervisor.progress import PROGRESS_CEILING, RATE_SAMPLE_S, running_seconds
from supervisor.runs import Registry, Run

HISTORY = 100
#: Windows of each of the two datasets of the ``resample`` stage.
WINDOWS = 50
#: Seconds between two windows in the simulated run.
STEP = RATE_SAMPLE_S


def _record(run: Run, event: Event) -> None:
    stamped = event.model_copy(update={"run": run.id, "seq": run.next_seq()})
    run.append(encode(stamped))
    run.apply(stamped)


def _stage(
    run: Run,
    at: float,
    sid: str,
    status: str,
    done: int = 0,
    total: int = 0,
    cells: tuple[int, int] | None = None,
) -> None:
    """One stage node; ``cells`` is (cells done, cells total) for nodes that say them."""
    parent = None if sid == "run" else sid.rpartition("/")[0] or "run"
    kind = "run" if sid == "run" else ("dataset" if "/" in sid else "stage")
    _record(
        run,
        StageEvent(
            time=at,
            id=sid,
            parent=parent,
            kind=kind,
            name=sid,
            status=status,
            done=done,
            total=total,
            cells_done=None if cells is None else cells[0],
            cells_total=None if cells is None else cells[1],
        ),
    )


def _running_run(root: Path, start: float) -> tuple[Registry, Run]:
    """Two stages; the first resamples two datasets of WINDOWS windows each."""
    registry = Registry(root, HISTORY, HISTORY)
    registry.load()
    run = registry.create("name: demo\n", "demo", str(root / "config.yml"))
    run.summary.state = "running"
    run.note_state(start)
    _stage(run, start, "run", "running", total=2)
    _stage(run, start, "resample", "running")
    _stage(run, start, "resample/a", "running", total=WINDOWS)
    _stage(run, start, "resample/b", "pending", total=WINDOWS)
    return registry, run


def _windows(run: Run, start: float, count: int, sid: str = "resample/a") -> float:
    at = start
    for done in range(1, count + 1):
        at = start + done * STEP
        _stage(run, at, sid, "running", done=done, total=WINDOWS)
    return at


def test_progress_moves_with_every_window_not_per_dataset(tmp_path: Path) -> None:
    start = time.time() - 1000
    _registry, run = _running_run(tmp_path, start)
    seen = []
    for done in range(1, 6):
        _stage(run, start + done, "resample/a", "running", done=done, total=WINDOWS)
        seen.append(run.summary.progress)
    # One window of 100 in the first of two stages: 1/200 of the run each.
    assert seen == pytest.approx([d / (2 * 2 * WINDOWS) for d in range(1, 6)])


def test_small_edge_windows_move_progress_by_their_cells(tmp_path: Path) -> None:
    """Progress is cells done over all cells: an edge window of a fifth the cells moves it less."""
    start = time.time() - 1000
    registry = Registry(tmp_path, HISTORY, HISTORY)
    registry.load()
    run = registry.create("name: demo\n", "demo", str(tmp_path / "config.yml"))
    run.summary.state = "running"
    run.note_state(start)
    window_cells = [10_000, 10_000, 2_000]  # two full windows and a narrow one at the edge
    total = sum(window_cells)
    _stage(run, start, "run", "running", total=2)
    _stage(run, start, "resample", "running", total=2)
    _stage(run, start, "resample/a", "running", total=3, cells=(0, total))
    _stage(run, start, "resample/b", "pending", total=3, cells=(0, total))
    seen = []
    done_cells = 0
    for done, cells in enumerate(window_cells, start=1):
        done_cells += cells
        _stage(run, start + done, "resample/a", "running", done, 3, (done_cells, total))
        seen.append(run.summary.progress)
    # The resample stage is half the run; dataset a is half of resample's cells.
    assert seen == pytest.approx([c / (2 * 2 * total) for c in (10_000, 20_000, 22_000)])
    assert seen[2] - seen[1] < (seen[1] - seen[0]) / 4, "the edge window is a fifth of a full one"
    # A retry re-announces dataset a from a resumed point: progress holds.
    _stage(run, start + 10, "resample/a", "running", 1, 3, (10_000, total))
    assert run.summary.progress == seen[-1]


def test_steady_run_has_a_steady_eta_with_a_clock_time(tmp_path: Path) -> None:
    start = time.time() - 1000
    _registry, run = _running_run(tmp_path, start)
    last = _windows(run, start, 40)
    summary = run.summary
    # 40 of 200 windows in 80 s of running: 160 left at 0.5 windows/s → 320 s.
    assert summary.progress == pytest.approx(40 / 200)
    assert summary.eta == pytest.approx(320, rel=0.02)
    assert summary.eta_at == pytest.approx(last + summary.eta)
    assert summary.eta_range is not None and summary.eta_range < 0.05 * summary.eta


def test_progress_survives_a_retry_and_never_reads_done_while_running(tmp_path: Path) -> None:
    start = time.time() - 1000
    _registry, run = _running_run(tmp_path, start)
    last = _windows(run, start, WINDOWS)
    _stage(run, last, "resample/a", "done", done=WINDOWS, total=WINDOWS)
    _stage(run, last, "resample/b", "running", done=WINDOWS, total=WINDOWS)
    _stage(run, last, "resample", "done")
    _stage(run, last, "export", "running", done=0, total=1)
    before = run.summary.progress
    assert before <= PROGRESS_CEILING  # everything but the last stage: not "100 %"
    # The worker is started again: it re-announces the tree from the beginning.
    _stage(run, last + 1, "run", "running", total=2)
    _stage(run, last + 1, "resample", "running")
    _stage(run, last + 1, "resample/a", "running", done=10, total=WINDOWS)
    assert run.summary.progress == before


def test_running_clock_stops_while_paused(tmp_path: Path) -> None:
    start = time.time() - 1000
    registry, run = _running_run(tmp_path, start)
    last = _windows(run, start, 10)
    run.summary.state = "paused"
    run.note_state(last)
    assert run.summary.eta is None and run.summary.running_since is None
    # Paused for 500 s: none of it counts.
    assert running_seconds(run.summary, last + 500) == pytest.approx(10 * STEP)
    run.summary.state = "running"
    run.note_state(last + 500)
    assert running_seconds(run.summary, last + 510) == pytest.approx(10 * STEP + 10)
    registry.close()


def test_finished_run_rebuilt_from_history_has_no_eta_and_keeps_its_time(tmp_path: Path) -> None:
    start = time.time() - 1000
    registry, run = _running_run(tmp_path, start)
    last = _windows(run, start, 10)
    assert run.summary.eta is not None
    _stage(run, last, "run", "done", done=2, total=2)
    run.summary.state = "done"
    run.summary.rss = 1234
    run.summary.finished = time.time()
    registry.save(run)
    registry.close()

    again = Registry(tmp_path, HISTORY, HISTORY)
    again.load()
    summary = again.runs[run.id].summary
    assert summary.state == "done" and summary.progress == 1.0
    assert summary.eta is None and summary.eta_at is None
    assert summary.rss is None  # a finished run has no current memory
    # Running time ends at the last event, not at the save.
    assert running_seconds(summary, time.time()) == pytest.approx(10 * STEP)
    again.close()


def test_stage_between_two_stages_is_the_last_one_never_the_root(tmp_path: Path) -> None:
    start = time.time() - 1000
    _registry, run = _running_run(tmp_path, start)
    assert run.summary.stage == "resample/a"
    _stage(run, start + 1, "resample/a", "done", done=WINDOWS, total=WINDOWS)
    _stage(run, start + 1, "resample/b", "done", done=WINDOWS, total=WINDOWS)
    _stage(run, start + 1, "resample", "done")
    assert run.summary.stage == "resample"  # only the root runs now: the last stage stays
    _stage(run, start + 2, "export", "running", total=1)
    assert run.summary.stage == "export"
