"""Did a resampled layer arrive where its source says it should?

A run that ends ``done`` with half the globe silently null (a 0…360° source
warped onto a −180…180° grid without wrapping) is the worst kind of failure,
so every layer is checked against its source's footprint on the grid: the
grid cells whose centres fall inside the source's bounds (transformed to the
grid CRS). Nodata oceans make a layer's valid cells legitimately far fewer
than its footprint, so the test is on rows and columns: a lost hemisphere or
polar band leaves whole columns or rows of the footprint without a single
valid cell, a land mask never does. The numbers go to the log record's extra
fields (telemetry's log_records) for every layer; below
``resampling.coverage_warning`` they are a warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from pipeline.grid import TargetGrid
from pipeline.source import SourceInfo

#: Points per edge when transforming a source's bounds to the grid CRS.
DENSIFY_POINTS = 21


def valid_mask(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """True where a cell holds data: not the nodata value and, for floats, not NaN."""
    if data.dtype.kind == "f":
        valid = ~np.isnan(data)
        if nodata is not None and not math.isnan(nodata):
            valid &= data != data.dtype.type(nodata)
        return valid
    if nodata is None:
        return np.ones(data.shape, dtype=bool)
    return data != nodata


@dataclass(frozen=True)
class Footprint:
    """Grid rows ``row0:row1`` and columns ``col0:col1`` whose cell centres lie on the source."""

    row0: int
    row1: int
    col0: int
    col1: int

    @property
    def cells(self) -> int:
        return max(0, self.row1 - self.row0) * max(0, self.col1 - self.col0)


def footprint(grid: TargetGrid, source: SourceInfo) -> Footprint:
    """The source's bounding box on the grid (cell centres inside it), clipped to the grid."""
    bounds = source.bounds
    if source.crs != grid.crs:
        try:
            bounds = transform_bounds(source.crs, grid.crs, *bounds, densify_pts=DENSIFY_POINTS)
        except Exception:  # a source PROJ cannot map as a whole: assume the whole grid
            return Footprint(0, grid.height, 0, grid.width)
    west, south, east, north = bounds
    t = grid.transform

    def index(value: float, origin: float, step: float) -> float:
        return (value - origin) / step - 0.5  # position relative to cell centres

    cols = sorted((index(west, t.c, t.a), index(east, t.c, t.a)))
    rows = sorted((index(north, t.f, t.e), index(south, t.f, t.e)))
    col0, col1 = max(0, math.ceil(cols[0])), min(grid.width, math.floor(cols[1]) + 1)
    row0, row1 = max(0, math.ceil(rows[0])), min(grid.height, math.floor(rows[1]) + 1)
    return Footprint(row0, row1, col0, col1)


def mask_counts(valid: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """A window's valid cells, and which of its rows and columns hold any."""
    return int(valid.sum()), valid.any(axis=1), valid.any(axis=0)


@dataclass
class CoverageCounter:
    """Valid cells of a layer, and which footprint rows and columns hold any, window by window."""

    grid: TargetGrid
    area: Footprint
    valid_cells: int = 0
    rows: np.ndarray = field(init=False)
    cols: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.rows = np.zeros(self.grid.height, bool)
        self.cols = np.zeros(self.grid.width, bool)

    def add(self, window: Window, valid: np.ndarray) -> None:
        """Count one window's valid-cell mask."""
        self.add_counts(window, *mask_counts(valid))

    def add_counts(self, window: Window, cells: int, rows: np.ndarray, cols: np.ndarray) -> None:
        """Count one window from :func:`mask_counts` of its mask (taken where it was computed)."""
        self.valid_cells += cells
        row0, col0 = int(window.row_off), int(window.col_off)
        self.rows[row0 : row0 + rows.shape[0]] |= rows
        self.cols[col0 : col0 + cols.shape[0]] |= cols

    def numbers(self) -> dict[str, float | int]:
        """What the log (and telemetry) records for the layer."""
        a = self.area
        rows = int(self.rows[a.row0 : a.row1].sum())
        cols = int(self.cols[a.col0 : a.col1].sum())
        span_rows, span_cols = max(0, a.row1 - a.row0), max(0, a.col1 - a.col0)
        ratio = min(rows / span_rows if span_rows else 1.0, cols / span_cols if span_cols else 1.0)
        return {
            "footprint_cells": a.cells,
            "valid_cells": self.valid_cells,
            "footprint_rows": span_rows,
            "valid_rows": rows,
            "footprint_columns": span_cols,
            "valid_columns": cols,
            "coverage": round(ratio, 6),
        }
