"""PostgreSQL goes away mid-run: the writer spools, reconnects, replays; nothing lost or doubled.

A real worker runs the demo while its events are forwarded to the writer as
they arrive (as the daemon does); the server is stopped partway through.

The server is an embedded one this module owns (never the machine's shared
server, which other tests use), stopped with ``pg_ctl stop`` and started again.
``GEOD_TELEMETRY_OUTAGE_SECONDS`` sets how long it stays down (default 5; the
issue's acceptance run uses 60).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.telemetry_events import Stamper, realistic_events
from supervisor.embedded import EmbeddedPostgres
from supervisor.protocol import RunSummary
from supervisor.telemetry.writer import TelemetryWriter
from tests.conftest import write_demo_config
from tests.telemetry_helpers import count_rows, embedded_scratch_dir, expected_rows
from tests.workerproc import WorkerProcess

OUTAGE_SECONDS = float(os.environ.get("GEOD_TELEMETRY_OUTAGE_SECONDS", "5"))
#: The database goes down once the worker has sent this many events (catalog done).
EVENTS_BEFORE_OUTAGE = 20
#: Stages of the demo run: enough windows to keep emitting through a short outage.
STAGES = "catalog,resample"
#: Seconds between looks at the worker's new events.
POLL = 0.05
#: The writer retries at least this often, so the test does not wait out long backoffs.
TEST_MAX_BACKOFF = 1.0
FLUSH_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedPostgres]:
    with embedded_scratch_dir() as directory:
        server = EmbeddedPostgres.in_state_dir(directory)
        server.start()
        yield server
        server.stop()


def _outage_messages(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    messages = [r.getMessage() for r in caplog.records if r.name == "geod.telemetry"]
    down = [m for m in messages if "unavailable" in m]
    back = [m for m in messages if "back after" in m]
    return down, back


def test_server_stopped_during_a_worker_run_loses_and_duplicates_nothing(
    server: EmbeddedPostgres, tmp_path: Path, demo_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="geod.telemetry")
    url = server.start()
    writer = TelemetryWriter(
        url, tmp_path / "spool", flush_interval=0.2, max_backoff=TEST_MAX_BACKOFF
    ).start()
    writer.record_run(RunSummary(id="outage", name="outage", state="running"))
    worker = WorkerProcess(write_demo_config(tmp_path, demo_dir), "--stages", STAGES)
    stamp = Stamper("outage")
    sent: list = []
    stopped_at: int | None = None
    back_at: float | None = None
    status: dict = {}

    def forward() -> None:
        """What the daemon does with each worker event as it arrives."""
        for event in worker.events[len(sent) :]:
            sent.append(stamp(event))
            writer.record_event(sent[-1])

    while worker.process.poll() is None or (stopped_at is not None and not status):
        forward()
        if stopped_at is None and len(sent) >= EVENTS_BEFORE_OUTAGE:
            server.stop()
            stopped_at = len(sent)
            back_at = time.monotonic() + OUTAGE_SECONDS
        if back_at is not None and not status and time.monotonic() >= back_at:
            status = writer.status()
            server.start()
        time.sleep(POLL)
    assert stopped_at is not None, "the worker finished before the outage began"
    assert worker.finish() == 0
    forward()
    writer.record_run(RunSummary(id="outage", name="outage", state="done"))
    assert writer.flush(FLUSH_TIMEOUT), writer.status()
    writer.close()

    assert status["outage_since"] is not None
    assert status["spool_bytes"] > 0, "events of the outage went to the spool"
    assert count_rows(url, "outage") == expected_rows(sent)
    down, back = _outage_messages(caplog)
    assert len(down) == 1, f"one warning per outage, got {down}"
    assert "spooling to" in down[0] and "Error" in down[0]
    assert len(back) == 1


def test_writer_closed_during_outage_leaves_a_spool_the_next_one_replays(
    server: EmbeddedPostgres, tmp_path: Path
) -> None:
    url = server.start()
    events = list(realistic_events("restart", windows=20, datasets=2))
    half = len(events) // 2
    first = TelemetryWriter(url, tmp_path / "spool", flush_interval=0.1).start()
    for event in events[:half]:
        first.record_event(event)
    assert first.flush(FLUSH_TIMEOUT)
    server.stop()
    for event in events[half:]:
        first.record_event(event)
    first.close()  # the daemon exits while the database is down
    server.start()

    second = TelemetryWriter(url, tmp_path / "spool", flush_interval=0.1).start()
    assert second.flush(FLUSH_TIMEOUT)
    second.close()
    assert count_rows(url, "restart") == expected_rows(events)
