"""A Dask run steered from the CLI through a real daemon: pause, resume, kill.

The daemon runs the real worker (``python -m pipeline.worker``), which starts a
LocalCluster of two worker processes; ``geod pause|resume|kill RUN`` are the
installed entry point in subprocesses, exactly as a shell uses them. While the
run is paused, no task computes and nothing is checkpointed; a kill leaves no
process of the run (Dask's included). (Finishing a stopped run from its checkpoint
on Dask is tests/test_dask_executor.py's.)
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import DaemonHarness, group_alive
from tests.dask_support import (
    DASK,
    RUN_TIMEOUT,
    assert_exited,
    dask_worker_processes,
    quick_config,
)

GEOD = str(Path(sysconfig.get_path("scripts")) / "geod")
WORKER = [sys.executable, "-m", "pipeline.worker"]
#: A pause must be acknowledged within this: the tasks in flight (one window each) finish first.
PAUSE_GRACE = 10.0
#: 128-pixel windows (288 tasks): the run is still resampling when a CLI command arrives.
MANY_WINDOWS: dict[str, Any] = {
    "resampling": {"window_size": 128, "threads": 1},
    "memory": {"budget": "2GiB", "min_window": 128, "reduced_window": 128},
}
#: How long a paused run is watched for progress it should not make.
PAUSED_WATCH = 2.0


@pytest.fixture()
def daemon(tmp_path: Path) -> Iterator[DaemonHarness]:
    harness = DaemonHarness(tmp_path / "daemon", worker_command=WORKER, pause_grace=PAUSE_GRACE)
    try:
        yield harness.start()
    finally:
        harness.cleanup()


def geod(daemon: DaemonHarness, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"GEOD_SOCKET": str(daemon.socket_path), "PATH": "/usr/bin:/bin"}
    return subprocess.run([GEOD, *args], capture_output=True, text=True, env=env, timeout=60)


def resampling(run: dict[str, Any]) -> bool:
    return run["state"] == "running" and (run["stage"] or "").startswith("resample/")


def test_pause_resume_kill_a_dask_run_from_the_cli(
    daemon: DaemonHarness, demo_dir: Path, tmp_path: Path
) -> None:
    config = quick_config(tmp_path / "run", demo_dir, **DASK, **MANY_WINDOWS)
    started = geod(daemon, "start", str(config))
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    running = daemon.wait(run_id, resampling, timeout=RUN_TIMEOUT)
    workers = dask_worker_processes(running["pid"])
    assert len(workers) == 2

    assert geod(daemon, "pause", run_id).returncode == 0
    paused = daemon.wait(run_id, "paused")
    assert not paused["paused_hard"], "acknowledged by the worker, not frozen by SIGSTOP"
    assert paused["stage"].startswith("resample/"), "paused between windows"
    time.sleep(PAUSED_WATCH)
    still = daemon.run(run_id)
    assert (still["state"], still["progress"]) == ("paused", paused["progress"])
    assert all(w.cpu_percent(interval=0.5) < 50 for w in workers), "no task computes"
    # Each Dask worker's samples come back with the run's memory history (the dashboard's
    # memory panel can show any one of them), apart from the run's own samples.
    history = daemon.call("memory.history", run=run_id)["samples"]
    assert len({s["worker"] for s in history if s.get("worker")}) == len(workers)
    assert any(s.get("worker") is None for s in history)

    assert geod(daemon, "resume", run_id).returncode == 0
    daemon.wait(run_id, lambda run: run["progress"] > paused["progress"])

    assert geod(daemon, "kill", run_id).returncode == 0
    killed = daemon.wait(run_id, "killed")
    assert killed["exit_code"] == 0, "SIGTERM stopped the worker at a checkpoint"
    assert killed["retries"] == 0, "the worker never failed on the way"
    assert group_alive(running["pid"]) == []
    assert_exited(workers)
    assert not (tmp_path / "run" / "out" / "demo.parquet").exists()
