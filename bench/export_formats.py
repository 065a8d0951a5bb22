"""Export writers against bare pyarrow / xarray writes of the same data.

    .venv/bin/python bench/export_formats.py [--resolution 0.05] [--repeat 2] [--dir DIR]

The merged table of a synthetic global store (four layers, ~60 % ocean; see
bench/synthetic_store.py) is built once in memory. Each format then writes that
same table twice: through geod's exporter (buffered 100k-row groups / rounded
floats, partial file, fsync, rename) and through a bare
``pyarrow.parquet.write_table`` / ``pyarrow.csv.write_csv`` call with the same
compression. Printed per format: best-of-``--repeat`` times, throughput ratio
bare/geod (target ≥ 0.7), output sizes; then the csv/parquet time ratio of both
paths (pyarrow's own writers give ~2.6× on a 29 M-row table).

The grid formats (Zarr, NetCDF) are measured in child processes, so each peak
RSS is that writer's alone: geod's streaming writer (one merge pass, region by
region from the store) against the plain xarray route a user would type
(``open_zarr(store).load()`` then ``to_zarr``/``to_netcdf``), with the store's
uncompressed size for scale: geod's peak should stay flat as the store grows,
the plain route's grows with it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from synthetic_store import DATASETS, SyntheticRun, build, open_run

import pipeline
from pipeline.config import PipelineConfig
from pipeline.export.csv_text import CsvExporter
from pipeline.export.parquet import ParquetExporter
from pipeline.export.xarray_stack import NETCDF_DEFLATE_LEVEL, NetcdfExporter, ZarrExporter
from pipeline.merge import MergeStream

TARGET = 0.7
#: Child-process modes: (writer, format) → what the child runs.
GRID_FORMATS = ("zarr", "netcdf")
MIB = 2**20


def peak_rss() -> int:
    """This process's peak RSS in bytes: VmHWM, which (unlike getrusage's ru_maxrss,
    inherited across fork and exec) starts afresh in the child."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def grid_child(mode: str, directory: Path, resolution: float) -> dict[str, float]:
    """One grid export in this (child) process; its time and peak RSS above the baseline."""
    writer, fmt = mode.split("-")
    run = open_run(directory, resolution)
    out = directory / "out"
    out.mkdir(exist_ok=True)
    baseline = peak_rss()
    start = time.perf_counter()
    if writer == "geod":
        stream = MergeStream(run.store, run.grid, run.config)
        factory = ZarrExporter if fmt == "zarr" else NetcdfExporter
        exporter = factory(out / f"geod.{fmt}", stream)
        governor = pipeline.run_context(run.config).governor
        for chunk in stream.chunks(governor):
            exporter.write_chunk(chunk)
        exporter.close()
        exporter.commit()
    else:
        import xarray as xr

        names = [name for name, _ in DATASETS]
        dataset = xr.open_zarr(run.store.root, consolidated=False)[names].load().drop_encoding()
        dataset.attrs = {}
        # The same chunks and compression as geod's writers.
        chunks = (run.store.chunk, run.store.chunk)
        if fmt == "zarr":
            encoding = {name: {"chunks": chunks} for name in names}
            dataset.to_zarr(
                out / "xarray.zarr", mode="w", zarr_format=2, consolidated=True, encoding=encoding
            )
        else:
            deflate = {"zlib": True, "complevel": NETCDF_DEFLATE_LEVEL, "shuffle": True}
            height, width = run.grid.height, run.grid.width
            sizes = (min(chunks[0], height), min(chunks[1], width))  # HDF5: chunk ≤ shape
            encoding = {name: {"chunksizes": sizes, **deflate} for name in names}
            dataset.to_netcdf(out / "xarray.nc", engine="h5netcdf", encoding=encoding)
    return {"seconds": time.perf_counter() - start, "peak": peak_rss(), "baseline": baseline}


def run_child(mode: str, directory: Path, resolution: float) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", mode, "--dir", str(directory)]
    result = subprocess.run(
        [*command, "--resolution", str(resolution)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def grid_table(directory: Path, resolution: float, store: Path, cells: int) -> None:
    """Zarr/NetCDF: geod's streaming writer vs plain xarray, time and peak RSS."""
    raw = cells * sum(np.dtype(dtype).itemsize for _, dtype in DATASETS)
    disk = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    print(f"store: {raw / MIB:.0f} MiB uncompressed, {disk / MIB:.0f} MiB on disk")
    for fmt in GRID_FORMATS:
        geod = run_child(f"geod-{fmt}", directory, resolution)
        plain = run_child(f"xarray-{fmt}", directory, resolution)
        grew = {
            name: (r["peak"] - r["baseline"]) / MIB
            for name, r in (("geod", geod), ("xarray", plain))
        }
        print(
            f"{fmt:8s} xarray {plain['seconds']:6.2f} s  geod {geod['seconds']:6.2f} s  "
            f"throughput ratio {plain['seconds'] / geod['seconds']:.2f}  "
            f"peak RSS geod {geod['peak'] / MIB:.0f} MiB (+{grew['geod']:.0f} for the write), "
            f"xarray {plain['peak'] / MIB:.0f} MiB (+{grew['xarray']:.0f}); "
            f"store uncompressed {raw / MIB:.0f} MiB"
        )


def best_of(repeat: int, action: Callable[[], Path]) -> tuple[float, int]:
    """Fastest wall time of ``repeat`` runs, and the size of the file written."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        path = action()
        times.append(time.perf_counter() - start)
    return min(times), path.stat().st_size


def merged_table(stream: MergeStream, config: PipelineConfig) -> pa.Table:
    governor = pipeline.run_context(config).governor
    return pa.Table.from_batches([c.batch for c in stream.chunks(governor)], stream.schema)


def table_formats(run: SyntheticRun, directory: Path, repeat: int) -> bool:
    """Parquet/CSV: geod's exporters vs bare pyarrow writes of the same in-memory table."""
    stream = MergeStream(run.store, run.grid, run.config)
    table = merged_table(stream, run.config)
    batches = table.to_batches()
    out = directory / "out"
    out.mkdir(parents=True, exist_ok=True)
    options = run.config.export
    print(
        f"grid {run.grid.width}×{run.grid.height}, merged table {table.num_rows:,} rows × "
        f"{table.num_columns} columns, {table.nbytes / 2**20:.0f} MiB in memory"
    )

    def ours(exporter_factory: Callable[[], ParquetExporter | CsvExporter]) -> Path:
        exporter = exporter_factory()
        for batch in batches:
            exporter.write(batch)
        exporter.commit()
        return exporter.path

    def bare_parquet() -> Path:
        path = out / "bare.parquet"
        pq.write_table(
            table,
            path,
            compression=options.parquet.compression,
            row_group_size=options.parquet.row_group_size,
        )
        return path

    def bare_csv() -> Path:
        path = out / "bare.csv"
        pacsv.write_csv(table, path)
        return path

    cases = {
        "parquet": (
            bare_parquet,
            lambda: ours(
                lambda: ParquetExporter(
                    out / "geod.parquet", stream.schema, options.parquet, run.grid
                )
            ),
        ),
        "csv": (
            bare_csv,
            lambda: ours(lambda: CsvExporter(out / "geod.csv", stream.schema, options.csv)),
        ),
    }
    times: dict[str, tuple[float, float]] = {}
    ok = True
    for name, (bare, geod) in cases.items():
        bare_time, bare_size = best_of(repeat, bare)
        geod_time, geod_size = best_of(repeat, geod)
        ratio = bare_time / geod_time
        ok &= ratio >= TARGET
        times[name] = (bare_time, geod_time)
        print(
            f"{name:8s} bare pyarrow {bare_time:6.2f} s  geod {geod_time:6.2f} s  "
            f"throughput ratio {ratio:.2f} (target ≥ {TARGET})  "
            f"size bare {bare_size / 2**20:.1f} MiB, geod {geod_size / 2**20:.1f} MiB"
        )
    print(
        f"csv/parquet time ratio: bare {times['csv'][0] / times['parquet'][0]:.2f}×, "
        f"geod {times['csv'][1] / times['parquet'][1]:.2f}×"
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=float, default=0.05, help="grid degrees")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dir", type=Path, help="keep the store here (reused when present)")
    parser.add_argument(
        "--grid-only",
        action="store_true",
        help="only Zarr/NetCDF (no in-memory table: for stores larger than RAM allows)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(grid_child(args.child, args.dir, args.resolution)))
        return 0
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="geod-bench-") as tmp:
        directory = args.dir or Path(tmp)
        run = build(directory, args.resolution)
        ok = args.grid_only or table_formats(run, directory, args.repeat)
        grid_table(directory, args.resolution, run.store.root, run.grid.width * run.grid.height)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
