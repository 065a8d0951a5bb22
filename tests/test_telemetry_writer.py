"""The telemetry writer against a real PostgreSQL: rows, views, idempotence, overflow, bad data."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import psycopg2
import pytest

from bench.telemetry_events import Stamper, realistic_events
from pipeline.events import LogEvent, MemoryEvent, StageEvent
from supervisor.protocol import RunSummary
from supervisor.telemetry.spool import SPOOL_NAME, Spool
from supervisor.telemetry.writer import REJECTED_NAME, TelemetryWriter
from tests.telemetry_helpers import count_rows, expected_rows

#: Generous bound for a flush on a loaded 2-core CI box; tests never time anything.
FLUSH_TIMEOUT = 30.0
#: How long close() waits for a database that will not answer before spooling the rest.
HUNG_CLOSE_TIMEOUT = 1.0


def _writer(url: str, tmp_path: Path, **kwargs: object) -> TelemetryWriter:
    kwargs.setdefault("flush_interval", 0.1)
    return TelemetryWriter(url, tmp_path / "spool", **kwargs).start()  # type: ignore[arg-type]


def _query(url: str, sql: str, *params: object) -> list[tuple]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def test_run_rows_stage_tree_memory_logs_and_views(database_url: str, tmp_path: Path) -> None:
    events = list(realistic_events("r1", windows=30, datasets=3))
    writer = _writer(database_url, tmp_path)
    writer.record_run(RunSummary(id="r1", name="demo", state="running", started=1_700_000_000.0))
    for event in events:
        writer.record_event(event)
    writer.record_run(RunSummary(id="r1", name="demo", state="done", exit_code=0))
    assert writer.flush(FLUSH_TIMEOUT)
    writer.close()

    assert count_rows(database_url, "r1") == expected_rows(events)
    assert _query(database_url, "SELECT state, exit_code FROM geod.runs") == [("done", 0)]

    # The stage tree equals the last event of each node.
    last: dict[str, StageEvent] = {}
    for event in events:
        if isinstance(event, StageEvent):
            last[event.id] = event
    tree = {
        row[0]: row[1:]
        for row in _query(
            database_url,
            "SELECT id, parent, kind, status, done, total, seq FROM geod.stages WHERE run = 'r1'",
        )
    }
    assert tree == {
        e.id: (e.parent, e.kind, e.status, e.done, e.total, e.seq) for e in last.values()
    }
    started, finished = _query(
        database_url,
        "SELECT started, finished FROM geod.stages WHERE id = 'run/resample/bio0'",
    )[0]
    assert started is not None and finished is not None and started <= finished

    # Levels are kept and the latest-N-by-level query returns the newest first.
    latest = _query(
        database_url,
        "SELECT seq, message FROM geod.log_records WHERE run = 'r1' AND level = 'INFO'"
        " ORDER BY seq DESC LIMIT 2",
    )
    assert latest[0][1] == "bio2: 30/30" and latest[0][0] > latest[1][0]

    memory = [e for e in events if isinstance(e, MemoryEvent)]
    by_stage = _query(
        database_url,
        "SELECT stage, samples, peak_rss, avg_rss, budget FROM geod.v_memory_by_stage"
        " WHERE run = 'r1' ORDER BY stage",
    )
    assert [row[0] for row in by_stage] == [
        "run/resample/bio0",
        "run/resample/bio1",
        "run/resample/bio2",
    ]
    for stage, samples, peak, avg, budget in by_stage:
        rss = [m.rss for m in memory if m.stage == stage]
        assert (samples, peak, budget) == (len(rss), max(rss), 2_000_000_000)
        assert min(rss) <= avg <= max(rss)
    timeline = _query(
        database_url,
        "SELECT elapsed, budget_fraction, warning, critical FROM geod.v_memory_timeline"
        " WHERE run = 'r1' ORDER BY seq",
    )
    assert len(timeline) == len(memory)
    assert timeline[0][0] == 0.0
    assert all(b[0] >= a[0] for a, b in itertools.pairwise(timeline))
    assert timeline[0][1] == pytest.approx(memory[0].rss / 2_000_000_000)
    assert {row[2:] for row in timeline} == {(0.8, 0.9)}


def test_replaying_the_same_events_adds_nothing(database_url: str, tmp_path: Path) -> None:
    events = list(realistic_events("r2", windows=10, datasets=2))
    writer = _writer(database_url, tmp_path)
    for event in events:
        writer.record_event(event)
    assert writer.flush(FLUSH_TIMEOUT)
    for event in reversed(events):  # again, out of order
        writer.record_event(event)
    assert writer.flush(FLUSH_TIMEOUT)
    writer.close()
    assert count_rows(database_url, "r2") == expected_rows(events)
    statuses = dict(_query(database_url, "SELECT id, status FROM geod.stages WHERE run = 'r2'"))
    assert set(statuses.values()) == {"done"}, "an older event never overwrites a newer state"


def test_older_run_summary_never_overwrites_newer(database_url: str, tmp_path: Path) -> None:
    writer = _writer(database_url, tmp_path)
    writer.record_run(RunSummary(id="r3", name="x", state="running"))
    writer.record_run(RunSummary(id="r3", name="x", state="done"))
    assert writer.flush(FLUSH_TIMEOUT)
    writer.record_run(RunSummary(id="r3", name="x", state="paused"))
    assert writer.flush(FLUSH_TIMEOUT)
    writer.close()
    assert _query(database_url, "SELECT state FROM geod.runs") == [("paused",)]


def test_full_queue_spills_to_spool_without_blocking_or_loss(
    database_url: str, tmp_path: Path
) -> None:
    events = list(realistic_events("r4", windows=50, datasets=2))
    writer = _writer(database_url, tmp_path, queue_size=10, batch_size=10, flush_interval=5.0)
    for event in events:
        writer.record_event(event)
    assert writer.spilled > 0, "a 10-record queue must overflow into the spool"
    assert writer.flush(FLUSH_TIMEOUT)
    writer.close()
    assert count_rows(database_url, "r4") == expected_rows(events)
    assert (tmp_path / "spool" / SPOOL_NAME).stat().st_size == 0, "spool truncated after replay"


def test_spool_left_by_a_previous_writer_is_replayed(database_url: str, tmp_path: Path) -> None:
    events = list(realistic_events("r5", windows=5, datasets=1))
    spool = Spool(tmp_path / "spool")
    spool.append([("e", e) for e in events])
    spool.close()
    with open(tmp_path / "spool" / SPOOL_NAME, "ab") as file:
        file.write(b'["e",{"type":"log","lev')  # torn line from a crash mid-write
    writer = _writer(database_url, tmp_path)
    assert writer.flush(FLUSH_TIMEOUT)
    writer.close()
    assert count_rows(database_url, "r5") == expected_rows(events)


def test_record_the_database_refuses_is_set_aside(database_url: str, tmp_path: Path) -> None:
    stamp = Stamper("r6")
    good = [stamp(LogEvent(level="INFO", logger="t", message=f"m{i}")) for i in range(5)]
    # rss is a bigint column: PostgreSQL rejects this one record with a DataError.
    bad = stamp(MemoryEvent(rss=2**64))
    writer = _writer(database_url, tmp_path)
    for event in [*good[:2], bad, *good[2:]]:
        writer.record_event(event)
    assert writer.flush(FLUSH_TIMEOUT)
    writer.close()
    assert writer.rejected == 1
    counts = count_rows(database_url, "r6")
    assert (counts["log_records"], counts["events"], counts["memory_samples"]) == (5, 5, 0)
    [line] = (tmp_path / "spool" / REJECTED_NAME).read_text().splitlines()
    assert json.loads(line)["record"]["seq"] == bad.seq


def test_nan_and_nul_characters_are_stored_not_rejected(database_url: str, tmp_path: Path) -> None:
    """A raster's NaN nodata or a NUL in a driver's message must not cost the record."""
    stamp = Stamper("r8")
    event = stamp(
        LogEvent(
            level="INFO",
            logger="t",
            message="bad\x00name",
            extra={"nodata": float("nan"), "n": [1.5], "path": "a\x00b"},
        )
    )
    writer = _writer(database_url, tmp_path)
    writer.record_event(event)
    assert writer.flush(FLUSH_TIMEOUT)
    writer.close()
    assert writer.rejected == 0
    assert _query(database_url, "SELECT message, extra FROM geod.log_records") == [
        ("badname", {"nodata": None, "n": [1.5], "path": "ab"})
    ]
    assert _query(database_url, "SELECT payload->>'message' FROM geod.events") == [("badname",)]


def test_unstamped_event_is_refused_at_the_call(database_url: str, tmp_path: Path) -> None:
    writer = _writer(database_url, tmp_path)
    with pytest.raises(ValueError, match="run and seq"):
        writer.record_event(LogEvent(level="INFO", logger="t", message="no run"))
    writer.close()


def test_close_while_the_database_hangs_returns_and_loses_nothing(
    database_url: str, tmp_path: Path
) -> None:
    events = list(realistic_events("r7", windows=20, datasets=2))
    half = len(events) // 2
    writer = _writer(database_url, tmp_path)
    for event in events[:half]:
        writer.record_event(event)
    assert writer.flush(FLUSH_TIMEOUT)

    blocker = psycopg2.connect(database_url)
    with blocker.cursor() as cur:  # every insert into events now waits for this lock
        cur.execute("LOCK TABLE geod.events IN ACCESS EXCLUSIVE MODE")
    try:
        for event in events[half:]:
            writer.record_event(event)
        writer.close(timeout=HUNG_CLOSE_TIMEOUT)  # must return while the lock is held
        assert writer.status()["spool_bytes"] > 0
    finally:
        blocker.rollback()
        blocker.close()

    # The next daemon's writer replays what the hung one left behind.
    again = _writer(database_url, tmp_path)
    assert again.flush(FLUSH_TIMEOUT)
    again.close()
    assert count_rows(database_url, "r7") == expected_rows(events)
