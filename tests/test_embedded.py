"""The embedded PostgreSQL: Unix socket in the state dir, data kept, stopped on exit."""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from bench.telemetry_events import realistic_events
from pipeline.contract import DATABASE_URL_ENV
from supervisor.database import open_database
from supervisor.embedded import EmbeddedPostgres
from supervisor.lifecycle import PRIVATE_DIR, make_private
from supervisor.protocol import RunSummary
from supervisor.telemetry import open_telemetry
from tests.telemetry_helpers import count_rows, embedded_scratch_dir, expected_rows

FLUSH_TIMEOUT = 30.0


@pytest.fixture()
def state() -> Iterator[Path]:
    """A state directory for an embedded server (see embedded_scratch_dir)."""
    with embedded_scratch_dir() as path:
        yield path


def _scalar(url: str, sql: str) -> object:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            value = cur.fetchone()[0]
        conn.commit()
        return value
    finally:
        conn.close()


def test_embedded_keeps_its_data_across_restarts(state: Path) -> None:
    server = EmbeddedPostgres.in_state_dir(state)
    url = server.start()
    assert server.data_dir == (state / "postgres").resolve()
    assert "host=/" in url and ":5432" not in url.split("?")[0], "Unix socket, no TCP"
    _scalar(url, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42); SELECT 1")
    server.stop()
    assert not server.running()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(url)

    again = EmbeddedPostgres.in_state_dir(state)
    assert again.start() == url
    assert _scalar(url, "SELECT x FROM kept") == 42
    again.stop()


def test_stops_once_the_daemon_made_its_state_directory_private(state: Path) -> None:
    """The daemon chmods its state directory 0700 after the server started; run as root,
    the server's own system user can no longer enter it, and stopping must still work
    (``geod stop`` used to leave the server running with a pg_ctl error in the log)."""
    server = EmbeddedPostgres.in_state_dir(state)
    url = server.start()
    make_private(state)
    assert stat.S_IMODE(state.stat().st_mode) == PRIVATE_DIR
    server.stop()
    assert not server.running()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(url)


def test_server_started_by_a_process_stops_when_it_exits(state: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from supervisor.embedded import EmbeddedPostgres;"
        "print(EmbeddedPostgres.in_state_dir(Path(sys.argv[1])).start())"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(state)], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("postgresql://")
    assert not EmbeddedPostgres.in_state_dir(state).running()


def test_server_left_by_a_killed_daemon_is_stopped_by_the_next(state: Path) -> None:
    script = (
        "import sys, time; from pathlib import Path; from supervisor.embedded import "
        "EmbeddedPostgres; EmbeddedPostgres.in_state_dir(Path(sys.argv[1])).start();"
        "print('up', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(state)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
    finally:
        holder.kill()  # SIGKILL: its exit hook never runs, the server stays up
        holder.wait()
    assert EmbeddedPostgres.in_state_dir(state).running()

    database = open_database(None, state)
    _scalar(database.url, "SELECT 1")
    database.close()
    assert not EmbeddedPostgres.in_state_dir(state).running()


def test_url_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql://env@host/db")
    assert open_database("postgresql://settings@host/db", tmp_path).url.startswith(
        "postgresql://settings@"
    )
    database = open_database(None, tmp_path)
    assert database.url == "postgresql://env@host/db" and database.embedded is None
    assert not (tmp_path / "postgres").exists(), "no embedded server when a URL is configured"


def test_telemetry_on_the_embedded_default(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever GEOD_TEST_DATABASE_URL says, this one always runs on an embedded server."""
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    events = list(realistic_events("emb", windows=10, datasets=2))
    writer = open_telemetry(None, state)
    url = writer.url
    assert str(state.resolve() / "postgres") in url
    half = len(events) // 2
    writer.record_run(RunSummary(id="emb", name="emb", state="running"))
    for event in events[:half]:
        writer.record_event(event)
    assert writer.flush(FLUSH_TIMEOUT)

    behind_its_back = EmbeddedPostgres.in_state_dir(state)
    behind_its_back.stop()  # the server dies under the daemon
    assert not behind_its_back.running()
    for event in events[half:]:
        writer.record_event(event)
    assert writer.flush(FLUSH_TIMEOUT), "the writer starts its embedded server again"
    assert count_rows(url, "emb") == expected_rows(events)
    writer.close()
    assert not EmbeddedPostgres.in_state_dir(state).running(), "closing stops the server"
