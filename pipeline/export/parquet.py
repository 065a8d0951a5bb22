"""Parquet output: zstd, ~100k-row row groups, grid and provenance in the schema metadata.

Merged batches are a few thousand to a few hundred thousand rows, depending on
how much of a chunk is nodata; writing each as its own row group would give
readers thousands of tiny groups. So batches are buffered until a whole
``row_group_size`` is available and written as exactly that many rows; only the
last group of the file is smaller. Memory is bounded by one row group plus one
merged chunk.

With ``export.parquet.geoparquet`` a ``geometry`` column of WKB points is
added and the ``geo`` key of GeoParquet 1.1 is written, with the grid's CRS as
PROJJSON. It goes into the Arrow schema given to the writer, because readers
(pyarrow, GeoPandas) take the schema's metadata, not keys appended at close;
so the optional ``bbox`` — known only after the last row — is left out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import ExportFormat, ParquetOptions
from pipeline.export.base import FileExporter, filter_cells
from pipeline.grid import TargetGrid

#: GeoParquet specification version written in the ``geo`` metadata.
GEOPARQUET_VERSION = "1.1.0"
GEOMETRY_COLUMN = "geometry"
#: ISO WKB of a 2D point: byte order (1 = little endian), geometry type (1 = Point), x, y.
_WKB_POINT = np.dtype([("order", "u1"), ("kind", "<u4"), ("x", "<f8"), ("y", "<f8")])
#: Rows per batch when reading the file back for validation.
READ_BATCH_ROWS = 262_144


def wkb_points(x: np.ndarray, y: np.ndarray) -> pa.BinaryArray:
    """WKB points built in one vectorised pass (a Python loop would dominate the export)."""
    packed = np.empty(len(x), dtype=_WKB_POINT)
    packed["order"] = 1
    packed["kind"] = 1
    packed["x"] = x
    packed["y"] = y
    offsets = np.arange(len(x) + 1, dtype=np.int32) * _WKB_POINT.itemsize
    return pa.Array.from_buffers(
        pa.binary(), len(x), [None, pa.py_buffer(offsets), pa.py_buffer(packed.tobytes())]
    )


def geo_metadata(grid: TargetGrid) -> bytes:
    """The GeoParquet ``geo`` key for point geometries in the grid's CRS."""
    geo = {
        "version": GEOPARQUET_VERSION,
        "primary_column": GEOMETRY_COLUMN,
        "columns": {
            GEOMETRY_COLUMN: {
                "encoding": "WKB",
                "geometry_types": ["Point"],
                "crs": grid.crs.to_dict(projjson=True),
            }
        },
    }
    return json.dumps(geo).encode()


class ParquetExporter(FileExporter):
    """Streams merged batches into ``path`` (via a partial file, renamed on commit)."""

    format = ExportFormat.parquet

    def __init__(
        self, path: Path, schema: pa.Schema, options: ParquetOptions, grid: TargetGrid
    ) -> None:
        super().__init__(path)
        self.options = options
        self._geo = options.geoparquet
        self.schema = schema
        if self._geo:
            self.schema = schema.append(
                pa.field(GEOMETRY_COLUMN, pa.binary(), nullable=False)
            ).with_metadata({**(schema.metadata or {}), b"geo": geo_metadata(grid)})
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        compression = None if options.compression == "none" else options.compression
        self._writer = self._guard(
            lambda: pq.ParquetWriter(self.partial, self.schema, compression=compression)
        )

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        if self._geo:
            x = batch.column("x").to_numpy()
            y = batch.column("y").to_numpy()
            batch = pa.RecordBatch.from_arrays(
                [*batch.columns, wkb_points(x, y)], schema=self.schema
            )
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        self.rows += batch.num_rows
        if self._pending_rows >= self.options.row_group_size:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        """Write whole row groups from the buffer (and the remainder when ``final``)."""
        size = self.options.row_group_size
        table = pa.Table.from_batches(self._pending, self.schema)
        full = table.num_rows if final else table.num_rows // size * size
        if full:
            self._guard(lambda: self._writer.write_table(table.slice(0, full), row_group_size=size))
        rest = table.slice(full)
        self._pending = rest.to_batches()
        self._pending_rows = rest.num_rows

    def close(self) -> None:
        if self._writer is not None and self._pending_rows:
            self._flush(final=True)
        super().close()

    def read_back(self, keys: np.ndarray, grid: TargetGrid) -> dict[int, dict[str, Any]]:
        names = [n for n in self.schema.names if n != GEOMETRY_COLUMN]
        batches = pq.ParquetFile(self.partial).iter_batches(READ_BATCH_ROWS, columns=names)
        return filter_cells(batches, keys, grid, str(self.path))

    def details(self) -> dict[str, object]:
        return {"compression": self.options.compression, "geoparquet": self._geo}
