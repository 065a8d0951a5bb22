"""The real daemon running a real demo run with telemetry: what lands in PostgreSQL.

The daemon process runs what ``geod serve`` runs (telemetry on, sink from
``open_telemetry``); the worker is the real ``python -m pipeline.worker``.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from supervisor.sampler import SAMPLE_OPERATION
from tests import daemon_harness
from tests.conftest import write_demo_config
from tests.daemon_harness import DaemonHarness

#: Seconds between the daemon's memory samples of the worker tree in this test.
MEMORY_INTERVAL = 0.5
RUN_TIMEOUT = 300.0


@pytest.fixture()
def daemon(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DaemonHarness]:
    monkeypatch.setattr(daemon_harness, "DAEMON_SCRIPT", daemon_harness.DAEMON_WITH_TELEMETRY)
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


def test_two_daemons_share_one_database_without_mixing_runs(
    tmp_path: Path, database_url: str, demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two state directories, one database, both run the demo as r0001: each run's rows
    are complete and its own (events equal that run's events.ndjson)."""
    monkeypatch.setattr(daemon_harness, "DAEMON_SCRIPT", daemon_harness.DAEMON_WITH_TELEMETRY)
    harnesses = [
        DaemonHarness(
            tmp_path / name,
            telemetry=True,
            database_url=database_url,
            worker_command=[sys.executable, "-m", "pipeline.worker"],
        )
        for name in ("alice", "bob")
    ]
    try:
        finals = []
        for harness in harnesses:
            (harness.tmp / "run").mkdir()
            config = write_demo_config(harness.tmp / "run", demo_dir)
            harness.start()
            assert harness.submit(config) == "r0001"
        for harness in harnesses:
            finals.append(harness.wait("r0001", "done", timeout=RUN_TIMEOUT))
            assert harness.stop() == 0, harness.log()[-3000:]
    finally:
        for harness in harnesses:
            harness.cleanup()

    runs = _rows(database_url, "SELECT run_key, instance, state FROM geod.runs WHERE id = 'r0001'")
    assert len(runs) == 2 and len({key for key, _, _ in runs}) == 2
    assert len({instance for _, instance, _ in runs}) == 2
    for harness, final in zip(harnesses, finals, strict=True):
        instance = (harness.state_dir / "telemetry" / "instance_id").read_text().strip()
        [(key, state)] = _rows(
            database_url, "SELECT run_key, state FROM geod.runs WHERE instance = %s", instance
        )
        assert state == "done"
        history = Path(final["run_dir"], "events.ndjson").read_text().splitlines()
        stored = _rows(
            database_url, "SELECT seq, type FROM geod.events WHERE run_key = %s ORDER BY seq", key
        )
        expected = [(json.loads(line)["seq"], json.loads(line)["type"]) for line in history]
        assert stored == expected
        # The views select one daemon's runs when the session names its instance.
        conn = psycopg2.connect(database_url, options=f"-c geod.instance={instance}")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT DISTINCT run_key FROM geod.v_memory_timeline")
                assert [str(k) for (k,) in cur.fetchall()] == [key]
        finally:
            conn.close()
