"""Zarr and NetCDF outputs: the merged stack as a CF grid that ``xarray`` opens as is.

Both are fed by the same merge pass as the tables, part by part: each merged
part carries the raw window of every layer the merge read from the store (its
batch has dropped the nodata rows; the grid keeps every cell), and the writer
writes it as a region of the output, so memory holds one part, never a layer.
Layout and attributes come from :mod:`pipeline.stack`.

- Zarr: format 2 with consolidated metadata (``.zmetadata``): what every Zarr
  reader (xarray, GDAL, R, Julia) opens without a warning. Chunks are the store's
  chunks, compressed with Zarr's default (Blosc/LZ4) codec. Written as the directory
  ``NAME.zarr.partial-XXXXXXXX`` and renamed into place (:func:`commit_tree`).
- NetCDF: NetCDF-4 (HDF5) through h5netcdf, chunked like the store and
  deflate-compressed. NetCDF-3 (scipy) is not an option: it has no unsigned or
  64-bit integers, no compression, 4 GiB variable limits in its 64-bit-offset
  form, and scipy's writer keeps variables in memory until the file is closed.

Validation reads the sampled cells back from the unpublished output: a cell is
"present" where the table would have a row (the merge's skip/require rules
applied to the values read back), so the shared spot-check compares presence,
coordinates and values exactly as for the tables.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from pathlib import Path
from typing import Any

import h5netcdf
import numpy as np
import pyarrow as pa
import zarr
from zarr.storage import LocalStore

from pipeline.config import ExportFormat
from pipeline.coverage import valid_mask
from pipeline.export.atomic import (
    commit,
    commit_tree,
    discard,
    size_on_disk,
)
from pipeline.export.base import PathExporter
from pipeline.grid import TargetGrid
from pipeline.merge import MergedChunk, MergeStream
from pipeline.stack import GRID_MAPPING, StackLayout, stack_layout

#: NetCDF deflate level: 4 gets nearly all of level 9's size on raster layers at
#: a fraction of its time (the NetCDF/HDF5 community's usual choice).
NETCDF_DEFLATE_LEVEL = 4


class GridExporter(PathExporter):
    """Common part of the grid outputs: region writes from the store, read-back, publish."""

    def __init__(self, path: Path, stream: MergeStream) -> None:
        super().__init__(path)
        self.stream = stream
        self.layout: StackLayout = stack_layout(
            stream.grid,
            stream.config,
            stream.plan.region,
            [(spec.name, spec.dtype, spec.nodata) for spec in stream.specs],
        )
        self._row0 = int(stream.plan.region.row_off)
        self._col0 = int(stream.plan.region.col_off)
        self._open = True
        self._guard(self._create)

    @abstractmethod
    def _create(self) -> None:
        """Create the partial output with its coordinates, CRS and empty layers."""

    @abstractmethod
    def _write_region(self, name: str, rows: slice, cols: slice, data: np.ndarray) -> None:
        """Write one layer's block at output rows/cols."""

    @abstractmethod
    def _read_region(self, name: str, rows: slice, cols: slice) -> np.ndarray:
        """Read one layer's block back from the partial output (raw, unmasked)."""

    @abstractmethod
    def _read_coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """The written y and x coordinate arrays."""

    def write(self, batch: pa.RecordBatch) -> None:
        """Count the table rows the part stands for (the grid itself comes from the store)."""
        self.rows += batch.num_rows

    def write_chunk(self, chunk: MergedChunk) -> None:
        window = chunk.window
        rows = slice(
            int(window.row_off) - self._row0, int(window.row_off + window.height) - self._row0
        )
        cols = slice(
            int(window.col_off) - self._col0, int(window.col_off + window.width) - self._col0
        )
        layers = chunk.layers or tuple(
            self.stream.store.read_window(spec.name, window) for spec in self.stream.specs
        )
        for spec, data in zip(self.stream.specs, layers, strict=True):
            self._guard(
                lambda name=spec.name, data=data: self._write_region(name, rows, cols, data)
            )
        self.write(chunk.batch)

    def read_back(self, keys: np.ndarray, grid: TargetGrid) -> dict[int, dict[str, Any]]:
        """The sampled cells as written, one block per layer and store chunk they fall in.

        Cell by cell, every read decoded a whole chunk of the file: 200 samples of
        4 layers took ~2 s from the NetCDF file; a chunk's samples now share one read.
        """
        ys, xs = self._read_coordinates()
        merge = self.stream.config.merge
        chunk = self.stream.store.chunk
        groups: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        for key in np.unique(keys).tolist():
            row, col = divmod(int(key), grid.width)
            r, c = row - self._row0, col - self._col0
            if 0 <= r < len(ys) and 0 <= c < len(xs):
                groups.setdefault((r // chunk, c // chunk), []).append((int(key), r, c))
        found: dict[int, dict[str, Any]] = {}
        for (chunk_row, chunk_col), members in groups.items():
            row0, col0 = chunk_row * chunk, chunk_col * chunk
            rows = slice(row0, min(row0 + chunk, len(ys)))
            cols = slice(col0, min(col0 + chunk, len(xs)))
            blocks = [self._read_region(spec.name, rows, cols) for spec in self.stream.specs]
            valids = [
                valid_mask(block, spec.nodata)
                for block, spec in zip(blocks, self.stream.specs, strict=True)
            ]
            for key, r, c in members:
                record: dict[str, Any] = {"x": float(xs[c]), "y": float(ys[r])}
                for spec, block, valid in zip(self.stream.specs, blocks, valids, strict=True):
                    cell = (r - row0, c - col0)
                    record[spec.name] = block[cell].item() if valid[cell] else None
                values = [record[spec.name] for spec in self.stream.specs]
                kept = any(v is not None for v in values) if merge.skip_all_nodata else True
                if kept and all(record[name] is not None for name in merge.require):
                    found[key] = record
        return found

    def abort(self) -> None:
        self._open = False
        discard(self.partial)


class ZarrExporter(GridExporter):
    """``NAME.zarr``: Zarr v2 directory, one array per layer, consolidated metadata."""

    format = ExportFormat.zarr

    def _create(self) -> None:
        layout = self.layout
        chunk = self.stream.store.chunk
        group = zarr.open_group(store=LocalStore(self.partial), mode="w", zarr_format=2)
        group.attrs.update(layout.global_attrs)
        coord_attrs = layout.coordinate_attrs()
        for dim, values in layout.coordinates().items():
            array = group.create_array(
                dim,
                shape=values.shape,
                dtype="float64",
                chunks=values.shape,
                fill_value=None,
                attributes={"_ARRAY_DIMENSIONS": [dim], **coord_attrs[dim]},
            )
            array[:] = values
        crs = group.create_array(
            GRID_MAPPING,
            shape=(),
            dtype="int32",
            fill_value=None,
            attributes={"_ARRAY_DIMENSIONS": [], **layout.grid_mapping_attrs()},
        )
        crs[...] = 0
        for meta in layout.layers:
            group.create_array(
                meta.name,
                shape=layout.shape,
                dtype=meta.dtype,
                chunks=(chunk, chunk),
                fill_value=meta.fill_value,
                attributes={"_ARRAY_DIMENSIONS": list(layout.dims), **meta.attrs},
                # Without a fill value an unwritten chunk would read as zeros: store all.
                config={"write_empty_chunks": meta.fill_value is None},
            )
        self._group = group

    def _write_region(self, name: str, rows: slice, cols: slice, data: np.ndarray) -> None:
        self._group[name][rows, cols] = data  # type: ignore[index]

    def _read_region(self, name: str, rows: slice, cols: slice) -> np.ndarray:
        return np.asarray(self._group[name][rows, cols])  # type: ignore[index]

    def _read_coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        y_dim, x_dim = self.layout.dims
        return np.asarray(self._group[y_dim][:]), np.asarray(self._group[x_dim][:])  # type: ignore[index]

    def close(self) -> None:
        if self._open:
            self._guard(lambda: zarr.consolidate_metadata(LocalStore(self.partial)))
            self._open = False

    def commit(self) -> dict[str, object]:
        self.close()
        size = size_on_disk(self.partial) or 0
        commit_tree(self.partial, self.path)
        return {"rows": self.rows, "bytes": size, "layers": len(self.layout.layers)}


class NetcdfExporter(GridExporter):
    """``NAME.nc``: NetCDF-4 through h5netcdf, chunked like the store, deflate-compressed."""

    format = ExportFormat.netcdf

    def _create(self) -> None:
        layout = self.layout
        chunk = self.stream.store.chunk
        height, width = layout.shape
        handle = h5netcdf.File(self.partial, "w")
        self._file = handle
        handle.attrs.update(
            {
                k: v if not isinstance(v, list) else ",".join(v)
                for k, v in layout.global_attrs.items()
            }
        )
        handle.dimensions = dict(zip(layout.dims, layout.shape, strict=True))
        coord_attrs = layout.coordinate_attrs()
        for dim, values in layout.coordinates().items():
            variable = handle.create_variable(dim, (dim,), "f8", data=values)
            variable.attrs.update(coord_attrs[dim])
        crs = handle.create_variable(GRID_MAPPING, (), "i4", data=np.int32(0))
        crs.attrs.update(layout.grid_mapping_attrs())
        for meta in layout.layers:
            fill = meta.fill_value
            variable = handle.create_variable(
                meta.name,
                layout.dims,
                meta.dtype,
                fillvalue=None if fill is None else meta.dtype.type(fill),
                chunks=(min(chunk, height), min(chunk, width)),
                compression="gzip",
                compression_opts=NETCDF_DEFLATE_LEVEL,
                shuffle=True,
            )
            variable.attrs.update(meta.attrs)

    def _write_region(self, name: str, rows: slice, cols: slice, data: np.ndarray) -> None:
        self._file.variables[name][rows, cols] = data

    def _read_region(self, name: str, rows: slice, cols: slice) -> np.ndarray:
        return np.asarray(self._file.variables[name][rows, cols])

    def _read_coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        y_dim, x_dim = self.layout.dims
        variables = self._file.variables
        return np.asarray(variables[y_dim][:]), np.asarray(variables[x_dim][:])

    def close(self) -> None:
        # Flushed, still open for read_back; closed for good in commit/abort.
        if self._open:
            self._guard(self._file.flush)

    def commit(self) -> dict[str, object]:
        self._guard(self._file.close)
        self._open = False
        size = self.partial.stat().st_size
        commit(self.partial, self.path)
        return {"rows": self.rows, "bytes": size, "layers": len(self.layout.layers)}

    def abort(self) -> None:
        handle = getattr(self, "_file", None)
        if handle is not None and self._open:
            with contextlib.suppress(Exception):  # discarding: a failing close does not matter
                handle.close()
        super().abort()
