"""Resampling the demo layers with the local executor and on a LocalCluster of 1 and 2 workers.

    .venv/bin/python bench/dask_scaling.py [--size small|medium|large] [--window 256]
        [--task-items N] [--repeat N] [--no-pin] [--dir DIR]

The same multi-layer job (the four demo layers onto the demo's 5 arc-minute
grid, ``--stages resample``, ``--window``-pixel windows) runs as ``python -m
pipeline.worker`` four times per round: ``executor: local`` with 1 and 2
threads, and ``executor: dask`` with a LocalCluster of 1 and 2 worker processes
of one thread each, batching up to ``--task-items`` windows per Dask task
(``dask.task_items``; 1 is one task per window). ``--repeat`` rounds alternate
the four setups; the fastest stage time of each counts. Times are the resample
stage's, from its stage events the worker writes to its events descriptor; starting the
cluster is not counted in them and is printed apart (Dask run's time from its
first event to the stage start, minus the local run's).

Equal cores: each run and all its processes (the run's worker, the Dask
scheduler and workers) are pinned to as many cores as it has threads or Dask
workers (``sched_setaffinity``, inherited by every child). Unpinned, the
"1 thread" local run still decodes and writes on helper threads and uses about
1.5 cores, and a 1-worker Dask run's scheduler and client use the second core
beside the worker: neither is a one-core figure. ``--no-pin`` runs them as a
user would, on every core.

Printed: the load average (``uptime``) before and after; per setup the stage
time, ms per window, Dask tasks and ms per task (stage time / tasks), the
workers' own ms per window (from the pool's summary record), the whole run's
wall and CPU seconds (worker, scheduler and Dask workers; steadier than wall
times on a shared machine); the speed-up of 2 Dask workers over 1 (target ≥ 1.7
on a 2-core machine); Dask against local at equal cores (target ≤ 1.2); and the
overhead per task, (Dask 1 worker − local 1 thread) / tasks. The wall figures
mean something on a quiet machine only.
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
from dataclasses import dataclass
from pathlib import Path

from pipeline.contract import EVENTS_FD_ENV
from pipeline.demo import SIZES, generate, write_demo_config
from pipeline.events import LogEvent, StageEvent
from pipeline.report.history import read_history

REPO = Path(__file__).resolve().parent.parent
#: Where a run's events (log records included) are written, in its directory.
EVENTS_FILE = "worker-events.ndjson"
#: (label, config sections) of the four runs, in the order they are printed.
RUNS: tuple[tuple[str, dict[str, object]], ...] = (
    ("local, 1 thread", {"executor": "local", "threads": 1, "cores": 1}),
    ("local, 2 threads", {"executor": "local", "threads": 2, "cores": 2}),
    ("dask, 1 worker", {"executor": "dask", "workers": 1, "cores": 1}),
    ("dask, 2 workers", {"executor": "dask", "workers": 2, "cores": 2}),
)


def _config(
    directory: Path, demo: Path, window: int, task_items: int, setup: dict[str, object]
) -> Path:
    sections: dict[str, object] = {
        "resampling": {"window_size": window, "threads": setup.get("threads", 1)},
        "memory": {"budget": "2GiB", "min_window": min(window, 256), "reduced_window": window},
        "report": False,
    }
    if setup["executor"] == "dask":
        workers = {"n_workers": setup["workers"], "threads_per_worker": 1}
        dask = {"local_cluster": workers, "task_items": task_items}
        sections |= {"executor": "dask", "dask": dask}
    return write_demo_config(REPO / "config.yml", directory, demo, **sections)


@dataclass(frozen=True)
class Measured:
    """One run of one setup."""

    seconds: float  # the resample stage
    windows: int
    startup: float  # first event to the stage start (catalog, cluster start-up)
    tasks: int  # Dask tasks (0: local)
    worker_ms: float | None  # the Dask workers' own ms per window
    total: float  # the whole worker process, wall
    cpu: float  # the whole worker process and its children, CPU


def _measure(path: Path, total: float, cpu: float) -> Measured:
    """The stage's seconds and windows, and the Dask pools' summary records, from the events."""
    events = read_history(path)
    stage = [e for e in events if isinstance(e, StageEvent) and e.id == "resample"]
    start = next(e.time for e in stage if e.status == "running")
    end = next(e.time for e in stage if e.status == "done")
    windows = sum(
        e.total
        for e in events
        if isinstance(e, StageEvent) and e.kind == "dataset" and e.status == "done"
    )
    pools = [
        e.extra
        for e in events
        if isinstance(e, LogEvent) and e.logger == "geod.dask" and "tasks" in e.extra
    ]
    items = sum(int(p["items"]) for p in pools)
    worker_ms = sum(p["per_item_ms"] * p["items"] for p in pools) / items if items else None
    tasks = sum(int(p["tasks"]) for p in pools)
    return Measured(end - start, windows, start - events[0].time, tasks, worker_ms, total, cpu)


def _run(
    directory: Path,
    demo: Path,
    window: int,
    task_items: int,
    setup: dict[str, object],
    pin: bool,
) -> Measured:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    config = _config(directory, demo, window, task_items, setup)
    # The worker's events on a file descriptor, as the daemon reads them: log records
    # (the Dask pools' summaries) go there, not to the work directory's history.
    events = directory / EVENTS_FILE
    cores = _cores(int(str(setup["cores"]))) if pin else None
    started, cpu = time.monotonic(), _children_cpu()
    with open(events, "wb") as sink:
        subprocess.run(
            [sys.executable, "-m", "pipeline.worker", str(config), "--stages", "resample"],
            check=True,
            cwd=REPO,
            capture_output=True,
            env=dict(os.environ, **{EVENTS_FD_ENV: str(sink.fileno())}),
            pass_fds=(sink.fileno(),),
            preexec_fn=None if cores is None else lambda: os.sched_setaffinity(0, cores),
        )
    total, cpu = time.monotonic() - started, _children_cpu() - cpu
    return _measure(events, total, cpu)


def _cores(count: int) -> set[int]:
    """The first ``count`` cores this process may run on."""
    allowed = sorted(os.sched_getaffinity(0))
    if count > len(allowed):
        raise SystemExit(f"--pin: a setup needs {count} cores, this process has {len(allowed)}")
    return set(allowed[:count])


def _uptime() -> str:
    """``uptime``'s line (load averages over 1, 5 and 15 minutes)."""
    return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()


def _children_cpu() -> float:
    """CPU seconds of every finished descendant (a LocalCluster's workers included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="small", help="demo layer size")
    parser.add_argument("--window", type=int, default=256, help="window edge in pixels")
    parser.add_argument(
        "--task-items", type=int, default=16, help="dask.task_items: most windows per Dask task"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of the four setups; the fastest counts"
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="run every setup on all cores instead of as many as its threads or workers",
    )
    parser.add_argument("--dir", type=Path, default=None, help="keep the demo layers here")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="geod-dask-bench-"))
    demo = root / f"demo-{args.size}"
    try:
        if not demo.exists():
            generate(demo, args.size)
        print(f"before: {_uptime()}", flush=True)
        pinned = "each run pinned to its threads' or workers' cores" if args.pin else "unpinned"
        print(f"cores: {os.cpu_count()} ({pinned}), dask.task_items {args.task_items}", flush=True)
        best: dict[str, Measured] = {}
        for round_ in range(args.repeat):
            for label, setup in RUNS:
                got = _run(root / "run", demo, args.window, args.task_items, setup, args.pin)
                if label not in best or got.seconds < best[label].seconds:
                    best[label] = got
                tasks = f", {got.tasks} tasks" if got.tasks else ""
                print(
                    f"[{round_ + 1}] {label:17s} resample {got.seconds:6.2f} s{tasks}",
                    flush=True,
                )
        print(f"after: {_uptime()}")
        print(f"fastest of {args.repeat}:")
        for label, _ in RUNS:
            got = best[label]
            per_task = (
                f", {got.tasks} tasks, {1000 * got.seconds / got.tasks:.1f} ms/task"
                f", workers {got.worker_ms:.2f} ms/window"
                if got.tasks and got.worker_ms is not None
                else ""
            )
            print(
                f"  {label:17s} {got.seconds:6.2f} s, {got.windows} windows, "
                f"{1000 * got.seconds / max(1, got.windows):.2f} ms/window{per_task}; "
                f"start-up {got.startup:.1f} s, whole run {got.total:.1f} s, CPU {got.cpu:.1f} s"
            )
        local1, local2 = best["local, 1 thread"], best["local, 2 threads"]
        one, two = best["dask, 1 worker"], best["dask, 2 workers"]
        for label, dask, local in (("1 worker", one, local1), ("2 workers", two, local1)):
            print(f"cluster start-up ({label}): {dask.startup - local.startup:.1f} s")
        print(f"speed-up dask 2 workers / 1 worker: {one.seconds / two.seconds:.2f} (target ≥ 1.7)")
        print(f"speed-up local 2 threads / 1 thread: {local1.seconds / local2.seconds:.2f}")
        for cores, local, dask in ((1, local1, one), (2, local2, two)):
            ratio = dask.seconds / local.seconds
            print(f"dask / local at {cores} core(s): {ratio:.2f} (target ≤ 1.2)")
        overhead = (one.seconds - local1.seconds) / max(1, one.tasks)
        print(f"overhead per task (dask 1 worker − local 1 thread): {overhead * 1000:.1f} ms")
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
