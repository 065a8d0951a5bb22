"""The real daemon running a real demo run with telemetry: what lands in PostgreSQL.

The daemon process runs what ``geod serve`` runs (telemetry on, sink from
``open_telemetry``); the worker is the real ``python -m pipeline.worker``.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from supervisor.sampler import SAMPLE_OPERATION
from tests import daemon_harness
from tests.conftest import write_demo_config
from tests.daemon_harness import DaemonHarness

DAEMON_WITH_TELEMETRY = (
    "import sys\n"
    "from pathlib import Path\n"
    "from supervisor.detach import serve\n"
    "from supervisor.settings import load_settings\n"
    "sys.exit(serve(load_settings(Path(sys.argv[1]))))\n"
)
#: Seconds between the daemon's memory samples of the worker tree in this test.
MEMORY_INTERVAL = 0.5
RUN_TIMEOUT = 300.0


@pytest.fixture()
def daemon(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DaemonHarness]:
    monkeypatch.setattr(daemon_harness, "DAEMON_SCRIPT", DAEMON_WITH_TELEMETRY)
    harness = DaemonHarness(
        tmp_path,
        telemetry=True,
        database_url=database_url,
        worker_command=[sys.executable, "-m", "pipeline.worker"],
    )
    try:
        yield harness
    finally:
        harness.cleanup()


def _rows(url: str, sql: str, *params: object) -> list[tuple]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def test_daemon_run_is_recorded_completely(
    daemon: DaemonHarness, database_url: str, tmp_path: Path, demo_dir: Path
) -> None:
    (tmp_path / "run").mkdir()
    config = write_demo_config(
        tmp_path / "run", demo_dir, telemetry={"memory_interval": MEMORY_INTERVAL}
    )
    daemon.start()
    run_id = daemon.submit(config)
    final = daemon.wait(run_id, "done", timeout=RUN_TIMEOUT)
    assert daemon.stop() == 0, daemon.log()[-3000:]  # closing flushes telemetry

    [(state, exit_code, last_seq)] = _rows(
        database_url, "SELECT state, exit_code, last_seq FROM geod.runs WHERE id = %s", run_id
    )
    assert (state, exit_code) == ("done", 0)
    assert last_seq == final["last_seq"]
    seqs = [s for (s,) in _rows(database_url, "SELECT seq FROM geod.events ORDER BY seq")]
    assert seqs == list(range(1, last_seq + 1)), "every event the daemon stamped, once"

    stages = _rows(database_url, "SELECT kind, status, done, total FROM geod.stages")
    assert {kind for kind, *_ in stages} >= {"run", "stage", "dataset"}
    for kind, status, done, total in stages:
        if kind == "dataset" and status == "done":
            assert done == total > 0

    sample_times = [
        t.timestamp()
        for (t,) in _rows(
            database_url,
            "SELECT time FROM geod.memory_samples WHERE operation = %s ORDER BY seq",
            SAMPLE_OPERATION,
        )
    ]
    assert len(sample_times) >= 2, "the daemon samples the worker tree while it runs"
    gaps = [b - a for a, b in itertools.pairwise(sample_times)]
    assert min(gaps) >= MEMORY_INTERVAL * 0.95, "one sample per interval, not more"
    [(peak,)] = _rows(
        database_url,
        "SELECT max(peak_rss) FROM geod.v_memory_by_stage WHERE run = %s",
        run_id,
    )
    assert peak > 0
    levels = {level for (level,) in _rows(database_url, "SELECT level FROM geod.log_records")}
    assert "INFO" in levels
