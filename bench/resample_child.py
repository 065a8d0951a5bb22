"""Shared by the resampling benchmarks: synthetic inputs, one measured child run each side.

Both sides run as child processes reaped with ``os.wait4``, so their peak RSS
(``ru_maxrss``) is measured the same way: gdalwarp as the binary, geod as
``python bench/resample_child.py ...``, which runs ``resample_dataset`` exactly as
the worker does (config, catalog, governor, layer store) and prints one JSON line
with the time spent in the stage.

    .venv/bin/python bench/resample_child.py SOURCE STORE --method average \
        --threads 1 --window 1024 --budget 1GiB --resolution 0.0833333
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

#: Rows generated and written per step, to keep the generator's own memory small.
GENERATE_ROWS = 512
NOISE_LEVELS, NOISE_STEP = 4, 0.25


def generate_source(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A global EPSG:4326 float32 layer: smooth field + noise + nodata "oceans", tiled deflate."""
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    res = 360.0 / width
    profile = dict(
        driver="GTiff", width=width, height=height, count=1, dtype="float32", crs="EPSG:4326",
        transform=from_origin(-180, 90, res, 360.0 / width), nodata=-9999.0, tiled=True,
        blockxsize=256, blockysize=256, compress="deflate", predictor=3, BIGTIFF="IF_SAFER",
    )  # fmt: skip
    partial = path.with_suffix(".partial.tif")
    cols = np.arange(width)[None, :]
    with rasterio.open(partial, "w", **profile) as dst:
        for row0 in range(0, height, GENERATE_ROWS):
            rows = np.arange(row0, min(height, row0 + GENERATE_ROWS))[:, None]
            lon = -180 + (cols + 0.5) * res
            lat = 90 - (rows + 0.5) * res
            field = 15 * np.sin(np.radians(lon) * 3) * np.cos(np.radians(lat) * 2) + lat / 3
            # Quarter-unit noise: texture for the kernels, yet compressible enough
            # that the 1 arc-minute input stays a few hundred MB on disk.
            field = field + rng.integers(0, NOISE_LEVELS, field.shape) * NOISE_STEP
            field[np.sin(np.radians(lon) * 2) * np.cos(np.radians(lat) * 3) > 0.6] = -9999.0
            window = rasterio.windows.Window(0, row0, width, rows.shape[0])
            dst.write(field.astype("float32"), 1, window=window)
    partial.rename(path)
    return path


#: Run by a bare ``python -S`` between us and the measured command. ``ru_maxrss``
#: of a process includes the memory of the image it was forked from (the kernel
#: keeps the pre-exec high-water mark), so a command forked straight from this
#: benchmark would inherit the benchmark's own RSS; forked from this ~10 MB
#: launcher it reports its own peak.
_LAUNCHER = """
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
os.write(2, f"MEASURE {wall} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}\\n".encode())
sys.exit(os.waitstatus_to_exitcode(status))
"""


def load_average(when: str) -> str:
    """``load average WHEN: 1 5 15`` — every ratio on a shared machine is read with it."""
    return "load average {}: {:.2f} {:.2f} {:.2f}".format(when, *os.getloadavg())


@dataclass
class Measured:
    seconds: float
    peak_rss: int
    cpu_seconds: float
    detail: dict


def run_measured(argv: list[str]) -> tuple[Measured, str]:
    """Run a command to completion: wall and CPU seconds, peak RSS (bytes), and its stdout.

    The command runs with Python's default of caching compiled modules: a
    ``PYTHONDONTWRITEBYTECODE`` in the calling shell would make every geod process
    recompile the project's sources (~0.3 s a process), which no user pays twice.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    result = subprocess.run(
        [sys.executable, "-S", "-c", _LAUNCHER, *argv], capture_output=True, text=True, env=env
    )
    lines = result.stderr.strip().splitlines()
    if result.returncode != 0 or not lines or not lines[-1].startswith("MEASURE "):
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr[-2000:]}")
    _, wall, rss_kib, cpu = lines[-1].split()
    return Measured(float(wall), int(rss_kib) * 1024, float(cpu), {}), result.stdout


def gdalwarp(source: Path, out: Path, method: str, threads: int, resolution: float) -> Measured:
    """gdalwarp with its defaults, on the same grid, method, output type and threads."""
    argv = [
        "gdalwarp", "-q", "-overwrite", "-r", method, "-t_srs", "EPSG:4326",
        "-te", "-180", "-90", "180", "90", "-tr", repr(resolution), repr(resolution),
        "-ot", "Float32", "-dstnodata", "nan",
    ]  # fmt: skip
    if threads > 1:
        argv += ["-multi", "-wo", f"NUM_THREADS={threads}"]
    measured, _ = run_measured([*argv, str(source), str(out)])
    return measured


def geod(
    source: Path,
    store: Path,
    method: str,
    threads: int,
    window: int,
    budget: str,
    resolution: float,
) -> Measured:
    """``resample_dataset`` in a child process; ``detail`` has the stage's own times."""
    argv = [
        sys.executable, str(Path(__file__).resolve()), str(source), str(store),
        "--method", method, "--threads", str(threads), "--window", str(window),
        "--budget", budget, "--resolution", repr(resolution),
    ]  # fmt: skip
    measured, out = run_measured(argv)
    measured.detail = json.loads(out.strip().splitlines()[-1])
    return measured


def parity(store: Path, reference: Path) -> tuple[bool, float]:
    """(nodata masks equal, max abs diff / data range) of geod's layer vs gdalwarp's file."""
    import zarr

    ours = np.asarray(zarr.open_array(store / "layer", mode="r")[:])
    with rasterio.open(reference) as src:
        ref = src.read(1)
    mask = np.isnan(ref)
    same_mask = bool((mask == np.isnan(ours)).all())
    valid = ~mask & ~np.isnan(ours)
    values = ref[valid].astype("float64")
    spread = float(values.max() - values.min())
    return same_mask, float(np.abs(ours[valid] - values).max()) / spread


def _child(argv: list[str]) -> None:
    import pipeline
    from pipeline.catalog import inspect, prefork
    from pipeline.resample import resample_dataset
    from pipeline.store import LayerStore

    parser = argparse.ArgumentParser()
    parser.add_argument("source", type=Path)
    parser.add_argument("store", type=Path)
    parser.add_argument("--method", default="average")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--budget", default="1GiB")
    parser.add_argument("--resolution", type=float, required=True)
    args = parser.parse_args(argv)
    prefork()  # as the worker does before its threads start: the catalog child is forked
    config = pipeline.parse_config(
        {
            "datasets": [{"name": "layer", "path": str(args.source), "resampling": args.method}],
            "grid": {"resolution": args.resolution},
            "resampling": {"window_size": args.window, "threads": args.threads},
            "memory": {"budget": args.budget},
            "paths": {"work_dir": str(args.store.parent)},
        }
    )
    ctx = pipeline.run_context(config, initial_window=args.window)
    governor = ctx.governor
    grid = pipeline.target_grid(config)
    dataset = config.datasets[0]
    source = inspect(dataset, config.catalog)
    store = LayerStore(args.store, grid, config.memory.min_window)
    node = ctx.stage("resample").child(dataset.name, "dataset")
    start, cpu = time.perf_counter(), time.process_time()
    resample_dataset(ctx, dataset, source, grid, store, node)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "budget": governor.budget,
                      "window_size": governor.window_size}))  # fmt: skip


if __name__ == "__main__":
    _child(sys.argv[1:])
