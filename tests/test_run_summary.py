"""What a run's summary says about time left, live and once rebuilt from its history.

A finished run has no ETA: not while the daemon that ran it lives, and not after
a new daemon rebuilds it from ``events.ndjson`` (which replays every progress
event, each of which had an ETA while the run was going).
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.events import Event, StageEvent, encode
from supervisor.runs import Registry, Run

HISTORY = 100
ELAPSED = 10.0


def _record(run: Run, event: Event) -> None:
    stamped = event.model_copy(update={"run": run.id, "seq": run.next_seq()})
    run.append(encode(stamped))
    run.apply(stamped)


def _half_done_run(root: Path) -> tuple[Registry, Run]:
    registry = Registry(root, HISTORY, HISTORY)
    registry.load()
    run = registry.create("name: demo\n", "demo", str(root / "config.yml"))
    run.summary.state = "running"
    run.summary.started = time.time() - ELAPSED
    _record(run, StageEvent(id="run", kind="run", name="demo", status="running", total=2))
    _record(
        run,
        StageEvent(id="a", parent="run", kind="stage", name="a", status="running", total=2, done=1),
    )
    return registry, run


def test_running_run_has_an_eta(tmp_path: Path) -> None:
    _registry, run = _half_done_run(tmp_path)
    # Half of the first of two stages: a quarter done in 10 s, so about 30 s left.
    assert run.summary.progress == 0.25
    assert run.summary.eta is not None and 29.0 < run.summary.eta < 31.0


def test_finished_run_rebuilt_from_history_has_no_eta(tmp_path: Path) -> None:
    registry, run = _half_done_run(tmp_path)
    _record(
        run,
        StageEvent(id="a", parent="run", kind="stage", name="a", status="done", total=2, done=2),
    )
    _record(run, StageEvent(id="run", kind="run", name="demo", status="done", total=2, done=2))
    run.summary.state = "done"
    run.summary.finished = time.time()
    registry.save(run)
    registry.close()

    again = Registry(tmp_path, HISTORY, HISTORY)
    again.load()
    summary = again.runs[run.id].summary
    assert summary.state == "done" and summary.progress == 1.0
    assert summary.eta is None
    again.close()


def test_killed_run_rebuilt_from_history_has_no_eta(tmp_path: Path) -> None:
    registry, run = _half_done_run(tmp_path)
    run.summary.state = "killed"
    run.summary.eta = None
    registry.save(run)
    registry.close()

    again = Registry(tmp_path, HISTORY, HISTORY)
    again.load()
    assert again.runs[run.id].summary.eta is None
    again.close()
