"""Retention: rows older than retention_days go; live runs keep their stage tree."""

from __future__ import annotations

from pathlib import Path

import psycopg2

from bench.telemetry_events import realistic_events
from supervisor.protocol import RunSummary
from supervisor.telemetry.retention import SECONDS_PER_DAY, prune
from supervisor.telemetry.writer import TelemetryWriter
from tests.telemetry_helpers import count_rows, expected_rows

RETENTION_DAYS = 30
FLUSH_TIMEOUT = 30.0


def _shift(events: list, seconds: float) -> list:
    return [e.model_copy(update={"time": e.time - seconds}) for e in events]


def _seed(url: str, tmp_path: Path) -> dict[str, list]:
    """Three runs: finished 40 days ago, running since 40 days ago, finished today."""
    old = 40 * SECONDS_PER_DAY
    runs = {
        "old-done": _shift(list(realistic_events("old-done", windows=10, datasets=1)), old),
        "old-running": _shift(list(realistic_events("old-running", windows=10, datasets=1)), old),
        "new-done": list(realistic_events("new-done", windows=10, datasets=1)),
    }
    writer = TelemetryWriter(url, tmp_path / "spool", flush_interval=0.1).start()
    writer.record_run(RunSummary(id="old-done", name="a", state="done"))
    writer.record_run(RunSummary(id="old-running", name="b", state="running"))
    writer.record_run(RunSummary(id="new-done", name="c", state="done"))
    for events in runs.values():
        for event in events:
            writer.record_event(event)
    assert writer.flush(FLUSH_TIMEOUT)
    writer.close()
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE geod.runs SET updated = now() - interval '40 days' WHERE id LIKE 'old-%'"
        )
        cur.execute(
            "UPDATE geod.stages SET updated = now() - interval '40 days' WHERE run LIKE 'old-%'"
        )
    conn.commit()
    conn.close()
    return runs


def _ids(url: str, table: str) -> set[str]:
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(f"SELECT DISTINCT {'id' if table == 'runs' else 'run'} FROM geod.{table}")
        ids = {row[0] for row in cur.fetchall()}
    conn.close()
    return ids


def test_prune_drops_old_rows_and_finished_runs_only(database_url: str, tmp_path: Path) -> None:
    runs = _seed(database_url, tmp_path)
    conn = psycopg2.connect(database_url)
    deleted = prune(conn, RETENTION_DAYS)
    conn.close()

    old_series = expected_rows(runs["old-done"])
    assert deleted["events"] == 2 * old_series["events"]
    assert deleted["runs"] == 1
    assert _ids(database_url, "runs") == {"old-running", "new-done"}
    assert _ids(database_url, "stages") == {"old-running", "new-done"}
    assert count_rows(database_url, "new-done") == expected_rows(runs["new-done"])
    assert set(count_rows(database_url, "old-running").values()) == {0}
    assert set(count_rows(database_url, "old-done").values()) == {0}


def test_writer_prunes_when_given_retention_days(database_url: str, tmp_path: Path) -> None:
    runs = _seed(database_url, tmp_path)
    writer = TelemetryWriter(
        database_url, tmp_path / "spool2", flush_interval=0.1, retention_days=RETENTION_DAYS
    ).start()
    assert writer.flush(FLUSH_TIMEOUT)
    writer.close()
    assert _ids(database_url, "runs") == {"old-running", "new-done"}
    assert count_rows(database_url) == expected_rows(runs["new-done"])
