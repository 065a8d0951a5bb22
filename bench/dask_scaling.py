"""Resampling the demo layers with the local executor and on a LocalCluster of 1 and 2 workers.

    .venv/bin/python bench/dask_scaling.py [--size small|medium|large] [--window 256] [--dir DIR]

The same multi-layer job (the four demo layers onto the demo's 5 arc-minute
grid, ``--stages resample``, ``--window``-pixel windows: one task per window)
runs as ``python -m pipeline.worker`` four times: ``executor: local`` with 1 and
2 threads, and ``executor: dask`` with a LocalCluster of 1 and 2 worker
processes of one thread each. Times are the resample stage's, from its stage
events in the run's ``events.ndjson`` (starting and stopping the cluster is not
counted; it is printed apart).

Printed: each stage time; the speed-up of 2 Dask workers over 1 (target ≥ 1.7 on
a 2-core machine); Dask against local at equal cores (target ≤ 1.2); and the
overhead per task, (Dask 1 worker − local 1 thread) / tasks: scheduling,
pickling the window to the worker and its result back. The CPU seconds of each
whole run (worker, scheduler and Dask workers) are steadier than wall times on
a shared machine. The load average is printed before and after: the wall
figures mean something on a quiet machine only.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.demo import SIZES, generate, write_demo_config
from pipeline.events import StageEvent
from pipeline.report.history import HISTORY_NAME, read_history

REPO = Path(__file__).resolve().parent.parent
#: (label, config sections) of the four runs, in the order they are printed.
RUNS: tuple[tuple[str, dict[str, object]], ...] = (
    ("local, 1 thread", {"executor": "local", "threads": 1}),
    ("local, 2 threads", {"executor": "local", "threads": 2}),
    ("dask, 1 worker", {"executor": "dask", "workers": 1}),
    ("dask, 2 workers", {"executor": "dask", "workers": 2}),
)


def _config(directory: Path, demo: Path, window: int, setup: dict[str, object]) -> Path:
    sections: dict[str, object] = {
        "resampling": {"window_size": window, "threads": setup.get("threads", 1)},
        "memory": {"budget": "2GiB", "min_window": min(window, 256), "reduced_window": window},
        "report": False,
    }
    if setup["executor"] == "dask":
        workers = {"n_workers": setup["workers"], "threads_per_worker": 1}
        sections |= {"executor": "dask", "dask": {"local_cluster": workers}}
    return write_demo_config(REPO / "config.yml", directory, demo, **sections)


def _stage_seconds(work_dir: Path) -> tuple[float, int, float]:
    """(resample stage seconds, windows, seconds from the first event to the stage start)."""
    events = read_history(work_dir / HISTORY_NAME)
    stage = [e for e in events if isinstance(e, StageEvent) and e.id == "resample"]
    start = next(e.time for e in stage if e.status == "running")
    end = next(e.time for e in stage if e.status == "done")
    windows = sum(
        e.total
        for e in events
        if isinstance(e, StageEvent) and e.kind == "dataset" and e.status == "done"
    )
    return end - start, windows, start - events[0].time


def _run(directory: Path, demo: Path, window: int, setup: dict[str, object]) -> tuple:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    config = _config(directory, demo, window, setup)
    started, cpu = time.monotonic(), _children_cpu()
    subprocess.run(
        [sys.executable, "-m", "pipeline.worker", str(config), "--stages", "resample"],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    total, cpu = time.monotonic() - started, _children_cpu() - cpu
    seconds, windows, before = _stage_seconds(directory / "work")
    return seconds, windows, before, total, cpu


def _children_cpu() -> float:
    """CPU seconds of every finished descendant (a LocalCluster's workers included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="small", help="demo layer size")
    parser.add_argument("--window", type=int, default=256, help="window edge: one task each")
    parser.add_argument("--dir", type=Path, default=None, help="keep the demo layers here")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="geod-dask-bench-"))
    demo = root / f"demo-{args.size}"
    try:
        if not demo.exists():
            generate(demo, args.size)
        print(f"load average before: {os.getloadavg()}", flush=True)
        times: dict[str, float] = {}
        tasks = 0
        for label, setup in RUNS:
            seconds, tasks, before, total, cpu = _run(root / "run", demo, args.window, setup)
            times[label] = seconds
            print(
                f"{label:17s} resample {seconds:6.2f} s for {tasks} windows "
                f"(start-up {before:.1f} s, whole worker {total:.1f} s, CPU {cpu:.1f} s)",
                flush=True,
            )
        one, two = times["dask, 1 worker"], times["dask, 2 workers"]
        print(f"speed-up dask 2 workers / 1 worker: {one / two:.2f} (target ≥ 1.7)")
        for cores, local, dask in ((1, "local, 1 thread", one), (2, "local, 2 threads", two)):
            print(f"dask / local at {cores} core(s): {dask / times[local]:.2f} (target ≤ 1.2)")
        overhead = (one - times["local, 1 thread"]) / max(1, tasks)
        print(f"overhead per task (dask 1 worker − local 1 thread): {overhead * 1000:.1f} ms")
        print(f"load average after: {os.getloadavg()}")
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
