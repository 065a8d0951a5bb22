"""Watched folder → run: how long from a file being taken to its run starting.

    .venv/bin/python bench/watch_latency.py [--rounds 10] [--settle 0.5]

A real daemon (``geod serve``) watches a folder with an ``on_new: submit`` rule
whose config globs that folder; each round renames a small GeoTIFF into it
(taken at once) and times, from the daemon's own clock, the file being taken
(it settled and opened as a complete raster) → its run's worker started. The
reference, in the same script and daemon: ``runs.submit`` of the same config
by a client → its worker started. The ratio says what the watch path adds to a
plain submission. Workers are ``tests/fake_worker.py`` (a one-step run), so the
rounds measure the daemon, not the pipeline. A second figure, a file copied in
(not renamed) → run started, includes ``settle_seconds`` by design.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import yaml
from rasterio.transform import from_origin
from serve import start_daemon

from supervisor.client import Client

REPO = Path(__file__).resolve().parent.parent
FAKE_WORKER = [sys.executable, str(REPO / "tests" / "fake_worker.py")]
ROUND_TIMEOUT = 60.0
POLL = 0.01


def raster(path: Path) -> Path:
    """An 8 × 8 float32 global GeoTIFF (the benchmark imports nothing from tests/)."""
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=8,
        height=8,
        count=1,
        dtype="float32",
        crs="EPSG:4326",
        transform=from_origin(-180, 90, 45, 22.5),
    ) as dst:
        dst.write(np.ones((1, 8, 8), "float32"))
    return path


def wait_for(client: Client, predicate: Any) -> Any:
    deadline = time.monotonic() + ROUND_TIMEOUT
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(POLL)
    raise SystemExit("a round did not finish in time")


def new_run(client: Client, known: set[str]) -> dict[str, Any]:
    """The run that is not in ``known``, once its worker has started and finished."""

    def started() -> dict[str, Any] | None:
        for run in client.runs():
            if run.id not in known and run.started is not None and run.state == "done":
                return run.model_dump()
        return None

    run = wait_for(client, started)
    known.add(run["id"])
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--settle", type=float, default=0.5, help="the rule's settle_seconds")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="geod-watch-bench-"))
    inbox, staging = tmp / "inbox", tmp / "staging"
    inbox.mkdir()
    staging.mkdir()
    config = tmp / "steps1.yml"
    config.write_text(yaml.safe_dump({"name": "steps1", "datasets": [{"glob": "inbox/*.tif"}]}))
    raster(inbox / "seed.tif")  # the glob matches something for the reference submissions
    rule = {"dir": str(inbox), "on_new": "submit", "config": str(config)}
    process, socket_path = start_daemon(
        tmp,
        telemetry=False,
        concurrency=1,
        worker_command=FAKE_WORKER,
        watch=[{**rule, "settle_seconds": args.settle}],
    )
    watched, copied, direct = [], [], []
    try:
        with Client(socket_path) as client:
            known: set[str] = set()
            new_run(client, known)  # the seed file's run
            for index in range(args.rounds):
                # Reference: a client submits the config.
                submitted = time.time()
                client.submit(str(config))
                direct.append(new_run(client, known)["started"] - submitted)
                # Renamed in: taken at once.
                name = f"r{index:03d}.tif"
                os.rename(raster(staging / name), inbox / name)
                run = new_run(client, known)
                taken = {s.path: s.taken for s in client.sources()}[str(inbox / name)]
                watched.append(run["started"] - taken)
                # Copied in: settles first.
                name = f"c{index:03d}.tif"
                began = time.time()
                shutil.copyfile(raster(staging / name), inbox / name)
                copied.append(new_run(client, known)["started"] - began)
    finally:
        process.terminate()
        process.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)
    ms = 1000.0
    ref, watch = statistics.median(direct), statistics.median(watched)
    print(f"load average {os.getloadavg()}; {args.rounds} rounds; median (max)")
    rows = (
        ("runs.submit → worker started (reference)", direct),
        ("file taken → worker started", watched),
        (f"file copied in → worker started (settle {args.settle:g} s)", copied),
    )
    for label, values in rows:
        print(f"  {label}: {statistics.median(values) * ms:.0f} ms ({max(values) * ms:.0f})")
    print(f"  ratio taken→started / reference: {watch / ref:.2f}")


if __name__ == "__main__":
    main()
