"""The host memory broker through a real daemon: admission by predicted peak, pressure, OOM.

Workers are tests/fake_worker.py (real processes, real signals); the pressure
source and the cgroup OOM counter are files the settings point at, written by
the tests, and the OOM kill is a real SIGKILL of the worker's process group.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests import daemon_harness
from tests.daemon_harness import (
    DAEMON_WITH_TELEMETRY,
    POLL,
    STATE_TIMEOUT,
    DaemonHarness,
    fake_config,
    running_daemon,
)

GIB = 1024**3
CALM_PSI = "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
#: 50 % of the last 10 s stalled on memory: above the default threshold of 20 %.
HIGH_PSI = "some avg10=50.00 avg60=10.00 avg300=2.00 total=123456\n"
MEMINFO = "MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\n"
#: A fast pressure loop so the test sees each step within a second.
PRESSURE = {"interval": 0.2, "calm_checks": 2}
#: Steps of 50 ms: enough running time for three rounds of pressure and calm.
STEPS = 200


def _budgeted(tmp: Path, name: str, budget: str, **sections: Any) -> Path:
    return fake_config(tmp / name, name, memory={"budget": budget}, **sections)


def _logs(daemon: DaemonHarness, run_id: str) -> list[str]:
    return [event.get("message", "") for event in daemon.call("logs.tail", run=run_id)]


def test_runs_whose_peaks_exceed_the_host_budget_run_two_at_a_time(tmp_path: Path) -> None:
    with running_daemon(tmp_path, concurrency=4, host_memory="2.5GiB") as daemon:
        ids = [daemon.submit(_budgeted(tmp_path, f"steps30-n{i}", "1GiB")) for i in range(3)]
        # A small run behind it waits its turn: a big run is never starved by small ones.
        small = daemon.submit(_budgeted(tmp_path, "steps30-small", "100MiB"))
        first = daemon.run(ids[0])
        assert first["predicted_peak"] == GIB and first["prediction"] == "memory.budget"
        third = daemon.wait(ids[2], lambda r: r["wait_reason"] is not None)
        assert third["state"] == "queued"
        assert third["wait_reason"] == (
            "waiting for memory: needs ~1.0 GiB, 512 MiB free of the host budget"
        )
        behind = daemon.wait(small, lambda r: r["wait_reason"] is not None)
        assert behind["wait_reason"] == f"waiting for memory: run {ids[2]} goes first"
        most = 0
        deadline = time.monotonic() + STATE_TIMEOUT
        while True:
            runs = [daemon.run(run_id) for run_id in ids]
            most = max(most, sum(r["state"] == "running" for r in runs))
            if all(r["state"] == "done" for r in runs):
                break
            assert time.monotonic() < deadline, runs
            time.sleep(POLL)
        assert most == 2
        third = daemon.run(ids[2])
        assert third["wait_reason"] is None
        assert third["started"] >= min(daemon.run(i)["finished"] for i in ids[:2])
        assert daemon.wait(small, "done")["started"] >= third["started"]
        status = daemon.call("status")["host_memory"]
        assert status["budget"] == int(2.5 * GIB) and status["reserved"] == 0


def _pressure_log(daemon: DaemonHarness, run_id: str, prefix: str) -> list[tuple[float, str]]:
    """(time, message) of the run's log records starting with ``prefix``."""
    events = daemon.call("logs.tail", run=run_id)
    return [(e["time"], e["message"]) for e in events if e.get("message", "").startswith(prefix)]


def test_pressure_shrinks_then_pauses_the_lowest_priority_run_and_resumes_it(
    tmp_path: Path,
) -> None:
    psi, meminfo = tmp_path / "psi", tmp_path / "meminfo"
    psi.write_text(CALM_PSI)
    meminfo.write_text(MEMINFO)
    pressure = {**PRESSURE, "psi_file": str(psi), "meminfo_file": str(meminfo)}
    with running_daemon(tmp_path, concurrency=3, pressure=pressure) as daemon:
        older = daemon.submit(fake_config(tmp_path / "a", f"steps{STEPS}-slow50"))
        newer = daemon.submit(fake_config(tmp_path / "b", f"steps{STEPS}-slow50"))
        for run_id in (older, newer):
            daemon.wait(run_id, lambda r: r["state"] == "running" and r["progress"] > 0)
        psi.write_text(HIGH_PSI)
        paused = daemon.wait(newer, "paused")
        assert paused["paused_by"] == "memory"
        assert paused["wait_reason"] == (
            "paused for host memory pressure: PSI some avg10 50 % above 20 %"
        )
        # First every worker was asked to shrink its windows (the fake worker says so).
        for run_id in (older, newer):
            daemon.wait(run_id, lambda r, i=run_id: "shrink requested" in _logs(daemon, i))
        waiting = daemon.submit(fake_config(tmp_path / "c", "steps5"))
        daemon.wait(waiting, lambda r: r["wait_reason"] is not None)
        assert daemon.run(waiting)["wait_reason"].startswith(
            "waiting for memory: the host is under memory pressure (PSI some avg10 50 %"
        )
        assert daemon.call("status")["host_memory"]["pressure"].startswith("PSI some avg10")
        # While the pressure lasts, each reading pauses one more run: the older one next.
        daemon.wait(older, "paused")
        (newer_paused, _), (older_paused, _) = (
            _pressure_log(daemon, run_id, "paused for host memory pressure")[0]
            for run_id in (newer, older)
        )
        assert newer_paused < older_paused
        assert daemon.run(waiting)["state"] == "queued"

        psi.write_text(CALM_PSI)  # calm: resumed one by one, the older (first submitted) first
        for run_id in (older, newer):
            daemon.wait(run_id, lambda r: r["state"] == "running" and r["paused_by"] is None)
        (older_resumed, why), (newer_resumed, _) = (
            _pressure_log(daemon, run_id, "resuming:")[0] for run_id in (older, newer)
        )
        assert older_resumed < newer_resumed and why == "resuming: host memory pressure is over"
        daemon.wait(waiting, lambda r: r["state"] in ("running", "done"))

        # MemAvailable below 5 % of MemTotal is pressure too, PSI calm or not.
        meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:     100000 kB\n")
        paused = daemon.wait(newer, "paused")
        assert paused["wait_reason"] == (
            "paused for host memory pressure: MemAvailable 98 MiB below 1.1 GiB"
        )
        meminfo.write_text(MEMINFO)
        for run_id in (older, newer, waiting):
            done = daemon.wait(run_id, "done")
            assert done["paused_by"] is None and done["wait_reason"] is None
        # The paused runs lost nothing: every step done exactly once, as undisturbed.
        for run_id in (older, newer):
            done_file = daemon.state_dir / "runs" / run_id / "work" / "done"
            assert done_file.read_text() == str(STEPS)


def test_an_oom_kill_is_reported_and_retried_at_half_the_window(tmp_path: Path) -> None:
    events, kmsg = tmp_path / "memory.events", tmp_path / "kmsg"
    events.write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    kmsg.write_text("6,1,10,-;a kernel record that names no worker\n")
    oom = {"memory_events": str(events), "kmsg": str(kmsg)}
    with running_daemon(tmp_path, oom=oom) as daemon:
        config = fake_config(
            tmp_path / "oom",
            "steps400-slow50",
            resampling={"window_size": 1024},
            restart={"backoff": 0.1, "max_retries": 5},
        )
        run_id = daemon.submit(config)
        run = daemon.wait(run_id, lambda r: r["state"] == "running" and r["progress"] > 0)
        events.write_text("low 0\nhigh 0\nmax 0\noom 1\noom_kill 1\n")
        os.killpg(run["pid"], signal.SIGKILL)
        retried = daemon.wait(run_id, lambda r: r["retries"] == 1)
        assert retried["oom"] is True and retried["start_window"] == 512
        assert retried["error"].startswith(
            f"oom: killed by the kernel's OOM killer ({events}: oom_kill 0 → 1); next window 512"
        )
        daemon.wait(run_id, lambda r: "start window 512" in _logs(daemon, run_id))
        # A SIGKILL with no OOM record is a plain failure, not an OOM.
        run = daemon.wait(run_id, lambda r: r["state"] == "running" and r["pid"] != run["pid"])
        os.killpg(run["pid"], signal.SIGKILL)
        again = daemon.wait(run_id, lambda r: r["retries"] == 2)
        assert again["oom"] is False and again["start_window"] == 512
        assert again["error"].startswith("worker killed by SIGKILL")
        # The kernel log's OOM record naming the worker's pid is enough (no cgroup counter).
        run = daemon.wait(run_id, lambda r: r["state"] == "running" and r["pid"] != run["pid"])
        padding = "x" * 8150  # the pid straddles the first 8 KiB read
        kmsg.write_text(
            f"6,2,20,-;{padding}\n3,3,30,-;Out of memory: Killed process {run['pid']} "
            "(python) total-vm:1000kB, anon-rss:900kB\n"
        )
        os.killpg(run["pid"], signal.SIGKILL)
        third = daemon.wait(run_id, lambda r: r["retries"] == 3)
        assert third["oom"] is True and third["start_window"] == 256
        assert f"{kmsg}: the kernel's OOM record names pid {run['pid']}" in third["error"]
        daemon.call("runs.kill", run=run_id)


def _peak_in_telemetry(url: str, run_id: str) -> int | None:
    """The run's peak RSS once telemetry holds it as done, else None."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT max(m.peak_rss) FROM geod.runs r "
                "JOIN geod.v_memory_by_stage m ON m.run_key = r.run_key "
                "WHERE r.id = %s AND r.state = 'done'",
                (run_id,),
            )
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_a_rerun_is_predicted_from_the_measured_peak_of_the_last_run(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_harness, "DAEMON_SCRIPT", DAEMON_WITH_TELEMETRY)
    sampled = {"telemetry": {"memory_interval": 0.1}}
    with running_daemon(tmp_path, telemetry=True, database_url=database_url) as daemon:
        config = fake_config(tmp_path / "inputs", "steps20", **sampled)
        first = daemon.submit(config)
        assert daemon.run(first)["prediction"] == "memory.budget"  # nothing measured yet
        daemon.wait(first, "done")
        deadline = time.monotonic() + STATE_TIMEOUT
        while (peak := _peak_in_telemetry(database_url, first)) is None:
            assert time.monotonic() < deadline, "the run's memory never reached telemetry"
            time.sleep(POLL)
        rerun = daemon.run(daemon.submit(config))
        assert (rerun["predicted_peak"], rerun["prediction"]) == (peak, f"peak of run {first}")
        # Another config on the same inputs (datasets and grid) is predicted from it too.
        renamed = fake_config(tmp_path / "inputs", "steps20-renamed", **sampled)
        same_data = daemon.run(daemon.submit(renamed))
        assert same_data["config_fingerprint"] != rerun["config_fingerprint"]
        assert same_data["data_fingerprint"] == rerun["data_fingerprint"]
        assert same_data["prediction"] == f"peak of run {first}"
        other = daemon.run(daemon.submit(fake_config(tmp_path / "other", "steps20", **sampled)))
        assert other["prediction"] == "memory.budget"
