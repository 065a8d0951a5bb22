"""PostgreSQL goes away mid-run: the writer spools, reconnects, replays; nothing lost or doubled.

The server is an embedded one this module owns (never the machine's shared
server, which other tests use), stopped with ``pg_ctl stop`` and started again.
``GEOD_TELEMETRY_OUTAGE_SECONDS`` sets how long it stays down (default 5; the
issue's acceptance run uses 60).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.embedded import EmbeddedPostgres
from supervisor.protocol import RunSummary
from supervisor.telemetry.writer import TelemetryWriter
from tests.telemetry_helpers import (
    count_rows,
    embedded_scratch_dir,
    expected_rows,
    realistic_events,
)

OUTAGE_SECONDS = float(os.environ.get("GEOD_TELEMETRY_OUTAGE_SECONDS", "5"))
#: Events per second the fake run emits: a busy worker plus the daemon's sampler.
EVENT_RATE = 400
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


def test_server_stopped_during_a_run_loses_and_duplicates_nothing(
    server: EmbeddedPostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="geod.telemetry")
    url = server.start()
    events = list(realistic_events("outage", windows=int(EVENT_RATE * (OUTAGE_SECONDS + 3) / 12)))
    writer = TelemetryWriter(
        url, tmp_path / "spool", flush_interval=0.2, max_backoff=TEST_MAX_BACKOFF
    ).start()
    writer.record_run(RunSummary(id="outage", name="outage", state="running"))
    submitted = 0
    stop = threading.Event()

    def produce() -> None:
        nonlocal submitted
        for event in events:
            if stop.is_set():
                return
            writer.record_event(event)
            submitted += 1
            time.sleep(1 / EVENT_RATE)

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(1.0)
    server.stop()
    time.sleep(OUTAGE_SECONDS)
    status = writer.status()
    server.start()
    producer.join()
    writer.record_run(RunSummary(id="outage", name="outage", state="done"))
    assert writer.flush(FLUSH_TIMEOUT), writer.status()
    writer.close()

    assert status["outage_since"] is not None and status["spool_bytes"] > 0
    assert submitted == len(events), "the producer was never blocked out"
    assert count_rows(url, "outage") == expected_rows(events)
    down, back = _outage_messages(caplog)
    assert len(down) == 1, f"one warning per outage, got {down}"
    assert "spooling to" in down[0] and ("Error" in down[0])
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
