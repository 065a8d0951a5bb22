"""Spot-check an export against the layer store and, for passthrough datasets, the sources.

After the outputs are written but before they are published, ``N``
(``export.validate_samples``) cells are drawn with ``export.seed``: half
uniformly over the merged region (catching rows that are missing, or present
though they should have been skipped), half uniformly among the rows actually
exported (so a mostly-ocean global grid still checks real values). Each cell is
looked up in every unpublished output and compared with a direct read of the
store — presence under the skip/require rules, coordinates, and every value,
nulls included. For datasets copied onto the grid without resampling the
exported value must also equal the source raster's pixel (a source that no
longer exists, as when an old run is re-exported, is logged and skipped). Any
mismatch fails the export, naming the cells.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import rasterio
from rasterio.windows import Window

from pipeline.catalog import CatalogError, grid_wraps_at_antimeridian, inspect
from pipeline.coverage import valid_mask
from pipeline.export.atomic import ExportError
from pipeline.export.base import Exporter, locate
from pipeline.grid import Placement, TargetGrid, place
from pipeline.merge import MergeStream
from pipeline.source import SourceInfo
from pipeline.source_names import local_file

log = logging.getLogger("geod.export")

#: Mismatches spelled out in the error line; the rest are counted.
MAX_REPORTED = 5


class ExportedSampler:
    """A uniform sample of ``size`` exported cells, kept while the batches stream by.

    Bottom-k sampling: every row gets a seeded random priority and the ``size``
    smallest priorities win, which is a uniform sample without replacement
    whatever the batch sizes, with O(size) memory.
    """

    def __init__(self, size: int, rng: np.random.Generator, grid: TargetGrid) -> None:
        self.size = size
        self._rng = rng
        self._grid = grid
        self._priority = np.empty(0)
        self._keys = np.empty(0, dtype=np.int64)

    def observe(self, batch: pa.RecordBatch) -> None:
        if self.size == 0 or batch.num_rows == 0:
            return
        priority = self._rng.random(batch.num_rows)
        threshold = self._priority.max() if len(self._priority) >= self.size else math.inf
        candidates = np.flatnonzero(priority < threshold)
        if len(candidates) > self.size:  # only the batch's own k smallest can win
            best = np.argpartition(priority[candidates], self.size - 1)[: self.size]
            candidates = np.sort(candidates[best])
        if not len(candidates):
            return
        rows, cols = locate(batch.take(pa.array(candidates)), self._grid)
        merged_priority = np.concatenate([self._priority, priority[candidates]])
        merged_keys = np.concatenate([self._keys, rows * self._grid.width + cols])
        keep = np.argsort(merged_priority, kind="stable")[: self.size]
        self._priority, self._keys = merged_priority[keep], merged_keys[keep]

    @property
    def keys(self) -> np.ndarray:
        return self._keys


def uniform_cells(stream: MergeStream, size: int, rng: np.random.Generator) -> np.ndarray:
    """Cell keys (row × grid width + col) drawn uniformly from the merged region."""
    region = stream.plan.region
    picks = rng.choice(stream.plan.cells, size=min(size, stream.plan.cells), replace=False)
    rows, cols = np.divmod(picks.astype(np.int64), int(region.width))
    return (rows + int(region.row_off)) * stream.grid.width + cols + int(region.col_off)


@dataclass
class Expected:
    """What the store says about one cell: each layer's value, or None for nodata."""

    row: int
    col: int
    x: float
    y: float
    values: dict[str, Any]
    kept: bool


def expected_cells(stream: MergeStream, keys: np.ndarray) -> dict[int, Expected]:
    """Read the sampled cells from the store, one store chunk per group of cells."""
    grid, chunk = stream.grid, stream.store.chunk
    merge = stream.config.merge
    rows, cols = np.divmod(keys, grid.width)
    out: dict[int, Expected] = {}
    groups: dict[tuple[int, int], list[int]] = {}
    for index, (row, col) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        groups.setdefault((row // chunk, col // chunk), []).append(index)
    for (crow, ccol), members in groups.items():
        window = Window(
            ccol * chunk,
            crow * chunk,
            min(chunk, grid.width - ccol * chunk),
            min(chunk, grid.height - crow * chunk),
        )
        blocks = [stream.store.read_window(spec.name, window) for spec in stream.specs]
        valids = [
            valid_mask(block, spec.nodata) for block, spec in zip(blocks, stream.specs, strict=True)
        ]
        for index in members:
            row, col = int(rows[index]), int(cols[index])
            r, c = row - crow * chunk, col - ccol * chunk
            values = {
                spec.name: block[r, c].item() if valid[r, c] else None
                for spec, block, valid in zip(stream.specs, blocks, valids, strict=True)
            }
            present = [v is not None for v in values.values()]
            kept = any(present) if merge.skip_all_nodata else True
            kept = kept and all(values[name] is not None for name in merge.require)
            xs, ys = grid.cell_centers(Window(col, row, 1, 1))
            out[int(keys[index])] = Expected(row, col, float(xs[0]), float(ys[0]), values, kept)
    return out


def _open_source(stream: MergeStream, name: str) -> tuple[Any, SourceInfo, Placement] | None:
    """The open source raster of a passthrough dataset with its placement, else None.

    The source is read as the catalog presents it (variable, CRS, unpacking,
    longitude wrap), so the check compares like with like.
    """
    config = stream.config
    try:
        info = inspect(
            config.dataset(name), config.catalog, grid_wraps_at_antimeridian(config.grid)
        )
    except CatalogError as exc:
        log.warning("%s: source not readable for the spot check (%s)", name, exc,
                    extra={"stage": "export", "dataset": name})  # fmt: skip
        return None
    placement = place(stream.grid, info)
    if not placement.passthrough:
        return None
    return rasterio.open(info.name), info, placement


def source_values(stream: MergeStream, cells: dict[int, Expected]) -> dict[str, dict[int, Any]]:
    """Source pixel of every sampled cell, for each passthrough dataset (None: nodata/outside)."""
    out: dict[str, dict[int, Any]] = {}
    for spec in stream.specs:
        path = stream.config.dataset(spec.name).path
        local = local_file(path)
        if local is not None and not Path(local).exists():
            log.warning(
                "%s: source %s is gone; its cells are checked against the store only",
                spec.name,
                path,
                extra={"stage": "export", "dataset": spec.name},
            )
            continue
        opened = _open_source(stream, spec.name)
        if opened is None:
            continue
        src, info, placement = opened
        band, nodata = info.band, info.nodata
        values: dict[int, Any] = {}
        with src:
            for key, cell in cells.items():
                r, c = cell.row - placement.row_off, cell.col - placement.col_off
                if not (0 <= r < src.height and 0 <= c < src.width):
                    values[key] = None
                    continue
                pixel = src.read(band, window=Window(c, r, 1, 1))
                values[key] = pixel[0, 0].item() if valid_mask(pixel, nodata)[0, 0] else None
        out[spec.name] = values
    return out


def _same(exported: Any, expected: Any, dtype: np.dtype, tolerance: float) -> bool:
    if exported is None or expected is None:
        return exported is None and expected is None
    a = np.asarray(exported).astype(dtype)
    b = np.asarray(expected).astype(dtype)
    if dtype.kind == "f":
        return bool(abs(float(a) - float(b)) <= tolerance)
    return bool(a == b)


def check_exporter(
    exporter: Exporter,
    stream: MergeStream,
    cells: dict[int, Expected],
    sources: dict[str, dict[int, Any]],
) -> list[str]:
    """Every difference between one output and the store/sources, as short phrases."""
    keys = np.fromiter(cells, dtype=np.int64, count=len(cells))
    found = exporter.read_back(keys, stream.grid)
    problems = []
    coord = np.dtype("float64")
    for key, cell in cells.items():
        where = f"row {cell.row} col {cell.col} (x={cell.x:.6f}, y={cell.y:.6f})"
        record = found.get(key)
        if record is None:
            if cell.kept:
                problems.append(f"{where} is missing")
            continue
        if not cell.kept:
            problems.append(f"{where} is present but should have been skipped")
            continue
        for axis, value in (("x", cell.x), ("y", cell.y)):
            if not _same(record[axis], value, coord, exporter.tolerance(value)):
                problems.append(f"{where} {axis}: exported {record[axis]}, grid {value}")
        for spec in stream.specs:
            exported, stored = record[spec.name], cell.values[spec.name]
            tolerance = exporter.tolerance(stored or 0.0)
            if not _same(exported, stored, spec.dtype, tolerance):
                problems.append(f"{where} {spec.name}: exported {exported}, store {stored}")
            if spec.name in sources:
                source = sources[spec.name][key]
                if not _same(exported, source, spec.dtype, tolerance):
                    problems.append(f"{where} {spec.name}: exported {exported}, source {source}")
    return problems


def validate_exports(
    exporters: list[Exporter],
    stream: MergeStream,
    exported_keys: np.ndarray,
    size: int,
    rng: np.random.Generator,
) -> int:
    """Spot-check every exporter; raise ExportError naming the cells on a mismatch.

    Returns the number of distinct cells checked.
    """
    if size == 0 or not exporters:
        return 0
    keys = np.unique(np.concatenate([uniform_cells(stream, size - size // 2, rng), exported_keys]))
    cells = expected_cells(stream, keys)
    sources = source_values(stream, cells)
    for exporter in exporters:
        problems = check_exporter(exporter, stream, cells, sources)
        if problems:
            shown = "; ".join(problems[:MAX_REPORTED])
            more = (
                f" (and {len(problems) - MAX_REPORTED} more)"
                if len(problems) > MAX_REPORTED
                else ""
            )
            raise ExportError(
                f"validation of {exporter.target} failed at {len(problems)} of {len(cells)} "
                f"sampled cells: {shown}{more}"
            )
    return len(cells)
