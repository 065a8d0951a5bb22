"""Fault injection against a real daemon running the real demo pipeline.

A :class:`FaultDaemon` is the ``geod serve`` entry point (telemetry to a real
PostgreSQL database) on its own state directory and socket. A :class:`KillPoint`
names a moment of a run by its event stream ("after the 36th resample
checkpoint, plus 4 ms"), and :func:`inject` SIGKILLs the worker's process group,
the daemon, or both at that moment, then brings the daemon back when it was
killed and waits for the run to finish from its checkpoints. The checks compare
everything the run produced with an uninterrupted reference run:

* output files: Parquet by content (``pyarrow.Table.equals``), all others by bytes;
* the layer store: every array element-for-element (NaN equal to NaN);
* no temporary file left under the output or work directory;
* telemetry: every stamped event of the run stored once (seq 1..last, no gap, no
  duplicate).

Shared by tests/test_faults_resume.py (a handful of points) and bench/faults.py
(all of them, ``GEOD_FAULT_POINTS`` to choose).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import psycopg2
import pyarrow.parquet as pq
import zarr

from pipeline.runner import STORE_NAME
from tests.conftest import write_demo_config
from tests.daemon_harness import DaemonHarness

GEOD = str(Path(sysconfig.get_path("scripts")) / "geod")
WORKER = [sys.executable, "-m", "pipeline.worker"]
#: A half-degree grid with 128-pixel windows over 64-pixel store chunks: a run takes a
#: few seconds yet has ~70 resample checkpoints and every stage, analysis included.
FAULT_SECTIONS: dict[str, Any] = {
    "grid": {"crs": "EPSG:4326", "resolution": 0.5, "bounds": [-180, -90, 180, 90]},
    "resampling": {"window_size": 128, "threads": 1},
    "memory": {"budget": "2GiB", "min_window": 64},
    "export": {"formats": ["parquet", "csv"], "name": "demo"},
    # Each worker SIGKILL costs one retry; a short backoff keeps the suite short.
    "restart": {"policy": "on-failure", "max_retries": 5, "backoff": 0.1},
    # The report describes the run (times, retries), so it is never compared
    # (RUN_DESCRIPTIONS); drawing it cost ~2.5 s of every run. tests/test_report.py
    # covers it, stopped and failed runs included.
    "report": False,
}
#: A whole fault run (kill, restart, resume) on a loaded 2-core machine.
RUN_TIMEOUT = 180.0
#: The telemetry writer flushes every second; give it time to catch up after a run.
TELEMETRY_TIMEOUT = 60.0
#: How often the event history is polled for a trigger: well below one window's time.
TRIGGER_POLL = 0.002
#: Names of temporary files any part of geod may leave while writing (see
#: pipeline.export.atomic and pipeline.durable.write_atomic).
TEMP_PATTERNS = ("*.partial*", ".*.tmp", ".analysis-work")

Target = Literal["worker", "daemon", "both"]


class FaultDaemon(DaemonHarness):
    """``geod serve --config FILE``: the real daemon entry, telemetry on ``database_url``."""

    def __init__(self, tmp: Path, database_url: str, **settings: Any) -> None:
        values = {"telemetry": True, "database_url": database_url, "worker_command": WORKER}
        super().__init__(tmp, **{**values, **settings})
        self.database_url = database_url

    def spawn(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GEOD_")}
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                [GEOD, "serve", "--config", str(self.settings_path)],
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.tmp,
            )


def fault_config(directory: Path, demo: Path, **sections: Any) -> Path:
    """The demo pipeline, small enough for seconds per run, writing under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    return write_demo_config(directory, demo, **{**FAULT_SECTIONS, **sections})


# -- kill points ----------------------------------------------------------------------


Trigger = Callable[[dict[str, Any]], bool]


def _nth(predicate: Trigger, n: int) -> Trigger:
    """True from the ``n``-th event matching ``predicate`` on (stateful, one per point)."""
    seen = 0

    def trigger(event: dict[str, Any]) -> bool:
        nonlocal seen
        if predicate(event):
            seen += 1
        return seen >= n

    return trigger


def _stage(name: str, status: str, finished: bool = False) -> Trigger:
    return lambda e: (
        e.get("type") == "stage"
        and e.get("id") == name
        and e.get("status") == status
        and (not finished or (e.get("total", 0) > 0 and e.get("done") == e.get("total")))
    )


#: Moments of a run, named by the event after which the kill lands (plus a delay), and
#: the stage that is then in progress. Resample checkpoints are appended once a
#: window's chunks are durable and in the manifest, so a few milliseconds after one
#: the next window is being computed, written to chunks or appended to the manifest.
ANCHORS: dict[str, tuple[str, Callable[[], Trigger]]] = {
    "catalog": ("catalog", lambda: _nth(lambda e: e.get("type") == "source", 2)),
    "resample-first": (
        "resample",
        lambda: _nth(lambda e: e.get("type") == "checkpoint", 3),
    ),
    "resample-chunk-write": (
        "resample",
        lambda: _nth(lambda e: e.get("type") == "checkpoint", 30),
    ),
    "resample-manifest": (
        "resample",
        lambda: _nth(lambda e: e.get("type") == "checkpoint", 55),
    ),
    "export-merge": ("export", lambda: _stage("export", "running")),
    "export-finalize": ("export", lambda: _stage("export", "running", finished=True)),
    "export-between-commits": (
        "export",
        lambda: _nth(lambda e: e.get("type") == "output" and e.get("stage") == "export", 1),
    ),
    "analysis-som": ("analysis", lambda: _stage("analysis", "running")),
    "analysis-som-outputs": (
        "analysis",
        lambda: _nth(lambda e: e.get("type") == "output" and e.get("stage") == "analysis/som", 2),
    ),
    "analysis-gwpca-maps": (
        "analysis",
        lambda: _nth(lambda e: e.get("type") == "output" and e.get("stage") == "analysis/gwpca", 1),
    ),
}
TARGETS: tuple[Target, ...] = ("worker", "daemon", "both")
#: Delays after the anchor event, in seconds: a window takes a few milliseconds here,
#: so these land in different parts of the window after the anchor.
ANCHOR_DELAYS = (0.0, 0.003, 0.01, 0.03)
#: Points at a random time after the worker said "running", within a typical run's length
#: (about 2 s from there on a 2-core machine; a later kill would miss the run).
RANDOM_POINTS = 6
RANDOM_SPAN = (0.05, 1.5)
#: A small default set for the test suite: every stage and every target once or more.
SUITE_POINTS = (
    "catalog/worker",
    "resample-chunk-write/daemon",
    "resample-manifest/both",
    "export-merge/worker",
    "export-finalize/both",
    "export-between-commits/daemon",
    "analysis-som/worker",
)


@dataclass
class KillPoint:
    """One fault: what to kill, after which event, how long after it."""

    name: str
    target: Target
    anchor: str | None  # None: a delay after the worker's "running" state
    delay: float

    @property
    def label(self) -> str:
        where = self.anchor or "random"
        return f"{where}/{self.target}+{self.delay * 1000:.0f}ms"

    def trigger(self) -> Trigger:
        if self.anchor is None:
            return lambda e: e.get("type") == "state" and e.get("state") == "running"
        return ANCHORS[self.anchor][1]()


def all_points(seed: int = 0) -> list[KillPoint]:
    """Every anchor with every target (seeded delays), plus seeded random-time points."""
    rng = random.Random(seed)
    points = [
        KillPoint(f"{anchor}/{target}", target, anchor, rng.choice(ANCHOR_DELAYS))
        for anchor in ANCHORS
        for target in TARGETS
    ]
    for index in range(RANDOM_POINTS):
        target = TARGETS[index % len(TARGETS)]
        delay = round(rng.uniform(*RANDOM_SPAN), 3)
        points.append(KillPoint(f"random{index}/{target}", target, None, delay))
    return points


def suite_points(seed: int = 0) -> list[KillPoint]:
    by_name = {p.name: p for p in all_points(seed)}
    return [by_name[name] for name in SUITE_POINTS]


def chosen_points(spec: str | None, seed: int = 0) -> list[KillPoint]:
    """``GEOD_FAULT_POINTS``: unset = the suite's set, ``all``, a number (the first N of
    all, spread over anchors), or a comma list of point names."""
    if not spec:
        return suite_points(seed)
    points = all_points(seed)
    if spec == "all":
        return points
    if spec.isdigit():
        count = int(spec)
        # Interleave so any prefix covers as many anchors and targets as it can.
        spread = sorted(points, key=lambda p: (TARGETS.index(p.target), points.index(p)))
        step = max(1, len(spread) // max(count, 1))
        picked = spread[::step][:count]
        return picked + [p for p in spread if p not in picked][: count - len(picked)]
    wanted = [name.strip() for name in spec.split(",") if name.strip()]
    by_name = {p.name: p for p in points}
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise ValueError(f"GEOD_FAULT_POINTS: unknown point(s) {unknown}; see tests/faults.py")
    return [by_name[name] for name in wanted]


# -- injecting --------------------------------------------------------------------------


@dataclass
class FaultResult:
    point: KillPoint
    run_id: str
    run: dict[str, Any]
    stage_at_kill: str | None
    landed: bool
    attempts: int
    notes: list[str] = field(default_factory=list)


def follow_history(history: Path, stop: Callable[[], bool]) -> Iterator[dict[str, Any]]:
    """Events appended to the daemon's history file, as soon as they are flushed."""
    while not history.exists():
        if stop():
            return
        time.sleep(TRIGGER_POLL)
    with open(history, "rb") as handle:
        pending = b""
        while True:
            data = handle.read()
            if not data:
                if stop():
                    return
                time.sleep(TRIGGER_POLL)
                continue
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                try:
                    yield json.loads(line)
                except ValueError:
                    continue


def _kill_group(pid: int) -> bool:
    try:
        os.killpg(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def inject(daemon: FaultDaemon, config: Path, point: KillPoint) -> FaultResult:
    """Submit ``config``, SIGKILL at ``point``, recover, wait for the run to be done."""
    run_id = daemon.submit(config)
    history = daemon.state_dir / "runs" / run_id / "events.ndjson"
    trigger = point.trigger()
    stage: str | None = None
    started = time.monotonic()

    def finished() -> bool:
        if time.monotonic() - started > RUN_TIMEOUT:
            raise AssertionError(f"{point.label}: trigger never seen\n{daemon.log()}")
        return daemon.run(run_id)["state"] in ("done", "failed", "killed")

    fired = False
    for event in follow_history(history, finished):
        if event.get("type") == "stage" and event.get("parent") == "run":
            stage = event["id"] if event.get("status") == "running" else stage
        if trigger(event):
            fired = True
            break
    if not fired:
        raise AssertionError(f"{point.label}: the run ended before its trigger")
    time.sleep(point.delay)
    killed_at = time.time()
    pid = daemon.run(run_id)["pid"] if point.target != "daemon" else None
    landed = True
    if point.target in ("worker", "both"):
        landed = pid is not None and _kill_group(pid)
    if point.target in ("daemon", "both"):
        landed = landed and daemon.run(run_id)["state"] not in ("done", "failed")
        daemon.crash()
        daemon.start()
    run = daemon.wait(run_id, lambda r: r["state"] in ("done", "failed"), RUN_TIMEOUT)
    events = _read_history(history)
    attempts = sum(1 for e in events if e.get("type") == "state" and e["state"] == "running")
    if point.anchor is None:  # a timed point: the stage the first worker was in by then
        stage = _stage_at(events, killed_at)
    return FaultResult(point, run_id, run, stage, landed, attempts)


def _stage_at(events: list[dict[str, Any]], moment: float) -> str | None:
    """The top-level stage last reported running before ``moment`` (wall clock)."""
    stage = None
    for event in events:
        if event.get("time", 0) > moment:
            break
        if event.get("type") == "stage" and event.get("parent") == "run":
            stage = event["id"] if event.get("status") == "running" else stage
    return stage


def _read_history(history: Path) -> list[dict[str, Any]]:
    events = []
    with open(history, "rb") as handle:
        for line in handle:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


# -- checking ---------------------------------------------------------------------------


def output_dir(run: dict[str, Any]) -> Path:
    (table,) = [o for o in run["outputs"] if o["kind"] == "parquet" and o["stage"] == "export"]
    return Path(table["path"]).parent


def store_dir(run: dict[str, Any]) -> Path:
    return Path(run["run_dir"]) / "work" / STORE_NAME


#: Outputs that describe the run rather than its data (times, retries): never equal.
RUN_DESCRIPTIONS = ("report.html",)


def output_differences(reference: Path, candidate: Path) -> list[str]:
    """Files of ``candidate`` that differ from ``reference`` (Parquet by content)."""
    problems = []
    names = sorted(p.name for p in reference.iterdir() if p.name not in RUN_DESCRIPTIONS)
    got = sorted(p.name for p in candidate.iterdir() if p.name not in RUN_DESCRIPTIONS)
    if names != got:
        problems.append(f"file names differ: {names} vs {got}")
    for name in set(names) & set(got):
        ref, new = reference / name, candidate / name
        if name.endswith(".parquet"):
            if not pq.read_table(ref).equals(pq.read_table(new)):
                problems.append(f"{name}: table content differs")
        elif ref.read_bytes() != new.read_bytes():
            problems.append(f"{name}: bytes differ")
    return problems


def store_differences(reference: Path, candidate: Path) -> list[str]:
    """Layers (and coordinates) of two layer stores that are not element-for-element equal."""
    ref = zarr.open_group(str(reference), mode="r")
    new = zarr.open_group(str(candidate), mode="r")
    ref_names = sorted(name for name, _ in ref.arrays())
    new_names = sorted(name for name, _ in new.arrays())
    if ref_names != new_names:
        return [f"store arrays differ: {ref_names} vs {new_names}"]
    problems = []
    for name in ref_names:
        a, b = np.asarray(ref[name][...]), np.asarray(new[name][...])
        equal_nan = a.dtype.kind == "f"
        if a.shape != b.shape or not np.array_equal(a, b, equal_nan=equal_nan):
            problems.append(f"store array {name} differs")
    return problems


def leftovers(*directories: Path) -> list[Path]:
    """Temporary files or scratch directories left under ``directories``."""
    found: list[Path] = []
    for directory in directories:
        for pattern in TEMP_PATTERNS:
            found.extend(directory.rglob(pattern))
    return sorted(set(found))


@dataclass
class TelemetryCount:
    last_seq: int
    rows: int
    distinct: int
    lowest: int | None
    highest: int | None

    @property
    def lost(self) -> int:
        return self.last_seq - self.distinct

    @property
    def duplicates(self) -> int:
        return self.rows - self.distinct


def telemetry_count(database_url: str, run_id: str, last_seq: int) -> TelemetryCount:
    """The run's rows in ``geod.events`` once the writer caught up (or the timeout passed)."""
    deadline = time.monotonic() + TELEMETRY_TIMEOUT
    while True:
        conn = psycopg2.connect(database_url)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) "
                    "FROM geod.events WHERE run = %s",
                    (run_id,),
                )
                rows, distinct, lowest, highest = cur.fetchone()
        finally:
            conn.close()
        count = TelemetryCount(last_seq, rows, distinct, lowest, highest)
        if (highest or 0) >= last_seq or time.monotonic() > deadline:
            return count
        time.sleep(0.2)
