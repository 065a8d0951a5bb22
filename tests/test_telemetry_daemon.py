"""The real daemon running a real demo run with telemetry: what lands in PostgreSQL.

The daemon process runs what ``geod serve`` runs (telemetry on, sink from
``open_telemetry``); the worker is the real ``python -m pipeline.worker``.

Both tests read one scenario (each demo run takes tens of seconds on two cores):
two daemons with their own state directories share one database and each runs
the demo as r0001. The first ("alice") samples the worker tree every
``MEMORY_INTERVAL`` and is the daemon whose run must be recorded completely; the
queries that check it select alice's rows by run key, so what they see is exactly
what a database holding alice's run alone would hold.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from supervisor.sampler import SAMPLE_OPERATION
from tests import daemon_harness
from tests.conftest import temporary_database
from tests.daemon_harness import DaemonHarness
from tests.faults import fault_config

#: Seconds between the daemon's memory samples of the worker tree in this test.
MEMORY_INTERVAL = 0.5
RUN_TIMEOUT = 300.0


@dataclass
class DaemonRun:
    """One daemon of the scenario: its harness, its run's final summary, its identity."""

    harness: DaemonHarness
    final: dict[str, Any]
    stop_code: int
    instance: str
    key: str


@pytest.fixture(scope="module")
def module_database(server_url: str) -> Iterator[str]:
    """One fresh database for the module's scenario, dropped afterwards."""
    with temporary_database(server_url) as url:
        yield url


@pytest.fixture(scope="module")
def two_daemons(
    module_database: str, demo_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, DaemonRun]]:
    """Alice and bob, one database, both run the demo pipeline (every stage, on the
    fault tests' half-degree grid) as r0001 to done, then stop."""
    database_url = module_database
    tmp = tmp_path_factory.mktemp("telemetry-daemons")
    sections = {
        "alice": {"telemetry": {"memory_interval": MEMORY_INTERVAL}},
        "bob": {},
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(daemon_harness, "DAEMON_SCRIPT", daemon_harness.DAEMON_WITH_TELEMETRY)
        harnesses = {
            name: DaemonHarness(
                tmp / name,
                telemetry=True,
                database_url=database_url,
                worker_command=[sys.executable, "-m", "pipeline.worker"],
            )
            for name in sections
        }
        try:
            for name, harness in harnesses.items():
                (harness.tmp / "run").mkdir()
                config = fault_config(harness.tmp / "run", demo_dir, **sections[name])
                harness.start()
                assert harness.submit(config) == "r0001"
            runs = {}
            for name, harness in harnesses.items():
                final = harness.wait("r0001", "done", timeout=RUN_TIMEOUT)
                code = harness.stop()  # closing flushes telemetry
                instance = (harness.state_dir / "telemetry" / "instance_id").read_text().strip()
                [(key,)] = _rows(
                    database_url, "SELECT run_key FROM geod.runs WHERE instance = %s", instance
                )
                runs[name] = DaemonRun(harness, final, code, instance, str(key))
            yield runs
        finally:
            for harness in harnesses.values():
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
    two_daemons: dict[str, DaemonRun], module_database: str
) -> None:
    database_url = module_database
    alice = two_daemons["alice"]
    run_id, final, key = "r0001", alice.final, alice.key
    assert alice.stop_code == 0, alice.harness.log()[-3000:]

    [(state, exit_code, last_seq)] = _rows(
        database_url,
        "SELECT state, exit_code, last_seq FROM geod.runs WHERE id = %s AND run_key = %s",
        run_id,
        key,
    )
    assert (state, exit_code) == ("done", 0)
    assert last_seq == final["last_seq"]
    seqs = [
        s
        for (s,) in _rows(
            database_url, "SELECT seq FROM geod.events WHERE run_key = %s ORDER BY seq", key
        )
    ]
    assert seqs == list(range(1, last_seq + 1)), "every event the daemon stamped, once"

    stages = _rows(
        database_url, "SELECT kind, status, done, total FROM geod.stages WHERE run_key = %s", key
    )
    assert {kind for kind, *_ in stages} >= {"run", "stage", "dataset"}
    for kind, status, done, total in stages:
        if kind == "dataset" and status == "done":
            assert done == total > 0

    sample_times = [
        t.timestamp()
        for (t,) in _rows(
            database_url,
            "SELECT time FROM geod.memory_samples WHERE operation = %s AND run_key = %s "
            "ORDER BY seq",
            SAMPLE_OPERATION,
            key,
        )
    ]
    assert len(sample_times) >= 2, "the daemon samples the worker tree while it runs"
    gaps = [b - a for a, b in itertools.pairwise(sample_times)]
    assert min(gaps) >= MEMORY_INTERVAL * 0.95, "one sample per interval, not more"
    [(peak,)] = _rows(
        database_url,
        "SELECT max(peak_rss) FROM geod.v_memory_by_stage WHERE run = %s AND run_key = %s",
        run_id,
        key,
    )
    assert peak > 0
    levels = {
        level
        for (level,) in _rows(
            database_url, "SELECT level FROM geod.log_records WHERE run_key = %s", key
        )
    }
    assert "INFO" in levels


def test_two_daemons_share_one_database_without_mixing_runs(
    two_daemons: dict[str, DaemonRun], module_database: str
) -> None:
    """Two state directories, one database, both run the demo as r0001: each run's rows
    are complete and its own (events equal that run's events.ndjson)."""
    database_url = module_database
    for daemon in two_daemons.values():
        assert daemon.stop_code == 0, daemon.harness.log()[-3000:]

    runs = _rows(database_url, "SELECT run_key, instance, state FROM geod.runs WHERE id = 'r0001'")
    assert len(runs) == 2 and len({key for key, _, _ in runs}) == 2
    assert len({instance for _, instance, _ in runs}) == 2
    for daemon in two_daemons.values():
        instance, final = daemon.instance, daemon.final
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
