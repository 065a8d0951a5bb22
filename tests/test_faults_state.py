"""Run state across daemon crashes, damaged checkpoints, and load — real workers throughout.

* A paused run stays paused across a daemon SIGKILL (its old worker is stopped at a
  checkpoint, no new one starts until resumed) and a queued run stays queued.
* A failing and a killed run never block the queue (concurrency 1).
* A truncated manifest, a garbage state file and a truncated chunk file are
  detected, reported and recovered by re-verifying chunks: the output equals an
  uninterrupted run's.
* Eight runs at concurrency 2 with three subscribed clients: all complete, every
  client sees every run's sequence numbers contiguous, the daemon's RSS stays bounded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor.client import AsyncClient
from supervisor.protocol import NOTIFY_EVENT, NOTIFY_RUN
from tests import test_catalog as rasters
from tests.bad_inputs import geod
from tests.daemon_harness import DaemonHarness, group_alive
from tests.faults import (
    RUN_TIMEOUT,
    WORKER,
    fault_config,
    follow_history,
    output_differences,
    output_dir,
    store_differences,
    store_dir,
)

#: Long enough that a run which should stay paused or queued would have started.
STAYS_PUT = 2.0
LOAD_RUNS = 8
LOAD_CONCURRENCY = 2
LOAD_CLIENTS = 3
#: Generous bound on the daemon's RSS under load (it holds bounded histories only).
DAEMON_RSS_BOUND = 300 * 1024 * 1024
#: No analysis and one format: load runs are about the daemon, not the pipeline.
LIGHT = {"analysis": {"methods": []}, "export": {"formats": ["parquet"], "name": "demo"}}


def finished(run: dict[str, Any]) -> bool:
    return run["state"] in ("done", "failed", "killed")


def resampling(run: dict[str, Any]) -> bool:
    return run["state"] == "running" and (run["stage"] or "").startswith("resample")


@pytest.fixture(scope="module")
def reference(fault_reference: dict) -> dict:
    """An uninterrupted run of the same config under a daemon: the session's one, which
    tests/test_faults_resume.py compares with too."""
    return fault_reference


def test_paused_and_queued_runs_survive_a_daemon_sigkill(
    tmp_path: Path, demo_dir: Path, reference: dict
) -> None:
    daemon = DaemonHarness(tmp_path, worker_command=WORKER, concurrency=1)
    try:
        daemon.start()
        first = daemon.submit(fault_config(tmp_path / "a", demo_dir))
        second = daemon.submit(fault_config(tmp_path / "b", demo_dir))
        running = daemon.wait(first, resampling, RUN_TIMEOUT)
        daemon.call("runs.pause", run=first)
        paused = daemon.wait(first, "paused")
        assert daemon.run(second)["state"] == "queued"
        daemon.crash()
        assert group_alive(running["pid"]), "the worker outlives the daemon (own session)"
        daemon.start()
        # The previous life's worker is stopped at its checkpoint; none replaces it.
        deadline = time.monotonic() + RUN_TIMEOUT
        while group_alive(running["pid"]):
            assert time.monotonic() < deadline, "old worker still running"
            time.sleep(0.1)
        assert daemon.run(first)["state"] == "paused" and daemon.run(first)["pid"] is None
        # With the slot free the queued run goes first; the paused one waits for resume.
        assert daemon.wait(second, finished, RUN_TIMEOUT)["state"] == "done"
        time.sleep(STAYS_PUT)
        assert daemon.run(first)["state"] == "paused", "a paused run must not restart by itself"
        result = geod("resume", "--socket", str(daemon.socket_path), first)
        assert result.returncode == 0, result.stderr
        done = daemon.wait(first, finished, RUN_TIMEOUT)
        assert done["state"] == "done" and done["last_seq"] > paused["last_seq"]
        for run in (done, daemon.run(second)):
            assert output_differences(output_dir(reference), output_dir(run)) == []
    finally:
        daemon.cleanup()


def test_failed_and_killed_runs_never_block_the_queue(tmp_path: Path, demo_dir: Path) -> None:
    daemon = DaemonHarness(tmp_path, worker_command=WORKER, concurrency=1)
    try:
        daemon.start()
        broken, _ = rasters.truncated(tmp_path)
        failing = fault_config(tmp_path / "a", demo_dir, **LIGHT)
        text = failing.read_text().replace(str(demo_dir / "threat_ease.tif"), str(broken))
        failing.write_text(text)
        ids = [
            daemon.submit(failing),
            daemon.submit(fault_config(tmp_path / "b", demo_dir, **LIGHT)),
            daemon.submit(fault_config(tmp_path / "c", demo_dir, **LIGHT)),
        ]
        assert daemon.wait(ids[0], finished, RUN_TIMEOUT)["state"] == "failed"
        daemon.wait(ids[1], resampling, RUN_TIMEOUT)
        assert daemon.run(ids[2])["state"] == "queued"
        result = geod("kill", "--socket", str(daemon.socket_path), ids[1])
        assert result.returncode == 0, result.stderr
        assert daemon.wait(ids[1], finished)["state"] == "killed"
        assert daemon.wait(ids[2], finished, RUN_TIMEOUT)["state"] == "done"
        assert "truncated GeoTIFF" in daemon.run(ids[0])["error"]
    finally:
        daemon.cleanup()


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_damaged_checkpoints_are_detected_and_re_verified(
    tmp_path: Path, demo_dir: Path, reference: dict
) -> None:
    daemon = DaemonHarness(tmp_path, worker_command=WORKER)
    try:
        daemon.start()
        config = fault_config(tmp_path / "run", demo_dir, restart={"policy": "never"})
        run_id = daemon.submit(config)
        run_dir = daemon.state_dir / "runs" / run_id
        # Two layers complete, the third in progress: then SIGKILL the worker.
        for event in follow_history(run_dir / "events.ndjson", lambda: False):
            if event.get("type") == "stage" and event.get("id") == "resample/landcover":
                break
        os.killpg(daemon.run(run_id)["pid"], signal.SIGKILL)
        assert daemon.wait(run_id, finished)["state"] == "failed"
        assert daemon.stop() == 0
        store = run_dir / "work" / "layers.zarr"
        # Garbage state file; a manifest cut mid-line; a chunk file cut in half.
        (run_dir / "state.json").write_bytes(b"\x00{not json")
        _truncate(store / "richness" / "geod-manifest.tsv", 0.5)
        chunks = [p for p in (store / "endemism" / "c").rglob("*") if p.is_file()]
        _truncate(max(chunks, key=lambda p: p.stat().st_size), 0.5)
        daemon.start()
        run = daemon.wait(run_id, lambda r: finished(r) or r["state"] == "interrupted", 60)
        if run["state"] != "done":  # parked by the policy ("never"): the user retries
            daemon.call("runs.retry", run=run_id)
            run = daemon.wait(run_id, finished, RUN_TIMEOUT)
        assert run["state"] == "done", f"{run}\n{daemon.log()}"
        assert "state file unreadable" in daemon.log()
        said = " ".join(e["message"] for e in daemon.call("logs.tail", run=run_id, limit=2000))
        assert "damaged line(s) in the chunk manifest; re-verifying chunks" in said
        assert "chunk file(s) differ from their manifest checksum" in said
        assert "dropped 1 bad chunk(s)" in said, "the cut chunk is found and recomputed"
        assert output_differences(output_dir(reference), output_dir(run)) == []
        assert store_differences(store_dir(reference), store_dir(run)) == []
    finally:
        daemon.cleanup()


async def _watch(socket_path: Path, ids: list[str]) -> dict[str, list[int]]:
    """Subscribe, then collect every event seq per run until all ``ids`` finished."""
    client = await AsyncClient.connect(socket_path)
    try:
        snapshot = await client.call("subscribe")
        seqs: dict[str, list[int]] = {i: [] for i in ids}
        base = snapshot["last_seq"]
        states = {r["id"]: r["state"] for r in snapshot["runs"]}
        async for method, params in client.notifications():
            if method == NOTIFY_EVENT and params["run"] in seqs:
                seqs[params["run"]].append(params["seq"])
            elif method == NOTIFY_RUN:
                states[params["id"]] = params["state"]
            if all(states.get(i) in ("done", "failed", "killed") for i in ids):
                break
        return {i: [*range(1, base.get(i, 0) + 1), *s] for i, s in seqs.items()}
    finally:
        await client.close()


def test_eight_runs_three_clients_no_gap_bounded_memory(tmp_path: Path, demo_dir: Path) -> None:
    daemon = DaemonHarness(tmp_path, worker_command=WORKER, concurrency=LOAD_CONCURRENCY)
    try:
        daemon.start()
        process = psutil.Process(daemon.process.pid)
        configs = [fault_config(tmp_path / f"r{i}", demo_dir, **LIGHT) for i in range(LOAD_RUNS)]

        async def scenario() -> tuple[list[dict[str, list[int]]], int]:
            ids = [daemon.submit(configs[0]), daemon.submit(configs[1])]
            watchers = [
                asyncio.create_task(_watch(daemon.socket_path, _pending(ids, LOAD_RUNS)))
                for _ in range(LOAD_CLIENTS)
            ]
            ids += [daemon.submit(c) for c in configs[2:]]
            running = [r for r in daemon.call("runs.list") if r["state"] == "running"]
            assert len(running) <= LOAD_CONCURRENCY
            peak = 0
            while not all(w.done() for w in watchers):
                peak = max(peak, process.memory_info().rss)
                await asyncio.sleep(0.2)
            return [await w for w in watchers], peak

        seen, peak = asyncio.run(asyncio.wait_for(scenario(), timeout=600))
        runs = {r["id"]: r for r in daemon.call("runs.list")}
        assert sorted(r["state"] for r in runs.values()) == ["done"] * LOAD_RUNS
        for per_client in seen:
            for run_id, seqs in per_client.items():
                assert seqs == list(range(1, runs[run_id]["last_seq"] + 1)), run_id
        print(f"daemon peak RSS under load: {peak / 2**20:.0f} MiB")
        assert 0 < peak < DAEMON_RSS_BOUND
    finally:
        daemon.cleanup()


def _pending(first: list[str], total: int) -> list[str]:
    """Run ids r0001..r000N: the ones submitted so far and those about to be."""
    number = int(first[0][1:])
    return [f"r{number + i:04d}" for i in range(total)]
