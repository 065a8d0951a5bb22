"""``executor: dask`` on a real LocalCluster (two worker processes) against ``executor: local``.

Every run is a real worker process on the demo layers (quarter-degree grid,
resample → Parquet export → GWPCA). The local run is the reference: a Dask run,
a Dask run that loses a worker process (or all of them) to SIGKILL, and a run that stops under the
local executor and is finished by Dask, and a run on an existing cluster
(``dask scheduler`` and ``dask worker`` processes, reached by
``dask.scheduler_address``) must all leave the same layer store (values and
completion manifest) and the same tables.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from pipeline.contract import WORKER_EXIT_FAILED, WORKER_EXIT_OK
from pipeline.events import CheckpointEvent, Event, StateEvent
from tests.dask_support import (
    DASK,
    assert_exited,
    assert_same_outputs,
    dask_worker_processes,
    outputs,
    quick_config,
    run_worker,
)

#: Resample checkpoints before a test interferes (of 72): well inside the stage.
EARLY = 12
#: Dask's command line, installed next to this interpreter.
DASK_CLI = str(Path(sys.executable).with_name("dask"))


@pytest.fixture(scope="module")
def reference(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The outputs of an uninterrupted local run."""
    directory = tmp_path_factory.mktemp("local")
    run = run_worker(quick_config(directory, demo_dir))
    assert run.code == WORKER_EXIT_OK, run.stderr
    return outputs(directory)


def test_dask_run_equals_local_and_reports_its_workers(
    demo_dir: Path, reference: dict[str, Any], tmp_path: Path
) -> None:
    run = run_worker(quick_config(tmp_path, demo_dir, **DASK))
    assert run.code == WORKER_EXIT_OK, run.stderr
    assert_same_outputs(outputs(tmp_path), reference)
    # Progress: one checkpoint per window, as with the local executor.
    assert len([c for c in run.checkpoints() if c.stage == "resample"]) == 72
    # One memory series per Dask worker, labelled with its address.
    workers = {sample.worker for sample in run.dask_samples()}
    assert len(workers) == 2 and all(w.startswith("tcp://") for w in workers)
    # Log records from inside tasks come back with the Dask worker's address.
    opened = [log for log in run.logs() if " opened " in log.message]
    assert opened and {log.extra.get("worker") for log in opened} <= workers


def test_sigkilled_dask_worker_costs_nothing(
    demo_dir: Path, reference: dict[str, Any], tmp_path: Path
) -> None:
    killed: list[int] = []

    def kill_one(event: Event, process: subprocess.Popen[bytes]) -> None:
        if isinstance(event, CheckpointEvent) and event.done and not killed:
            resampled = event.stage == "resample" and event.dataset == "landcover"
            if resampled:
                victim = dask_worker_processes(process.pid)[0]
                killed.append(victim.pid)
                victim.send_signal(signal.SIGKILL)

    run = run_worker(quick_config(tmp_path, demo_dir, **DASK), kill_one)
    assert killed, "the run ended before a Dask worker could be killed"
    assert run.code == WORKER_EXIT_OK, run.stderr
    assert_same_outputs(outputs(tmp_path), reference)
    assert any(
        log.level == "WARNING" and "left the cluster" in log.message for log in run.logs()
    ), "the lost worker is reported as a log record"


def test_every_dask_worker_sigkilled_mid_stage_costs_nothing(
    demo_dir: Path, reference: dict[str, Any], tmp_path: Path
) -> None:
    """No copy of the job's shared object survives: its task is rerun on the restarted workers."""
    killed: list[int] = []
    seen: list[int] = []

    def kill_all(event: Event, process: subprocess.Popen[bytes]) -> None:
        if isinstance(event, CheckpointEvent) and event.stage == "resample":
            seen.append(1)
            if len(seen) == EARLY and not killed:
                for victim in dask_worker_processes(process.pid):
                    killed.append(victim.pid)
                    victim.send_signal(signal.SIGKILL)

    run = run_worker(quick_config(tmp_path, demo_dir, **DASK), kill_all)
    assert len(killed) == 2, "both Dask workers were killed mid-stage"
    assert run.code == WORKER_EXIT_OK, run.stderr
    assert_same_outputs(outputs(tmp_path), reference)
    assert "lose scattered data" not in run.stderr


def test_stopped_local_run_finished_by_dask(
    demo_dir: Path, reference: dict[str, Any], tmp_path: Path
) -> None:
    seen: list[int] = []

    def stop_early(event: Event, process: subprocess.Popen[bytes]) -> None:
        if isinstance(event, CheckpointEvent) and event.stage == "resample":
            seen.append(1)
            if len(seen) == EARLY:
                process.send_signal(signal.SIGTERM)

    first = run_worker(quick_config(tmp_path, demo_dir), stop_early)
    assert first.code == WORKER_EXIT_OK, first.stderr
    assert [e.state for e in first.events if isinstance(e, StateEvent)][-1] == "stopped"
    second = run_worker(quick_config(tmp_path, demo_dir, **DASK))
    assert second.code == WORKER_EXIT_OK, second.stderr
    resampled = [c for c in second.checkpoints() if c.stage == "resample"]
    assert len(resampled) <= 72 - EARLY, "the Dask attempt resumed from the local checkpoint"
    assert_same_outputs(outputs(tmp_path), reference)


def test_stop_closes_the_local_cluster(demo_dir: Path, tmp_path: Path) -> None:
    children: list[psutil.Process] = []

    def stop(event: Event, process: subprocess.Popen[bytes]) -> None:
        if isinstance(event, CheckpointEvent) and event.stage == "resample" and not children:
            children.extend(dask_worker_processes(process.pid))
            process.send_signal(signal.SIGTERM)

    run = run_worker(quick_config(tmp_path, demo_dir, **DASK), stop)
    assert run.code == WORKER_EXIT_OK, run.stderr
    assert len(children) == 2
    assert_exited(children)


def _free_port() -> int:
    """A port nothing listens on (once the probe socket is closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def dask_cluster(tmp_path: Path) -> Iterator[str]:
    """``dask scheduler`` and ``dask worker`` (2 processes × 1 thread), as the README has it."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    port = address.rsplit(":", 1)[1]
    log = (tmp_path / "cluster.log").open("wb")
    scheduler = subprocess.Popen(
        [DASK_CLI, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    workers = subprocess.Popen(
        [DASK_CLI, "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        yield address
    finally:
        for process in (workers, scheduler):
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


def test_existing_cluster_by_scheduler_address(
    dask_cluster: str, demo_dir: Path, reference: dict[str, Any], tmp_path: Path
) -> None:
    dask = {"scheduler_address": dask_cluster, "connect_timeout": 30}
    run = run_worker(quick_config(tmp_path / "run", demo_dir, executor="dask", dask=dask))
    assert run.code == WORKER_EXIT_OK, run.stderr
    assert_same_outputs(outputs(tmp_path / "run"), reference)
    assert any(f"connected to {dask_cluster}" in log.message for log in run.logs())
    assert len({sample.worker for sample in run.dask_samples()}) == 2


def test_unreachable_scheduler_is_one_line_within_the_timeout(
    demo_dir: Path, tmp_path: Path
) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    dask = {"scheduler_address": address, "connect_timeout": 2}
    started = time.monotonic()
    run = run_worker(quick_config(tmp_path, demo_dir, executor="dask", dask=dask))
    elapsed = time.monotonic() - started
    assert run.code == WORKER_EXIT_FAILED
    (failed,) = [e for e in run.events if isinstance(e, StateEvent) and e.state == "failed"]
    assert failed.reason is not None and "\n" not in failed.reason
    assert f"no Dask scheduler answered at {address} within 2 s" in failed.reason
    assert elapsed < 30, "the error comes within dask.connect_timeout (plus start-up)"
