"""Export writers against bare pyarrow writes of the same in-memory table.

    .venv/bin/python bench/export_formats.py [--resolution 0.05] [--repeat 2] [--dir DIR]

The merged table of a synthetic global store (four layers, ~60 % ocean; see
bench/synthetic_store.py) is built once in memory. Each format then writes that
same table twice: through geod's exporter (buffered 100k-row groups / rounded
floats, partial file, fsync, rename) and through a bare
``pyarrow.parquet.write_table`` / ``pyarrow.csv.write_csv`` call with the same
compression. Printed per format: best-of-``--repeat`` times, throughput ratio
bare/geod (target ≥ 0.7), output sizes; then the csv/parquet time ratio of both
paths (pyarrow's own writers give ~2.6× on a 29 M-row table).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from synthetic_store import build

import pipeline
from pipeline.config import PipelineConfig
from pipeline.export.csv_text import CsvExporter
from pipeline.export.parquet import ParquetExporter
from pipeline.merge import MergeStream

TARGET = 0.7


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=float, default=0.05, help="grid degrees")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dir", type=Path, help="keep the store here (reused when present)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="geod-bench-") as tmp:
        directory = args.dir or Path(tmp)
        run = build(directory, args.resolution)
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
            bare_time, bare_size = best_of(args.repeat, bare)
            geod_time, geod_size = best_of(args.repeat, geod)
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
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
