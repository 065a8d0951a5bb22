"""``average`` and ``bilinear`` onto a grid in the source's own CRS, as two sparse products.

Where the source and the grid share a CRS and neither is rotated, GDAL's
weight for a source pixel in a cell is a product ``wx · wy`` of one weight per
axis, and the cell's value is

    Σ wy wx v m / Σ wy wx m      (m: the pixel is valid)

which is ``Wy · (v m) · Wxᵀ`` over ``Wy · m · Wxᵀ``, with two sparse matrices of a
few non-zeros per row. That is the sum GDAL forms pixel by pixel, in float64
as GDAL accumulates, so the result differs from GDAL's only at float rounding;
it skips GDAL's per-pixel coordinate transforms and weight computations
(measured on a window of 2.5 source pixels a cell: ~0.1 s against GDAL's 0.27 s).

The per-axis weights follow GDAL's kernels:

* ``average`` (``GWKAverageOrMode``): a cell's span ``[lo, hi]`` in source pixel
  coordinates covers pixels ``floor(lo + ε)`` up to ``ceil(hi - ε)`` (at least one,
  none past the source's edges), the first weighted ``1 - (lo - first)``, the last
  ``1 - (last + 1 - hi)``, those between 1. A cell whose edges lie more than
  GDAL's margin (set by the chunk's scale) outside the source, or that does not
  reach it, is left empty.
* ``bilinear`` (``GWKResample``): the triangle ``max(0, 1 - |d · s|)`` over the
  pixels within ``ceil(1 / s)`` of the cell's centre, ``s`` the chunk's scale
  (destination pixels per source pixel, at most 1, snapped as GDAL does by
  :func:`gdal_kernel_scale`); a cell is empty where the
  source pixel under its centre is invalid, and GDAL divides by the weights'
  sum only when it is off 1 by more than 1e-5. Only cells whose kernel lies
  inside the source are computed this way (at the source's edges GDAL's result
  depends on the source window of its chunk); GDAL computes the others, so each
  cell's path depends on the cell alone, not on the window it was computed in.

tests/test_separable.py compares every cell with the whole-source warp and with
the gdalwarp binary, with nodata, partial sources and flipped rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse
from affine import Affine

from pipeline.config import Resampling
from pipeline.warpplan import snap_scale

#: GDAL's nudge before rounding a source coordinate to a whole pixel (its kernels' 1e-10),
#: so an edge a rounding error past a pixel boundary does not take in a zero-weight pixel.
GDAL_ROUND_EPSILON = 1e-10
#: GDAL skips an ``average`` cell whose corners lie further outside the source than this
#: many times ``max(1, ceil(1 / scale))`` pixels, ``scale`` its chunk's.
GDAL_MARGIN_CELLS = 2
#: ``bilinear``: GDAL leaves the sum as it is when the weights add up to 1 within this.
GDAL_UNIT_WEIGHT = 1e-5
#: Source rows converted to float64 at a time (a band of a 10800-pixel-wide crop: 21 MiB).
BAND_ROWS = 256
#: Methods computed here.
SEPARABLE = frozenset({Resampling.average, Resampling.bilinear})

#: One axis' weights: (cell, source pixel, weight) triplets.
Triplets = tuple[np.ndarray, np.ndarray, np.ndarray]


def applies(
    method: Resampling, source_crs: object, grid_crs: object, src: Affine, dst: Affine, dtype: str
) -> bool:
    """Is the method's GDAL kernel separable here: same CRS, no rotation, float output?

    Integer outputs are left to GDAL, whose rounding to an integer this module
    does not copy.
    """
    return (
        method in SEPARABLE
        and source_crs == grid_crs
        and src.b == src.d == dst.b == dst.d == 0
        and np.dtype(dtype).kind == "f"
    )


@dataclass(frozen=True)
class Axis:
    """One axis of a window over the source: where its cells and the source's pixels
    start and how far apart they are (world units), how many of each, and the chunk's
    kernel scale on it (destination pixels per source pixel)."""

    dst_start: float
    dst_step: float
    cells: int
    src_start: float
    src_step: float
    pixels: int
    scale: float

    def to_source(self, positions: np.ndarray) -> np.ndarray:
        """Positions along the window (in cells) in source pixel coordinates."""
        return (self.dst_start + positions * self.dst_step - self.src_start) / self.src_step


def average_weights(axis: Axis) -> Triplets:
    """Per cell along one axis: its source pixels and area weights, as GDAL's kernel has them.

    The chunk's scale sets GDAL's margin. The first and last
    weights keep GDAL's formula with the span unclipped by the source's edges.
    """
    cells, pixels = axis.cells, axis.pixels
    edges = axis.to_source(np.arange(cells + 1))
    lo = np.minimum(edges[:-1], edges[1:])
    hi = np.maximum(edges[:-1], edges[1:])
    margin = GDAL_MARGIN_CELLS * max(1, math.ceil(1 / gdal_kernel_scale(axis.scale)))
    kept = (
        (lo >= -margin)
        & (hi - pixels <= margin)
        & (hi > -GDAL_ROUND_EPSILON)
        & (lo < pixels + GDAL_ROUND_EPSILON)
    )
    first = np.maximum(np.floor(lo + GDAL_ROUND_EPSILON), 0).astype(np.int64)
    past = np.minimum(np.ceil(hi - GDAL_ROUND_EPSILON), pixels).astype(np.int64)
    past += (first == past) & (past < pixels)
    past = np.where(kept, past, first)
    width = int((past - first).max(initial=0))
    offsets = np.arange(width)[None, :]
    pixel = first[:, None] + offsets
    inside = pixel < past[:, None]
    single = (first + 1 == past)[:, None]
    weight = np.ones(pixel.shape)
    weight = np.where((offsets == 0) & ~single, 1 - (lo - first)[:, None], weight)
    weight = np.where(
        (pixel + 1 == past[:, None]) & (offsets > 0), 1 - (past - hi)[:, None], weight
    )
    inside &= weight > 0
    cell = np.broadcast_to(np.arange(cells)[:, None], pixel.shape)
    return cell[inside], pixel[inside], weight[inside]


def gdal_kernel_scale(scale: float) -> float:
    """The scale GDAL's kernels use: at most 1, and snapped to ``1 / n`` as a chunk's
    computed scale is (:func:`pipeline.warpplan.snap_scale`)."""
    return 1.0 if scale >= 1 else snap_scale(scale)


def bilinear_weights(axis: Axis) -> tuple[Triplets, np.ndarray, np.ndarray]:
    """Per cell along one axis: GDAL's bilinear taps, the source pixel under its centre,
    and whether its kernel lies inside the source (cells whose kernel does not get no
    taps here: GDAL computes them; see the module docstring)."""
    cells, pixels = axis.cells, axis.pixels
    centres = axis.to_source(np.arange(cells) + 0.5)
    scale = gdal_kernel_scale(axis.scale)
    radius = math.ceil(1 / scale)
    base = np.floor(centres - 0.5).astype(np.int64)
    offsets = np.arange(1 - radius, radius + 1)[None, :]
    pixel = base[:, None] + offsets
    inner = (base + 1 - radius >= 0) & (base + radius < pixels)
    weight = np.maximum(0.0, 1 - np.abs((offsets - (centres - 0.5 - base)[:, None]) * scale))
    used = (weight > 0) & inner[:, None]
    cell = np.broadcast_to(np.arange(cells)[:, None], pixel.shape)
    under = np.where(inner, np.floor(centres + GDAL_ROUND_EPSILON), 0).astype(np.int64)
    return (cell[used], pixel[used], weight[used]), under, inner


@dataclass(frozen=True)
class SeparableKernel:
    """The two weight matrices of one output window over one decoded source crop."""

    method: Resampling
    rows: scipy.sparse.csc_matrix  # window rows × crop rows (cut into bands by column)
    columns: scipy.sparse.csr_matrix  # crop columns × window columns
    #: bilinear: the crop row and column under each cell's centre.
    centres: tuple[np.ndarray, np.ndarray] | None = None
    #: The source row of the crop's first row (bands are cut in source rows).
    crop_row: int = 0
    #: bilinear: the rows and columns whose kernel lies inside the source (the cells of
    #: both are computed here, the others by GDAL).
    inner: tuple[np.ndarray, np.ndarray] | None = None

    def computed(self) -> np.ndarray | bool:
        """Which cells :meth:`apply` computes (True: all of them)."""
        if self.inner is None or (self.inner[0].all() and self.inner[1].all()):
            return True
        return np.outer(self.inner[0], self.inner[1])

    @classmethod
    def over(
        cls,
        method: Resampling,
        src: Affine,
        src_size: tuple[int, int],
        crop: tuple[int, int, int, int],
        dst: Affine,
        window: tuple[int, int, int, int],
        scale: tuple[float, float],
    ) -> SeparableKernel | None:
        """The kernel of a window over a crop (each ``row, col, height, width``) of the
        source (``src``, whole size rows × cols) at the chunk's ``scale`` (x, y); None if
        the window needs pixels the crop does not hold."""
        row0, col0, height, width = window
        crop_row, crop_col, crop_h, crop_w = crop
        x0, y0 = dst @ (col0, row0)
        along_rows = Axis(y0, dst.e, height, src.f, src.e, src_size[0], scale[1])
        along_cols = Axis(x0, dst.a, width, src.c, src.a, src_size[1], scale[0])
        if method is Resampling.average:
            rows, cols = average_weights(along_rows), average_weights(along_cols)
            centres = inner = None
        else:
            rows, under_rows, inner_rows = bilinear_weights(along_rows)
            cols, under_cols, inner_cols = bilinear_weights(along_cols)
            centres = (
                np.clip(under_rows - crop_row, 0, crop_h - 1),
                np.clip(under_cols - crop_col, 0, crop_w - 1),
            )
            inner = (inner_rows, inner_cols)
        row_pixels, col_pixels = rows[1] - crop_row, cols[1] - crop_col
        if not (_within(row_pixels, crop_h) and _within(col_pixels, crop_w)):
            return None
        return cls(
            method,
            scipy.sparse.csc_matrix((rows[2], (rows[0], row_pixels)), shape=(height, crop_h)),
            scipy.sparse.csr_matrix((cols[2], (col_pixels, cols[0])), shape=(crop_w, width)),
            centres,
            crop_row,
            inner,
        )

    def apply(
        self,
        data: np.ndarray,
        valid: np.ndarray,
        dtype: str,
        nodata: float,
        tainted: np.ndarray | None = None,
    ) -> np.ndarray:
        """The window's cells from the crop's pixels; ``nodata`` where GDAL leaves a cell
        empty, or where the kernel weighs a ``tainted`` pixel (see :func:`pixel_masks`).

        The products run over bands of :data:`BAND_ROWS` source rows, so only a band is
        ever held in float64 (not the whole crop, four times over); bands start at
        whole multiples of it in source rows, so a cell's partial sums, and with them its
        rounding, are the same whatever window or crop it was computed in.
        """
        height, width = self.rows.shape[0], self.columns.shape[1]
        total, weight = np.zeros((height, width)), np.zeros((height, width))
        for band in self._bands(data.shape[0]):
            part = self.rows[:, band]
            if not part.nnz:
                continue
            cells = slice(int(part.indices.min()), int(part.indices.max()) + 1)
            part = part[cells].tocsr()  # the window rows this band reaches
            values = data[band].astype(np.float64)
            values[~valid[band]] = 0
            total[cells] += (part @ values) @ self.columns
            weight[cells] += (part @ valid[band].astype(np.float64)) @ self.columns
        has_data = weight > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            value = total / weight
        if self.centres is not None:
            rows, cols = self.centres
            has_data &= valid[np.ix_(rows, cols)]
            value = np.where(np.abs(weight - 1) <= GDAL_UNIT_WEIGHT, total, value)
        if tainted is not None:
            has_data &= (self.rows @ tainted.astype(np.float64)) @ self.columns == 0
        return np.where(has_data, value, nodata).astype(dtype)

    def _bands(self, crop_rows: int) -> list[slice]:
        """The crop's rows cut at whole multiples of :data:`BAND_ROWS` source rows."""
        first = self.crop_row - self.crop_row % BAND_ROWS
        edges = [
            max(0, start - self.crop_row)
            for start in range(first, self.crop_row + crop_rows, BAND_ROWS)
        ]
        return [slice(a, b) for a, b in zip(edges, [*edges[1:], crop_rows], strict=True)]


def _within(pixels: np.ndarray, size: int) -> bool:
    return not pixels.size or (pixels.min() >= 0 and pixels.max() < size)


def pixel_masks(
    data: np.ndarray, nodata: float | None, method: Resampling
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels GDAL's kernel counts (not nodata, not NaN), and those that taint a cell.

    ``average`` skips NaN pixels; ``bilinear`` counts a NaN that is not the nodata
    value as a value, so a cell whose kernel weighs one becomes NaN (empty).
    """
    valid = data == data if data.dtype.kind == "f" else np.ones(data.shape, bool)
    nan_is_nodata = nodata is not None and math.isnan(nodata)
    if nodata is not None and not nan_is_nodata:
        valid &= data != nodata
    tainted = None
    if method is Resampling.bilinear and data.dtype.kind == "f" and not nan_is_nodata:
        tainted = np.isnan(data)
    return valid, tainted if tainted is not None and tainted.any() else None
