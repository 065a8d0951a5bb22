"""A real worker's demo run stored by the writer: the tables say what the events said."""

from __future__ import annotations

from pathlib import Path

import psycopg2

from bench.telemetry_events import Stamper
from pipeline.events import LogEvent, MemoryEvent, StageEvent
from supervisor.protocol import RunSummary
from supervisor.telemetry.writer import TelemetryWriter
from tests.conftest import write_demo_config
from tests.telemetry_helpers import count_rows, expected_rows
from tests.workerproc import WorkerProcess

FLUSH_TIMEOUT = 60.0
#: The stages whose events telemetry stores most of; export/analysis add little and cost time.
STAGES = "catalog,resample"


def _rows(url: str, sql: str) -> list[tuple]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def test_demo_run_rows_match_the_worker_events(
    database_url: str, tmp_path: Path, demo_dir: Path
) -> None:
    config = write_demo_config(tmp_path, demo_dir)
    writer = TelemetryWriter(database_url, tmp_path / "spool", flush_interval=0.2).start()
    writer.record_run(RunSummary(id="demo", name="demo", state="running"))
    worker = WorkerProcess(config, "--stages", STAGES)
    assert worker.finish() == 0, worker.process.stderr.read()
    stamp = Stamper("demo")
    events = [stamp(e) for e in worker.events]  # the daemon stamps in arrival order
    for event in events:
        writer.record_event(event)
    writer.record_run(RunSummary(id="demo", name="demo", state="done", exit_code=0))
    assert writer.flush(FLUSH_TIMEOUT)
    writer.close()

    assert count_rows(database_url, "demo") == expected_rows(events)

    last: dict[str, StageEvent] = {}
    for event in events:
        if isinstance(event, StageEvent):
            last[event.id] = event
    stored = {
        row[0]: row[1:]
        for row in _rows(
            database_url, "SELECT id, parent, kind, status, done, total FROM geod.stages"
        )
    }
    assert stored == {e.id: (e.parent, e.kind, e.status, e.done, e.total) for e in last.values()}
    assert {"dataset", "stage"} <= {kind for (_, kind, *_) in stored.values()}

    logs = [(e.seq, e.level, e.message) for e in events if isinstance(e, LogEvent)]
    assert _rows(database_url, "SELECT seq, level, message FROM geod.log_records ORDER BY seq") == (
        logs
    )

    memory = [e for e in events if isinstance(e, MemoryEvent)]
    assert memory, "the worker reports its memory between windows"
    peaks = dict(_rows(database_url, "SELECT stage, peak_rss FROM geod.v_memory_by_stage"))
    for stage, peak in peaks.items():
        assert peak == max(m.rss for m in memory if m.stage == stage)
    assert _rows(database_url, "SELECT count(*) FROM geod.v_memory_timeline")[0][0] == len(memory)
