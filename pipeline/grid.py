"""The target grid, its windows, and where each dataset sits on it.

Every layer ends up on one grid (default: global 1 arc-minute EPSG:4326,
21600 × 10800). The grid is snapped outwards to whole multiples of the
resolution, as ``gdalwarp -tap`` does, so that grids built from the same
resolution share pixel edges and a dataset produced on "the same" grid elsewhere
lands on it by a whole-pixel offset.

:func:`place` decides whether a dataset can be copied window by window
(passthrough) or must be resampled, and computes its integer offset in the grid
from the two grids' transforms. The older system computed that offset from
rounded bounds of a different dataset and shipped layers shifted by 40 pixels;
here the offset comes from one subtraction of origins divided by the grid's
pixel size, and the remaining sub-pixel error is reported and bounded
(:data:`ALIGNMENT_TOLERANCE_PX`).

All coordinates are derived from integer pixel indices and the transform
(``origin + index × size``), never by accumulating steps, so a cell centre at
column 21599 is exactly as accurate as the one at column 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from pipeline.config import GridConfig
from pipeline.source import SourceInfo

#: A dataset is placed on the grid by copy only if every one of its pixel edges
#: is within this many grid pixels of a grid edge (the issue's alignment bound).
ALIGNMENT_TOLERANCE_PX = 0.1

#: A source pixel size within this relative difference of the grid step is the
#: grid step (float rounding in the file's header, e.g. 0.0083333333 written for
#: 1/120): it does not turn a copy into a resample. At 1e-6 a 21600-pixel row
#: drifts 0.02 px; the far corner is then taken from the grid step.
DRIFT_TOLERANCE = 1e-6

#: Bounds within this fraction of a pixel of a grid line count as on it when
#: snapping: ``-180 / (1/60)`` is ``-10800.000000000002`` in binary floating
#: point, and a plain ``floor`` would add a spurious column.
SNAP_EPSILON_PX = 1e-6


def _snap_down(value: float, step: float) -> int:
    """Index of the grid line at or below ``value`` (tolerating float noise)."""
    ratio = value / step
    nearest = round(ratio)
    if abs(ratio - nearest) < SNAP_EPSILON_PX:
        return int(nearest)
    return math.floor(ratio)


def _snap_up(value: float, step: float) -> int:
    """Index of the grid line at or above ``value`` (tolerating float noise)."""
    ratio = value / step
    nearest = round(ratio)
    if abs(ratio - nearest) < SNAP_EPSILON_PX:
        return int(nearest)
    return math.ceil(ratio)


@dataclass(frozen=True)
class TargetGrid:
    """A north-up raster grid: CRS, transform (pixel → CRS) and size in pixels."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @classmethod
    def from_config(cls, cfg: GridConfig) -> TargetGrid:
        """The configured grid, bounds snapped outwards to the resolution (``-tap``)."""
        xres, yres = cfg.resolution
        west, south, east, north = cfg.bounds
        col0, col1 = _snap_down(west, xres), _snap_up(east, xres)
        row0, row1 = _snap_down(south, yres), _snap_up(north, yres)
        transform = Affine(xres, 0.0, col0 * xres, 0.0, -yres, row1 * yres)
        return cls(CRS.from_user_input(cfg.crs), transform, col1 - col0, row1 - row0)

    # -- windows ------------------------------------------------------------------

    def windows(self, size: int) -> list[Window]:
        """Row-major windows of ``size`` pixels, at multiples of ``size``, clipped."""
        if size <= 0:
            raise ValueError(f"window size must be positive, got {size}")
        return [
            Window(col, row, min(size, self.width - col), min(size, self.height - row))
            for row in range(0, self.height, size)
            for col in range(0, self.width, size)
        ]

    def window_transform(self, window: Window) -> Affine:
        """Transform of a window: the grid origin moved by whole pixels (no drift)."""
        t = self.transform
        col, row = int(window.col_off), int(window.row_off)
        return Affine(t.a, 0.0, t.c + col * t.a, 0.0, t.e, t.f + row * t.e)

    def window_bounds(self, window: Window) -> tuple[float, float, float, float]:
        """west, south, east, north of a window."""
        t = self.transform
        col, row = int(window.col_off), int(window.row_off)
        west = t.c + col * t.a
        east = t.c + (col + int(window.width)) * t.a
        north = t.f + row * t.e
        south = t.f + (row + int(window.height)) * t.e
        return (west, south, east, north)

    def cell_centers(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """x of each column and y of each row of the window, from integer indices."""
        t = self.transform
        cols = np.arange(int(window.col_off), int(window.col_off) + int(window.width))
        rows = np.arange(int(window.row_off), int(window.row_off) + int(window.height))
        return t.c + (cols + 0.5) * t.a, t.f + (rows + 0.5) * t.e

    def chunk_grid(self, chunk: int) -> tuple[int, int]:
        """Number of chunk rows and columns covering the grid."""
        return (-(-self.height // chunk), -(-self.width // chunk))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return self.window_bounds(Window(0, 0, self.width, self.height))


@dataclass(frozen=True)
class Placement:
    """Where a dataset's pixel (0, 0) falls on the grid, and how exactly.

    ``offset_error`` is the largest distance, in grid pixels, between a corner
    of the dataset and the nearest grid edge (both the origin and the far
    corner are checked, so a resolution that differs slightly shows up as
    drift). It is ``inf`` when the CRS differs and no copy is possible.
    """

    passthrough: bool
    row_off: int
    col_off: int
    offset_error: float


def place(grid: TargetGrid, source: SourceInfo) -> Placement:
    """Passthrough iff same CRS, north-up, same resolution and whole-pixel offset.

    "Same resolution" and "whole-pixel offset" are one test: both the source's
    origin and its far corner must sit within :data:`ALIGNMENT_TOLERANCE_PX`
    of grid edges at exactly ``width``/``height`` grid pixels apart. A pixel
    size within :data:`DRIFT_TOLERANCE` (relative) of the grid step counts as
    the step, so header rounding never forces a resample however wide the
    source; a real difference (1e-5 relative on 21600 pixels: 0.2 px) still does.
    """
    g, s = grid.transform, source.transform
    north_up = s.b == 0 and s.d == 0 and s.a > 0 and s.e < 0
    col_exact = (s.c - g.c) / g.a
    row_exact = (s.f - g.f) / g.e
    col_off, row_off = round(col_exact), round(row_exact)
    if not north_up or source.crs != grid.crs:
        return Placement(False, row_off, col_off, math.inf)
    drifted = abs(s.a - g.a) <= DRIFT_TOLERANCE * abs(g.a) and abs(s.e - g.e) <= (
        DRIFT_TOLERANCE * abs(g.e)
    )
    step_x, step_y = (g.a, g.e) if drifted else (s.a, s.e)
    far_col = (s.c + source.width * step_x - g.c) / g.a
    far_row = (s.f + source.height * step_y - g.f) / g.e
    error = max(
        abs(col_exact - col_off),
        abs(row_exact - row_off),
        abs(far_col - (col_off + source.width)),
        abs(far_row - (row_off + source.height)),
    )
    return Placement(error < ALIGNMENT_TOLERANCE_PX, row_off, col_off, error)
