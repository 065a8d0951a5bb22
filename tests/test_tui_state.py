"""The TUI client-side model, fed with real ``pipeline.events`` objects (no Textual, no daemon)."""

from __future__ import annotations

from pipeline.events import LogEvent, MemoryEvent, StageEvent, decode_dict
from tests import tui_recording as rec
from tui import state as state_module
from tui.state import DashboardState, LogLine


def _loaded() -> tuple[DashboardState, list[dict]]:
    state = DashboardState(clock=lambda: rec.T0 + 60)
    events = rec.events()
    state.apply_snapshot(rec.snapshot_before(events, 0))
    for event in events:
        state.apply_event(decode_dict(event))
    return state, events


def test_snapshot_then_events_build_the_stage_tree_with_aggregated_progress() -> None:
    state, _ = _loaded()
    view = state.runs[rec.RUN]
    assert list(view.children["run"]) == ["catalog", "resample", "merge"]
    assert view.stages["resample/landcover"].node.done == 5
    # resample has no count of its own: the mean of its four datasets (1, 1, 5/8, 0).
    assert abs(view.fraction("resample") - (1 + 1 + 5 / 8 + 0) / 4) < 1e-9
    assert view.stages["merge"].node.status == "failed"
    assert view.stages["merge"].node.error == "merge: disk full writing part-0003"
    assert list(view.ancestors("resample/threat")) == ["resample", "run"]


def test_rate_comes_from_event_times() -> None:
    state, _ = _loaded()
    landcover = state.runs[rec.RUN].stages["resample/landcover"]
    # One window per second in the recording.
    assert landcover.rate is not None and abs(landcover.rate - 1.0) < 1e-9
    assert state.runs[rec.RUN].stages["resample/richness"].rate is None  # done: no rate


def test_replayed_events_are_dropped_by_seq() -> None:
    state, events = _loaded()
    before = len(state.runs[rec.RUN].logs)
    state.take_changes()
    for event in events:
        state.apply_event(decode_dict(event))
    assert len(state.runs[rec.RUN].logs) == before
    assert not state.take_changes()


def test_resync_snapshot_and_log_backfill_never_duplicate_a_line() -> None:
    """Attach, lose the link half-way, resync: every log line exactly once, in seq order."""
    events = rec.events()
    half = len(events) // 2
    state = DashboardState()
    state.apply_snapshot(rec.snapshot_before(events, 0))
    for event in events[:half]:
        state.apply_event(decode_dict(event))
    # Daemon gone; meanwhile the run went on. Reattach: snapshot at the end ...
    state.apply_snapshot(rec.snapshot_before(events, len(events)))
    # ... and the back-fill page overlaps what we already had.
    logs = [event for event in events if event["type"] == "log"]
    added = state.merge_logs(rec.RUN, [decode_dict(event) for event in logs[-500:]])
    seqs = [line.seq for line in state.runs[rec.RUN].logs]
    assert seqs == sorted(set(seqs))
    assert seqs == [event["seq"] for event in logs]
    assert added == sum(1 for event in logs if event["seq"] > events[half - 1]["seq"])
    # Live events that the snapshot already covered are ignored.
    state.apply_event(decode_dict(events[-1]))
    assert [line.seq for line in state.runs[rec.RUN].logs] == seqs


def test_changes_batch_everything_since_the_last_frame() -> None:
    state, _ = _loaded()
    changes = state.take_changes()
    assert rec.RUN in changes.runs and rec.OTHER in changes.runs
    assert "resample/landcover" in changes.stages[rec.RUN]
    assert len(changes.logs[rec.RUN]) == len(state.runs[rec.RUN].logs)
    assert rec.RUN in changes.memory
    assert not state.take_changes()
    next_seq = state.runs[rec.RUN].applied_seq + 1
    state.apply_event(
        LogEvent(run=rec.RUN, seq=next_seq, level="INFO", logger="t", message="one more")
    )
    changes = state.take_changes()
    assert [line.message for line in changes.logs[rec.RUN]] == ["one more"]
    assert not changes.stages and not changes.runs


def test_stage_reset_on_resync_replaces_the_tree() -> None:
    state, events = _loaded()
    state.take_changes()
    snapshot = rec.snapshot_before(events, 3)
    state.apply_snapshot(snapshot)
    changes = state.take_changes()
    assert rec.RUN in changes.stages_reset
    assert set(state.runs[rec.RUN].stages) == {"run", "catalog", "resample"}


def test_memory_levels_tree_samples_and_worker_readings() -> None:
    state, events = _loaded()
    view = state.runs[rec.RUN]
    assert view.levels.budget == rec.BUDGET
    assert (view.levels.warning, view.levels.critical) == (0.8, 0.9)
    assert view.levels.level == "warning"
    samples = [e for e in events if e["type"] == "memory" and e.get("operation") == "sample"]
    readings = [e for e in events if e["type"] == "memory" and e.get("operation") is None]
    assert [s.rss for s in view.memory] == [e["rss"] for e in samples]
    # Worker readings are a second apart in the recording: none is thinned away.
    assert [s.window_size for s in view.worker_memory] == [e["window_size"] for e in readings]


def test_worker_readings_are_thinned_but_window_changes_kept() -> None:
    state = DashboardState()
    state.apply_snapshot(rec.snapshot_before(rec.events(), 0))
    for seq in range(1, 101):  # 100 readings in one second, the window halves half-way
        state.apply_event(
            MemoryEvent(
                run=rec.RUN,
                seq=seq,
                time=rec.T0 + seq / 100,
                rss=seq * 1000,
                window_size=512 if seq <= 50 else 256,
            )
        )
    readings = state.runs[rec.RUN].worker_memory
    assert [r.window_size for r in readings] == [512, 256]
    assert [r.rss for r in readings] == [50_000, 100_000]  # the peak of each stretch


def test_memory_history_merges_with_live_samples() -> None:
    state, events = _loaded()
    view = state.runs[rec.RUN]
    live = len(view.memory)
    first = next(e for e in events if e.get("operation") == "sample")
    samples = [
        MemoryEvent(time=rec.T0 - 10, rss=100, operation="sample"),
        decode_dict(first),  # already held
    ]
    state.merge_memory(rec.RUN, samples)
    assert len(view.memory) == live + 1
    assert view.memory[0].time == rec.T0 - 10
    assert [s.time for s in view.memory] == sorted(s.time for s in view.memory)


def test_log_buffer_is_bounded(monkeypatch) -> None:
    monkeypatch.setattr(state_module, "LOG_BUFFER_LINES", 50)
    state = DashboardState()
    state.apply_snapshot(rec.snapshot_before(rec.events(), 0))
    for seq in range(1, 201):
        state.apply_event(LogEvent(run=rec.RUN, seq=seq, level="INFO", logger="t", message="x"))
    seqs = [line.seq for line in state.runs[rec.RUN].logs]
    assert seqs == list(range(151, 201))
    # Paging back past the bound keeps the newest lines, never the oldest.
    older = [LogEvent(seq=seq, level="INFO", logger="t", message="old") for seq in range(100, 150)]
    state.merge_logs(rec.RUN, older)
    assert [line.seq for line in state.runs[rec.RUN].logs] == list(range(151, 201))


def test_log_line_stage_matching() -> None:
    line = LogLine(1, 0.0, "INFO", "l", "m", stage="resample", dataset="bio1")
    assert line.matches_stage("resample")
    assert line.matches_stage("resample/bio1")
    assert not line.matches_stage("resample/bio2")
    assert not line.matches_stage("res")
    assert not LogLine(2, 0.0, "INFO", "l", "m").matches_stage("merge")


def test_events_for_an_unknown_run_create_it() -> None:
    state = DashboardState()
    state.apply_event(
        StageEvent(run="new", seq=1, id="run", kind="run", name="x", status="running")
    )
    assert state.runs["new"].summary.state == "running"
    assert "new" in state.take_changes().runs
