"""Real pipeline workers on the demo layers with either executor, and output comparison.

A worker runs as the daemon runs it (``python -m pipeline.worker CONFIG``) with its
events on a pipe, so tests react to its checkpoints (kill a Dask worker, stop the
run) and read its log records and memory samples. Its Dask workers are its child
processes (a LocalCluster's worker processes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow.parquet as pq
import zarr

from pipeline.contract import EVENTS_FD_ENV
from pipeline.events import CheckpointEvent, Event, LogEvent, MemoryEvent, decode
from pipeline.runner import STORE_NAME
from pipeline.store import MANIFEST_NAME
from tests.conftest import write_demo_config

#: A quarter-degree grid in 256-pixel windows: 18 windows per layer, a run in seconds.
QUICK: dict[str, Any] = {
    "grid": {"crs": "EPSG:4326", "resolution": 0.25, "bounds": [-180, -90, 180, 90]},
    "resampling": {"window_size": 256, "threads": 1},
    "export": {"formats": ["parquet"], "name": "demo"},
    "analysis": {
        "methods": ["gwpca"],
        "gwpca": {"bandwidth": 50, "subsample": 8, "components": 2, "batch_points": 1000},
    },
    "report": False,
}
#: The LocalCluster of the tests: two worker processes of one thread.
DASK = {"executor": "dask", "dask": {"local_cluster": {"n_workers": 2, "threads_per_worker": 1}}}
LAYERS = ("richness", "endemism", "landcover", "threat")
#: Outputs compared by content.
TABLES = ("demo.parquet", "gwpca_local.parquet")
#: Bound for one quick run with either executor on a loaded 2-core machine.
RUN_TIMEOUT = 120.0


def quick_config(directory: Path, demo: Path, **sections: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return write_demo_config(directory, demo, **{**QUICK, **sections})


@dataclass
class WorkerRun:
    """A finished worker: its exit code, events and stderr."""

    code: int
    events: list[Event] = field(default_factory=list)
    stderr: str = ""

    def logs(self) -> list[LogEvent]:
        return [e for e in self.events if isinstance(e, LogEvent)]

    def checkpoints(self) -> list[CheckpointEvent]:
        return [e for e in self.events if isinstance(e, CheckpointEvent)]

    def dask_samples(self) -> list[MemoryEvent]:
        return [e for e in self.events if isinstance(e, MemoryEvent) and e.worker]


def run_worker(
    config: Path,
    on_event: Callable[[Event, subprocess.Popen[bytes]], None] | None = None,
    timeout: float = RUN_TIMEOUT,
) -> WorkerRun:
    """``python -m pipeline.worker CONFIG`` to its end; ``on_event`` sees each event live."""
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, **{EVENTS_FD_ENV: str(write_fd)})
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.worker", str(config)],
        env=env,
        pass_fds=(write_fd,),
        stderr=subprocess.PIPE,
    )
    os.close(write_fd)
    run = WorkerRun(code=-1)

    def pump() -> None:
        with os.fdopen(read_fd, "rb") as stream:
            for line in stream:
                event = decode(line)
                run.events.append(event)
                if on_event is not None:
                    on_event(event, process)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        _, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    reader.join(timeout)
    run.code, run.stderr = process.returncode, err.decode(errors="replace")
    return run


def dask_worker_processes(pid: int) -> list[psutil.Process]:
    """A run worker's LocalCluster worker processes (spawned children, not the tracker)."""
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "spawn_main" in cmdline and "resource_tracker" not in cmdline:
            found.append(child)
    return found


def assert_exited(processes: list[psutil.Process], timeout: float = 10.0) -> None:
    """Every one of ``processes`` ends within ``timeout`` (a zombie counts as ended)."""
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"Dask worker processes left behind: {alive}"


def outputs(directory: Path) -> dict[str, Any]:
    """Everything compared between runs: every layer's values and manifest, the tables."""
    store = directory / "work" / STORE_NAME
    group = zarr.open_group(store, mode="r")
    found: dict[str, Any] = {}
    for name in LAYERS:
        found[name] = np.asarray(group[name][:])
        lines = (store / name / MANIFEST_NAME).read_text().splitlines()
        found[f"{name} manifest"] = sorted(lines)
    for table in TABLES:
        found[table] = pq.read_table(directory / "out" / table)
    return found


def assert_same_outputs(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(got[key], value, equal_nan=value.dtype.kind == "f"), key
        elif hasattr(value, "equals"):
            assert got[key].schema.equals(value.schema, check_metadata=True), key
            assert got[key].equals(value), key
        else:
            assert got[key] == value, key
