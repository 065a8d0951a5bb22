"""Windowed resampling of one dataset onto the target grid, equal to a whole-raster warp.

Each output window is warped on its own by GDAL from the open source dataset:
GDAL computes the source window that window needs (plus the kernel radius and
``resampling.margin`` extra pixels) and reads only that, through a block cache
capped from the memory budget. Windows are written to the
:class:`~pipeline.store.LayerStore` and checkpointed one by one.

Three steps overlap: ``resampling.read_threads`` read and decode the next
windows' source pixels (:func:`read_window_source`), ``resampling.threads``
warp windows from those decoded crops (:func:`warp_window`, through a virtual
raster with the source's own size and georeferencing, so every coordinate is
computed as from the file), and the stage's own thread writes and checkpoints.
Decompression is about half of a warp's time on deflate GeoTIFFs, so even one
warp thread keeps both cores busy. The stage runs all its datasets through one
ordered queue of windows (:func:`resample_datasets`) on threads opened once: a
dataset's first windows read and warp while the previous one's last ones finish.

Parity with a whole-raster warp, on every cell. A warp kernel's footprint on
the source depends on the scale (target pixels per source pixel), and GDAL's
own whole-raster warp uses a different scale in each of the chunks it splits
the grid into (by memory, and where most of a chunk's source window lies
outside the source). :mod:`pipeline.warpplan` replays that chunk list from
headers; each window is warped piece by piece, one piece per chunk it
overlaps, with ``XSCALE``/``YSCALE`` pinned to that chunk's scale, through a
virtual warped dataset with the grid's own transform (:class:`ChunkWarper`)
so that destination coordinates are computed bit for bit as GDAL computes
them. One scale for the whole grid (the previous approach) left partly
covered edge cells of a small source empty and moved bilinear values of a
source about one target cell wide; 1, as some libraries use, makes
bilinear/cubic downsampling sample a 2×2/4×4 neighbourhood instead of the
whole footprint.

Output dtype rule (so a run and ``gdalwarp -ot <dtype>`` compare like with like):

* float sources keep their dtype, whatever the method;
* integer sources keep their dtype for the value-picking methods
  (nearest, mode, min, max, med, q1, q3), which never invent new values;
* integer sources become float32 for average, sum, bilinear and cubic, whose
  results are fractional (and, for sum, may overflow the input type).

Nodata: float outputs use NaN. Integer outputs use the source's nodata (or the
dataset's ``nodata`` override), else the dtype's minimum (signed) or maximum
(unsigned) as a sentinel for "not covered by the source".

Datasets already on the grid (:func:`pipeline.grid.place`) are copied window
by window without any resampling, converting dtype and nodata by the same rule.
Datasets aligned with the grid at an integer factor (30″ into 5′) are reduced
block by block for average, sum, min and max, and for mode where that is quicker
than GDAL's kernel (16-bit integers, small blocks; :mod:`pipeline.blockreduce`).
Other ``average`` and ``bilinear`` windows of a source in the grid's CRS are
computed from their decoded crop as two sparse products of per-axis weights,
GDAL's kernel weights without its per-pixel transforms (:mod:`pipeline.separable`).

Known differences from the reference gdalwarp 3.6 (rasterio bundles GDAL 3.10;
tests/test_resample.py pins each one down). The first two also show in a
single whole-raster warp: they are GDAL's, not the windowing's.

* gdalwarp 3.6's footprint methods (average, mode, min, max, med, q1, q3)
  extend a source by one source pixel past its top and left edges: target
  pixels the source does not cover (the row and column before a source that
  starts inside the grid; the rows north of 85.04°N, where the EASE-Grid 2.0
  world of EPSG:6933 ends) get the edge values repeated. GDAL 3.10 leaves them
  nodata.
* Where a global geographic source ends short of 180°E, GDAL 3.10 would
  average the whole latitude band into the last grid column (wrapping round
  the antimeridian); we warp such windows from a cropped copy of the source
  instead (:func:`_wraps_antimeridian`). That column then holds the average of
  the covered part, within 0.2 % of the data range of gdalwarp 3.6's, which
  weights the partly covered edge pixel slightly differently.
* :mod:`pipeline.warpplan` samples with exact PROJ transforms where GDAL uses
  its approximate transformer; for reprojected sources chunk scales can differ
  in the last digits (well inside the 1e-6-of-range bound).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.enums import Resampling as RioResampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from pipeline.blockreduce import Alignment, alignment, is_exact, reduce_window
from pipeline.config import DatasetConfig, Resampling
from pipeline.context import RunContext, StageNode
from pipeline.coverage import (
    DENSIFY_POINTS,
    CoverageCounter,
    footprint,
    mask_counts,
    valid_mask,
)
from pipeline.events import CheckpointEvent
from pipeline.executor import JobPools, Staged, TaskFuture, TaskPool, hand_off, job_pools
from pipeline.grid import Placement, TargetGrid, place
from pipeline.memory import WindowLimit
from pipeline.separable import SeparableKernel, applies, pixel_masks
from pipeline.source import SourceInfo
from pipeline.source_names import local_file
from pipeline.sourcevrt import array_vrt
from pipeline.store import ChunkLines, ChunkWriter, LayerStore
from pipeline.warpplan import (
    FILTER_RADIUS,
    FULL_TURN_DEGREES,
    GDAL_ROUND_EPSILON,
    GDAL_SAMPLE_STEPS,
    PixelCost,
    WarpChunk,
    center_longitude,
    pieces,
    plan_chunks,
    to_source_pixels,
)

log = logging.getLogger("geod.resample")

#: Methods that only ever pick one of the input values: integer dtypes survive.
VALUE_PICKING = frozenset(
    {
        Resampling.nearest,
        Resampling.mode,
        Resampling.min,
        Resampling.max,
        Resampling.med,
        Resampling.q1,
        Resampling.q3,
    }
)

#: Bumped whenever the output of the same inputs would change (invalidates stores).
ALGORITHM_VERSION = 5
_MIB = 1024**2
#: Copies of a window's output alive while it is warped and written (GDAL's buffer, ours).
OUTPUT_COPIES = 2
#: Source pixels decoded around a window's own source-window estimate when it is read
#: ahead of its warp: GDAL's warper rounds its source window outwards and adds the
#: kernel radius itself, and a pixel it asks for outside the decoded crop would read as
#: nodata. Parity tests pass with none; this is headroom, and costs a few rows of blocks
#: that the reader's block cache mostly holds for the neighbouring window anyway.
CROP_PAD = 8
#: How a source band's validity is known when it can be warped from a decoded crop:
#: by its nodata value or not at all (an internal mask or alpha band is not in the crop).
PLAIN_MASKS = frozenset({MaskFlags.all_valid, MaskFlags.nodata})


def output_dtype(method: Resampling, source_dtype: str) -> str:
    """dtype of the resampled layer (see the module docstring for the rule)."""
    dtype = np.dtype(source_dtype)
    if dtype.kind == "f" or method in VALUE_PICKING:
        return dtype.name
    return "float32"


def source_nodata(dataset: DatasetConfig, source: SourceInfo) -> float | None:
    """The source value meaning "no data": the config override, else the file's."""
    return dataset.nodata if dataset.nodata is not None else source.nodata


def output_nodata(dtype: str, nodata: float | None) -> float:
    """Nodata of the resampled layer: NaN for floats, else the source's or a sentinel."""
    kind = np.dtype(dtype)
    if kind.kind == "f":
        return math.nan
    if nodata is not None:
        return nodata
    info = np.iinfo(kind)
    return float(info.min if kind.kind == "i" else info.max)


# --------------------------------------------------------------------------- windows


def _window_samples(window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Grid pixel coordinates sampled over a window, edges included."""
    ratios = np.linspace(0.0, 1.0, GDAL_SAMPLE_STEPS)
    cols, rows = np.meshgrid(ratios * int(window.width), ratios * int(window.height))
    return cols.ravel() + int(window.col_off), rows.ravel() + int(window.row_off)


def _to_source_pixels(
    source: SourceInfo, grid: TargetGrid, cols: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    return to_source_pixels(source, grid.crs, grid.transform, cols, rows)


def _wraps_antimeridian(source: SourceInfo, grid: TargetGrid, window: Window) -> bool:
    """Would GDAL 3.10 wrap this window's footprints round the antimeridian of the source?

    GDAL wraps the longitudes of a geographic source into the half-turn either
    side of its centre (:func:`pipeline.warpplan.center_longitude`). Where a
    source spans about the whole globe, that wrap line lies within a cell of
    its edge, and GDAL 3.10's footprint methods then average the whole latitude
    band into a cell reaching past it instead of the covered part (the EGM96
    geoid, ending at 179.875°E, got -0.78 m instead of 21.5 m in its last 1°
    column). Such windows are warped from a cropped copy of the source, which
    GDAL does not consider global. Where the wrap line is more than a cell away
    from the source no cell touching the source crosses it, and the whole-source
    warp is exact as it is.
    """
    center = center_longitude(source)
    if center is None:
        return False
    px, _ = _to_source_pixels(source, grid, *_window_samples(window))
    if np.isnan(px).all():
        return False
    west, _, east, _ = source.bounds
    gap = (FULL_TURN_DEGREES - (east - west)) / 2.0 / abs(source.transform.a)
    low, high = float(np.nanmin(px)), float(np.nanmax(px))
    cell = (high - low) / max(1, int(window.width))
    return gap < cell and (
        low < -gap - GDAL_ROUND_EPSILON or high > source.width + gap + GDAL_ROUND_EPSILON
    )


def _source_window(
    source: SourceInfo,
    grid: TargetGrid,
    window: Window,
    method: Resampling,
    scale: tuple[float, float],
    margin: int,
    whole: bool = False,
) -> Window | None:
    """The source pixels a target window needs (kernel radius and margin included).

    ``whole``: None unless every sample point of the window maps onto the source
    plane (where some do not, GDAL may widen its own source window in ways this
    estimate does not follow).
    """
    px, py = _to_source_pixels(source, grid, *_window_samples(window))
    missing = np.isnan(px) | np.isnan(py)
    if missing.all() or (whole and missing.any()):
        return None
    radius = FILTER_RADIUS.get(method, 0)
    pad_x = math.ceil(radius / min(scale[0], 1.0)) + margin + 1
    pad_y = math.ceil(radius / min(scale[1], 1.0)) + margin + 1
    col0 = max(0, math.floor(np.nanmin(px)) - pad_x)
    col1 = min(source.width, math.ceil(np.nanmax(px)) + pad_x)
    row0 = max(0, math.floor(np.nanmin(py)) - pad_y)
    row1 = min(source.height, math.ceil(np.nanmax(py)) + pad_y)
    if col0 >= col1 or row0 >= row1:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)


def warp_plan(
    source: SourceInfo, dataset: DatasetConfig, grid: TargetGrid, warp_memory: int
) -> list[WarpChunk]:
    """GDAL's chunks (and their kernel scales) for a whole-raster warp of this dataset."""
    dtype = output_dtype(dataset.resampling, source.dtype)
    cost = PixelCost.of(source.dtype, dtype, source_nodata(dataset, source) is not None)
    return plan_chunks(
        source,
        grid.crs,
        grid.transform,
        (grid.width, grid.height),
        dataset.resampling,
        cost,
        warp_memory,
    )


@dataclass(frozen=True)
class SourceCrop:
    """Source pixels of one window, decoded on a reader thread ahead of the window's warp."""

    window: Window
    data: np.ndarray


#: A piece's cells computed by separable weights, and which of them (True: all).
SeparablePiece = tuple[np.ndarray, np.ndarray | bool]


class ChunkWarper:
    """Warps pieces of windows, each with the kernel scale of the GDAL chunk it lies in.

    Pieces are read from one virtual warped dataset per chunk scale, with the
    grid's own transform and size, so GDAL computes every destination
    coordinate exactly as in a whole-raster warp. Warping each piece onto its
    own window transform instead (``reproject`` with origin ``grid origin +
    col × step``) is faster but not equal: the origin differs in the last bit,
    which moves ``sum`` by a whole source pixel where target edges coincide
    with source edges (30″ into 5′), and next to chunk boundaries of a grid
    split by the warp memory limit bilinear and cubic differed by up to half
    the data range (tests/test_resample_edges.py). Windows past the east edge
    of a near-global source are the exception (:func:`_wraps_antimeridian`).
    The virtual datasets are opened on first use and kept until :meth:`close`.
    """

    def __init__(
        self,
        source: SourceInfo,
        dataset: DatasetConfig,
        grid: TargetGrid,
        threads: int,
        margin: int,
        src_dataset: rasterio.io.DatasetReader,
    ) -> None:
        self._source, self._dataset, self._grid = source, dataset, grid
        self._threads, self._margin, self._src = threads, margin, src_dataset
        self._dtype = output_dtype(dataset.resampling, source.dtype)
        self._nodata = output_nodata(self._dtype, source_nodata(dataset, source))
        self._vrts: dict[tuple[float, float], WarpedVRT] = {}
        #: ``average``/``bilinear`` within one CRS: computed from a decoded crop by sparse
        #: products where they can be (:mod:`pipeline.separable`).
        self.separable = applies(
            dataset.resampling, src_dataset.crs, grid.crs, src_dataset.transform,
            grid.transform, self._dtype,
        )  # fmt: skip

    def __enter__(self) -> ChunkWarper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for vrt in self._vrts.values():
            vrt.close()
        self._vrts.clear()

    def _warped(self, src: rasterio.io.DatasetReader, scale: tuple[float, float]) -> WarpedVRT:
        """``src`` warped onto the whole grid with a pinned kernel scale."""
        grid = self._grid
        return WarpedVRT(
            src,
            crs=grid.crs,
            transform=grid.transform,
            width=grid.width,
            height=grid.height,
            src_nodata=source_nodata(self._dataset, self._source),
            nodata=self._nodata,
            dtype=self._dtype,
            resampling=RioResampling[self._dataset.resampling.value],
            XSCALE=repr(scale[0]),
            YSCALE=repr(scale[1]),
            SOURCE_EXTRA=self._margin,
            NUM_THREADS=self._threads,
        )

    def _vrt(self, scale: tuple[float, float]) -> WarpedVRT:
        vrt = self._vrts.get(scale)
        if vrt is None:
            vrt = self._vrts[scale] = self._warped(self._src, scale)
        return vrt

    def warp(self, piece: WarpChunk) -> np.ndarray:
        """The grid cells of ``piece.window`` as GDAL's whole-raster warp computes them."""
        source, window = self._source, piece.window
        if _wraps_antimeridian(source, self._grid, window):
            crop = _source_window(
                source, self._grid, window, self._dataset.resampling, piece.scale, self._margin
            )
            if crop is None:
                return np.full((int(window.height), int(window.width)), self._nodata, self._dtype)
            placed = {
                "src_transform": window_transform(crop, source.transform),
                "src_crs": source.crs,
            }
            return self._reproject(piece, self._src.read(source.band, window=crop), placed)
        return self._vrt(piece.scale).read(source.band, window=window)

    def _reproject(self, piece: WarpChunk, data: object, placed: dict[str, object]) -> np.ndarray:
        """One GDAL warp of a piece onto its own window (from a cropped source array)."""
        source, dataset, window = self._source, self._dataset, piece.window
        out = np.full((int(window.height), int(window.width)), self._nodata, dtype=self._dtype)
        reproject(
            source=data,
            destination=out,
            src_nodata=source_nodata(dataset, source),
            dst_transform=self._grid.window_transform(window),
            dst_crs=self._grid.crs,
            dst_nodata=self._nodata,
            resampling=RioResampling[dataset.resampling.value],
            num_threads=self._threads,
            XSCALE=repr(piece.scale[0]),
            YSCALE=repr(piece.scale[1]),
            SOURCE_EXTRA=self._margin,
            **placed,
        )
        return out

    def window(
        self, window: Window, chunks: list[WarpChunk], crop: SourceCrop | None = None
    ) -> np.ndarray:
        """One output window, piece by piece along GDAL's chunks.

        Cells outside every chunk are ones GDAL's whole-raster warp leaves empty too.
        With ``crop`` (the window's source pixels, decoded ahead on another thread) the
        pieces are warped from it, through a virtual raster with the source's own size
        and georeferencing, so GDAL computes every coordinate as it does from the file;
        or, for ``average`` and ``bilinear`` within one CRS, computed from it by separable
        weights (:mod:`pipeline.separable`).
        """
        out = np.full((int(window.height), int(window.width)), self._nodata, dtype=self._dtype)
        row0, col0 = int(window.row_off), int(window.col_off)
        parts = pieces(window, chunks)
        if crop is None:
            warped = (self.warp(piece) for piece in parts)
        else:
            warped = self._from_crop(parts, crop)
        for piece, part in zip(parts, warped, strict=True):
            r, c = int(piece.window.row_off) - row0, int(piece.window.col_off) - col0
            out[r : r + part.shape[0], c : c + part.shape[1]] = part
        return out

    def _separable(self, piece: WarpChunk, crop: SourceCrop) -> SeparablePiece | None:
        """A piece computed from the crop by separable weights (None: GDAL must warp it)."""
        src, at, crop_at = self._src, piece.window, crop.window
        kernel = SeparableKernel.over(
            self._dataset.resampling, src.transform, (src.height, src.width),
            (int(crop_at.row_off), int(crop_at.col_off), *crop.data.shape),
            self._grid.transform,
            (int(at.row_off), int(at.col_off), int(at.height), int(at.width)), piece.scale,
        )  # fmt: skip
        if kernel is None:
            return None
        computed = kernel.computed()
        if computed is not True and not computed.any():
            return None
        valid, tainted = pixel_masks(
            crop.data, source_nodata(self._dataset, self._source), self._dataset.resampling
        )
        return kernel.apply(crop.data, valid, self._dtype, self._nodata, tainted), computed

    def _from_crop(self, parts: list[WarpChunk], crop: SourceCrop) -> Iterator[np.ndarray]:
        """Each piece from the decoded crop: by separable weights, else GDAL's warp of it
        (see :meth:`window`; the crop's virtual raster is opened only for the latter)."""
        with ExitStack() as stack:
            placed: rasterio.io.DatasetReader | None = None
            for piece in parts:
                separable = self._separable(piece, crop) if self.separable else None
                if separable is not None and separable[1] is True:
                    yield separable[0]
                    continue
                if placed is None:
                    stack.enter_context(rasterio.Env(GDAL_MEM_ENABLE_OPEN="YES"))
                    placed = stack.enter_context(rasterio.open(self._crop_vrt(crop)))
                with self._warped(placed, piece.scale) as vrt:
                    warped = vrt.read(1, window=piece.window)
                yield warped if separable is None else np.where(separable[1], separable[0], warped)

    def _crop_vrt(self, crop: SourceCrop) -> str:
        """A virtual raster of the crop with the source's own size and georeferencing."""
        source, window = self._source, crop.window
        return array_vrt(
            crop.data,
            int(window.col_off),
            int(window.row_off),
            source.width,
            source.height,
            self._src.transform,
            self._src.crs.to_wkt(),
            self._src.nodatavals[source.band - 1],
        )


def copy_window(
    source: SourceInfo,
    dataset: DatasetConfig,
    placement: Placement,
    window: Window,
    src_dataset: rasterio.io.DatasetReader,
) -> np.ndarray:
    """A passthrough window: the source's pixels at their integer offset, no resampling."""
    dtype = output_dtype(dataset.resampling, source.dtype)
    src_nodata = source_nodata(dataset, source)
    nodata = output_nodata(dtype, src_nodata)
    height, width = int(window.height), int(window.width)
    out = np.full((height, width), nodata, dtype=dtype)
    row0 = int(window.row_off) - placement.row_off
    col0 = int(window.col_off) - placement.col_off
    r0, r1 = max(0, row0), min(source.height, row0 + height)
    c0, c1 = max(0, col0), min(source.width, col0 + width)
    if r0 >= r1 or c0 >= c1:
        return out
    data = src_dataset.read(source.band, window=Window(c0, r0, c1 - c0, r1 - r0))
    values = data.astype(dtype, copy=False)
    if src_nodata is not None:
        missing = np.isnan(data) if math.isnan(src_nodata) else data == src_nodata
        if values is data:
            values = values.copy()
        values[missing] = nodata
    out[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = values
    return out


def source_cells_per_cell(source: SourceInfo, grid: TargetGrid) -> float:
    """Source pixels per grid cell, from the source's extent on the grid (1.0 if PROJ cannot)."""
    bounds = source.bounds
    try:
        if source.crs != grid.crs:
            bounds = transform_bounds(source.crs, grid.crs, *bounds, densify_pts=DENSIFY_POINTS)
    except Exception:  # a source PROJ cannot map as a whole
        return 1.0
    west, south, east, north = bounds
    cols = (east - west) / abs(grid.transform.a)
    rows = (north - south) / abs(grid.transform.e)
    if not (cols > 0 and rows > 0):
        return 1.0
    return source.width / cols * source.height / rows


def window_cell_bytes(
    source: SourceInfo, dtype: str, grid: TargetGrid, depth: int, warping: int
) -> float:
    """What the pipeline holds per output cell of a window size, for :meth:`MemoryGovernor.fit`.

    Per window in flight: the source pixels it reads (its decoded crop) and the
    output twice (the warp's destination buffer and the array handed to the
    writer). Per window GDAL is warping (``warping``: the compute threads, when
    neither block reduction nor the separable kernels compute this dataset):
    GDAL's own copy of those source pixels in its warp buffer. Measured on a 30″
    float32 source warped onto a 1′ grid: RSS rose by 16–22 bytes per cell of a
    2048-pixel window, against 24 estimated here without the warp buffer; a 30″
    float64 cubic layer overran a budget fitted without it by 3 %.
    """
    read = source_cells_per_cell(source, grid) * np.dtype(source.dtype).itemsize
    return depth * (read + OUTPUT_COPIES * np.dtype(dtype).itemsize) + warping * read


@dataclass(frozen=True)
class WindowJob:
    """Everything one dataset's windows need, by value, so any thread or process computes them.

    A job holds no open dataset: :func:`compute_window` opens the source by its
    GDAL name (a path or a VSI URL) on the thread that computes, so a job can be
    pickled to a Dask worker as it is (rasterio datasets are never pickled).
    ``token`` names the job's opened datasets in the per-thread cache.
    """

    token: str
    source: SourceInfo
    dataset: DatasetConfig
    grid: TargetGrid
    margin: int
    warp_memory: int
    gdal_env: dict[str, object]
    placement: Placement
    aligned: Alignment | None
    chunks: tuple[WarpChunk, ...]
    dtype: str
    nodata: float
    #: On a cluster: the store's writer, so each task writes its own window.
    writer: ChunkWriter | None = None

    def warps(self, piece: Window) -> bool:
        """Is ``piece`` computed by GDAL's warp (not copied, nor reduced by blocks)?"""
        aligned = self.aligned
        return not self.placement.passthrough and not (
            aligned and is_exact(aligned, self.source, piece)
        )

    def crop(self, piece: Window, src: rasterio.io.DatasetReader) -> SourceCrop | None:
        """The source pixels ``piece``'s warp reads, decoded now; None where the warp must
        read the file itself (a window reaching round the antimeridian, one the source
        plane does not hold whole, a source whose validity is a mask band, not nodata)."""
        source, grid, method = self.source, self.grid, self.dataset.resampling
        parts = pieces(piece, list(self.chunks))
        if not parts or not set(src.mask_flag_enums[source.band - 1]) <= PLAIN_MASKS:
            return None
        if _wraps_antimeridian(source, grid, piece):
            return None
        scale = (min(p.scale[0] for p in parts), min(p.scale[1] for p in parts))
        window = _source_window(
            source, grid, piece, method, scale, self.margin + CROP_PAD, whole=True
        )
        if window is None:
            return None
        return SourceCrop(window, src.read(source.band, window=window))

    def compute(
        self,
        piece: Window,
        warper: ChunkWarper,
        src: rasterio.io.DatasetReader,
        crop: SourceCrop | None = None,
    ) -> np.ndarray:
        """One window (or piece of one) from an open source: copied, reduced or warped
        (from ``crop`` when it was decoded ahead)."""
        dataset, source, aligned = self.dataset, self.source, self.aligned
        if self.placement.passthrough:
            return copy_window(source, dataset, self.placement, piece, src)
        if aligned and is_exact(aligned, source, piece):
            return reduce_window(
                source, aligned, dataset.resampling, piece,
                source_nodata(dataset, source), self.dtype, self.nodata, src, self.warp_memory,
            )  # fmt: skip
        if crop is None and warper.separable:  # not read ahead: the sparse products need it
            crop = self.crop(piece, src)
        return warper.window(piece, list(self.chunks), crop)


#: Per thread: the token of the job whose source it holds open, and that source and warper.
_opened = threading.local()
#: Every thread's open (token, source, warper), so a finished job's can be closed.
_all_opened: dict[int, tuple[str, rasterio.io.DatasetReader, ChunkWarper]] = {}
_opened_lock = threading.Lock()


def _close_opened(key: int) -> None:
    with _opened_lock:
        entry = _all_opened.pop(key, None)
    if entry is not None:
        entry[2].close()
        entry[1].close()


def _thread_source(job: WindowJob) -> tuple[rasterio.io.DatasetReader, ChunkWarper]:
    """This thread's open source and :class:`ChunkWarper` for ``job`` (opened on first use).

    A GDAL dataset is not thread-safe: each thread opens its own source and
    warper (single threaded; the pool is the parallelism) and keeps it for the
    job's next pieces; a thread moving on to another job closes the previous
    one's. :func:`release_job` closes them when a job ends. Call within
    ``rasterio.Env(**job.gdal_env)``.
    """
    held = getattr(_opened, "entry", None)
    if held is None or held[0] != job.token or id(held) not in _all_opened:
        if held is not None:
            _close_opened(id(held))
        src = rasterio.open(job.source.name)
        warper = ChunkWarper(job.source, job.dataset, job.grid, 1, job.margin, src)
        # On a cluster this line says which Dask worker reads which source
        # (forwarded with its address); locally, once per thread and dataset.
        log.info(
            "%s: opened %s on thread %s",
            job.dataset.name,
            job.source.name,
            threading.current_thread().name,
            extra={"stage": "resample", "dataset": job.dataset.name},
        )
        held = _opened.entry = (job.token, src, warper)
        with _opened_lock:
            _all_opened[id(held)] = held
    return held[1], held[2]


def read_window_source(job: WindowJob, piece: Window) -> SourceCrop | None:
    """Decode the source pixels a warped piece needs (on a reader thread, ahead of its warp)."""
    if not job.warps(piece):
        return None
    with rasterio.Env(**job.gdal_env):
        src, _ = _thread_source(job)
        return job.crop(piece, src)


@dataclass(frozen=True)
class WrittenWindow:
    """A window a task wrote to the store itself: what the run's worker records of it."""

    lines: ChunkLines
    #: :func:`pipeline.coverage.mask_counts` of its valid cells.
    counts: tuple[int, np.ndarray, np.ndarray]


def warp_window(
    job: WindowJob, piece: Window, crop: SourceCrop | None
) -> np.ndarray | Future[WrittenWindow]:
    """Compute one piece of ``job`` on this thread (a pool thread or a Dask worker's),
    from its decoded ``crop`` when there is one, else reading the source itself. A job
    with a writer (a Dask run) writes the piece's chunks too, so the run's worker is
    not the one writer of the whole cluster, and returns their checksums and coverage;
    the write is handed off (:func:`~pipeline.executor.hand_off`), so the task's next
    piece decodes and warps while this one's chunks are encoded and fsynced."""
    with rasterio.Env(**job.gdal_env):
        src, warper = _thread_source(job)
        data = job.compute(piece, warper, src, crop)
    if job.writer is None:
        return data
    return hand_off(_write_piece, job, piece, data)


def _write_piece(job: WindowJob, piece: Window, data: np.ndarray) -> WrittenWindow:
    """Write a piece's chunks with the job's writer: what the run's worker records of it."""
    assert job.writer is not None
    lines = job.writer.write(job.dataset.name, piece, data)
    return WrittenWindow(lines, mask_counts(valid_mask(data, job.nodata)))


#: One piece of a job: read ahead on a reader thread, then warped on a compute thread
#: (locally); read and warped in one task on a Dask worker.
compute_window = Staged(read_window_source, warp_window)


def release_job(token: str) -> None:
    """Close every thread's datasets opened for the job ``token`` (its windows are done)."""
    with _opened_lock:
        keys = [key for key, entry in _all_opened.items() if entry[0] == token]
    for key in keys:
        _close_opened(key)


def _cells(window: Window) -> int:
    """Grid cells of a window (edge windows hold fewer than the others)."""
    return int(window.height) * int(window.width)


def _subwindows(window: Window, size: int) -> list[Window]:
    """``window`` cut into ``size`` pieces (all chunk-aligned since size is a chunk multiple)."""
    row0, col0 = int(window.row_off), int(window.col_off)
    row1, col1 = row0 + int(window.height), col0 + int(window.width)
    return [
        Window(c, r, min(size, col1 - c), min(size, row1 - r))
        for r in range(row0, row1, size)
        for c in range(col0, col1, size)
    ]


def fingerprint(dataset: DatasetConfig, source: SourceInfo, grid: TargetGrid, chunk: int) -> str:
    """Hash of everything that determines a layer's content (a changed one resets it)."""
    local = local_file(source.path)
    stat = os.stat(local) if local is not None else None
    facts = {
        "algorithm": ALGORITHM_VERSION,
        "dataset": dataset.model_dump(mode="json", exclude={"name"}),
        "source": {
            "path": str(source.path),
            "open_name": source.name,
            "size": stat.st_size if stat else None,
            "mtime_ns": stat.st_mtime_ns if stat else None,
            "band": source.band,
            "crs": source.crs.to_wkt(),
            "transform": list(source.transform)[:6],
            "shape": [source.height, source.width],
            "dtype": source.dtype,
            "nodata": None if source.nodata is None else repr(source.nodata),
        },
        "grid": {
            "crs": grid.crs.to_wkt(),
            "transform": list(grid.transform)[:6],
            "shape": [grid.height, grid.width],
        },
        "chunk": chunk,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def _gdal_env(ctx: RunContext) -> dict[str, object]:
    """GDAL settings of the stage's thread and of every window's task.

    One set for the whole stage, not one per dataset: the block cache is the
    budget's share for everything in flight, and the windows of several
    datasets are in flight at once (:func:`resample_datasets`).

    On a cluster GDAL gets one thread per task, Dask's convention (its nanny sets
    ``OMP_NUM_THREADS=1`` for the same reason): a worker already runs one task
    per core, and GDAL's own threads would only contend with the other tasks.
    """
    config = ctx.config.resampling
    cache_mb = max(1, ctx.governor.gdal_cache_bytes() // _MIB)
    gdal_threads = 1 if ctx.executor.remote else config.threads + config.read_threads
    return {
        "GDAL_CACHEMAX": cache_mb,
        "GDAL_NUM_THREADS": gdal_threads,
        "GDAL_HTTP_TIMEOUT": math.ceil(ctx.config.catalog.timeout),
    }


@dataclass
class _Layer:
    """One dataset in the stage's queue: its job, its pool, its progress and its coverage."""

    dataset: DatasetConfig
    node: StageNode
    job: WindowJob
    windows: list[Window]
    pending: set[tuple[int, int]]
    counter: CoverageCounter
    #: Estimated bytes per output cell the run's worker holds for one window in flight
    #: (source read, outputs; nothing when a cluster's task writes it): a piece counts
    #: its cells' worth against the queue's memory share.
    cell_cost: float
    pool: AbstractContextManager[TaskPool[Window, np.ndarray | WrittenWindow]]
    submit: Callable[[Window], TaskFuture[np.ndarray | WrittenWindow]]
    #: Arguments of its ``node.start`` (emitted when its first entry reaches the front).
    progress: dict[str, int]


@dataclass(frozen=True)
class _Started:
    """The layer's first entry: its progress node starts when the layers before it are done."""

    layer: _Layer


@dataclass(frozen=True)
class _Piece:
    """A piece to finish in order: computed by ``future``, or (None) complete in the store."""

    layer: _Layer
    window: Window
    future: TaskFuture[np.ndarray | WrittenWindow] | None
    #: Estimated bytes it holds while in flight (:func:`window_cell_bytes` of its cells).
    cost: float = 0.0


@dataclass(frozen=True)
class _WindowDone:
    """Closes a window: advances the layer's progress node by its cells."""

    layer: _Layer
    cells: int


@dataclass(frozen=True)
class _LayerDone:
    """The layer's last entry: close its pool, report its coverage, hand it to ``done``."""

    layer: _Layer


_Entry = _Started | _Piece | _WindowDone | _LayerDone


def queue_full(count: int, held: float, threads: int, queue_bytes: float) -> bool:
    """Must the oldest entry be finished before another piece is submitted?

    One piece per reader and compute thread plus one waiting to be written
    keeps every core and the writer busy: at most ``threads + 1`` pieces read or
    warped ahead of the one being written, holding no more than ``queue_bytes``
    (their estimated source crops and outputs) between them, and never fewer
    than one (the serial loop). Pieces of several datasets differ in bytes, so
    the bound is on bytes, not on a count of windows.
    """
    return count > 1 and (count > threads + 1 or held > queue_bytes)


class _WindowQueue:
    """The stage's one ordered queue of pieces, across datasets, finished on its own thread.

    Entries are finished strictly in the order they were put: a dataset's
    pieces in checkpoint order, and one dataset's after the previous one's, so
    writes, checkpoints (where a pause or kill lands), governor readings and
    progress come exactly as when datasets ran one by one; only the computing
    runs ahead, up to the in-flight bound across the whole queue.
    """

    def __init__(
        self,
        ctx: RunContext,
        grid: TargetGrid,
        store: LayerStore,
        done: Callable[[DatasetConfig, StageNode], None] | None,
        threads: int,
        queue_bytes: float,
    ) -> None:
        self._ctx, self._grid, self._store, self._done = ctx, grid, store, done
        self._threads, self._queue_bytes = threads, queue_bytes
        self._entries: deque[_Entry] = deque()
        self._count = 0
        self._held = 0.0
        #: Layers whose pools are open (closed as each one's last entry is finished).
        self.open: list[_Layer] = []

    @property
    def reserved(self) -> float:
        """Estimated bytes of the pieces in flight, for the next dataset's window fit."""
        return self._held

    def put(self, entry: _Entry) -> None:
        """Queue an entry, then finish old ones until the in-flight bound holds again."""
        self._entries.append(entry)
        if isinstance(entry, _Piece) and entry.future is not None:
            self._count += 1
            self._held += entry.cost
        while queue_full(self._count, self._held, self._threads, self._queue_bytes):
            self.finish_one()

    def drain(self) -> None:
        while self._entries:
            self.finish_one()

    def close(self) -> None:
        """Close the pools of layers not finished (an error, a stop): cancels their tasks."""
        while self.open:
            self.open.pop(0).pool.__exit__(None, None, None)

    def finish_one(self) -> None:
        """Finish the oldest entry, on this (the stage's) thread."""
        entry = self._entries.popleft()
        layer = entry.layer
        if isinstance(entry, _Started):
            layer.node.start(**layer.progress)
        elif isinstance(entry, _WindowDone):
            layer.node.advance(cells=entry.cells)
        elif isinstance(entry, _LayerDone):
            self.open.remove(layer)
            layer.pool.__exit__(None, None, None)
            config = self._ctx.config.resampling
            _report_coverage(layer.dataset.name, layer.counter, config.coverage_warning)
            if self._done is not None:
                self._done(layer.dataset, layer.node)
        elif entry.future is None:
            name, piece = layer.dataset.name, entry.window
            data = self._store.read_window(name, piece)
            layer.counter.add(piece, valid_mask(data, layer.job.nodata))
        else:
            self._count -= 1
            self._held -= entry.cost
            self._write(layer, entry.window, entry.future.result())

    def _write(self, layer: _Layer, piece: Window, result: np.ndarray | WrittenWindow) -> None:
        """Write (or record what a task wrote), checkpoint (pause/kill happen here), adapt
        the window size."""
        ctx, grid, store, name = self._ctx, self._grid, self._store, layer.dataset.name
        if isinstance(result, WrittenWindow):
            store.record(name, result.lines)
            layer.counter.add_counts(piece, *result.counts)
        else:
            store.write_window(name, piece, result)
            layer.counter.add(piece, valid_mask(result, layer.job.nodata))
        ctx.events.emit(
            CheckpointEvent(
                stage="resample",
                dataset=name,
                done=store.completed(name),
                total=store.total_chunks(),
                detail={"row_off": int(piece.row_off), "col_off": int(piece.col_off)},
                row_off=int(piece.row_off),
                col_off=int(piece.col_off),
                height=int(piece.height),
                width=int(piece.width),
                grid_height=grid.height,
                grid_width=grid.width,
            )
        )
        ctx.control.checkpoint()
        ctx.governor.after_window(f"resample/{name}")


def _gdal_warps(
    dataset: DatasetConfig,
    source: SourceInfo,
    grid: TargetGrid,
    placement: Placement,
    aligned: Alignment | None,
    dtype: str,
) -> bool:
    """Does GDAL's warp compute this dataset's windows (with its own source buffer)?"""
    if placement.passthrough or aligned is not None:
        return False
    return not applies(
        dataset.resampling, source.crs, grid.crs, source.transform, grid.transform, dtype
    )


def _open_layer(
    ctx: RunContext,
    dataset: DatasetConfig,
    source: SourceInfo,
    grid: TargetGrid,
    store: LayerStore,
    node: StageNode,
    pools: JobPools,
    gdal_env: dict[str, object],
    threads: int,
    queue_bytes: float,
    reserved: float,
) -> _Layer:
    """Prepare one dataset for the queue: its layer in the store, its job and its pool.

    ``reserved``: estimated bytes of the previous datasets' pieces still in flight,
    which this dataset's window size must leave room for.
    """
    config = ctx.config.resampling
    name = dataset.name
    placement = place(grid, source)
    dtype = output_dtype(dataset.resampling, source.dtype)
    nodata = output_nodata(dtype, source_nodata(dataset, source))
    layer_print = fingerprint(dataset, source, grid, store.chunk)
    store.ensure_layer(name, dtype, nodata, layer_print)

    windows = grid.windows(config.window_size)
    todo = [w for w in windows if not store.is_complete(name, w)]
    cells_total = sum(_cells(w) for w in windows)
    progress = {
        "total": len(windows),
        "done": len(windows) - len(todo),
        "cells_total": cells_total,
        "cells_done": cells_total - sum(_cells(w) for w in todo),
    }
    aligned = None if placement.passthrough else alignment(source, grid, dataset.resampling)
    chunks = [] if placement.passthrough else warp_plan(source, dataset, grid, config.warp_memory)
    log.info(
        "%s: %s %d×%d %s → grid %d×%d; %d of %d windows to do",
        name,
        "copying (on the grid)"
        if placement.passthrough
        else f"reducing {aligned.factor_x}×{aligned.factor_y} blocks ({dataset.resampling.value})"
        if aligned
        else f"resampling ({dataset.resampling.value}, {len(chunks)} GDAL warp chunks)",
        source.width,
        source.height,
        source.crs.to_string(),
        grid.width,
        grid.height,
        len(todo),
        len(windows),
        extra={"stage": "resample", "dataset": name},
    )
    # The queue's bound holds across datasets; this dataset's windows are sized as if
    # the whole depth were its own, next to what the previous ones still hold, and so
    # that a full queue of them fits its share of the budget.
    depth = threads + 1
    warping = threads if _gdal_warps(dataset, source, grid, placement, aligned, dtype) else 0
    if ctx.executor.remote:
        # Tasks decode, warp and write on the cluster's workers and return only checksums
        # and counts: the run's worker holds nothing per window; the workers size them.
        local, held, limits = 0.0, 0.0, []
    else:
        local = window_cell_bytes(source, dtype, grid, depth, warping)
        held = window_cell_bytes(source, dtype, grid, 1, 0)
        limits = [
            WindowLimit(depth * held, queue_bytes, "queued ahead of the writer", "their share")
        ]
    worker = ctx.executor.window_room()
    if worker is not None:
        room, name_of_worker = worker
        per_task = window_cell_bytes(source, dtype, grid, 1, 1 if warping else 0)
        limits.append(
            WindowLimit(per_task, room, f"on {name_of_worker} at once", "one task's share")
        )
    ctx.governor.fit(local, name, reserved, limits)
    job = WindowJob(
        # The name too: two datasets of one file and settings have equal fingerprints, and
        # one's release must not close the sources the other's threads are reading.
        token=f"{name}:{layer_print}:{config.margin}:{config.warp_memory}",
        source=source,
        dataset=dataset,
        grid=grid,
        margin=config.margin,
        warp_memory=config.warp_memory,
        gdal_env=gdal_env,
        placement=placement,
        aligned=aligned,
        chunks=tuple(chunks),
        dtype=dtype,
        nodata=nodata,
        writer=store.writer if ctx.executor.remote else None,
    )
    pool = pools.pool(compute_window, job, functools.partial(release_job, job.token))
    return _Layer(
        dataset=dataset,
        node=node,
        job=job,
        windows=windows,
        pending={(int(w.row_off), int(w.col_off)) for w in todo},
        counter=CoverageCounter(grid, footprint(grid, source)),
        cell_cost=held,
        pool=pool,
        submit=pool.__enter__().submit,
        progress=progress,
    )


def _layer_entries(ctx: RunContext, store: LayerStore, layer: _Layer) -> Iterator[_Entry]:
    """A layer's entries in checkpoint order, each piece submitted as it is pulled.

    Pulled one at a time after the queue has made room, so a window is cut at
    the governor's window size of that moment (as when datasets ran one by one).
    """
    config, name = ctx.config.resampling, layer.dataset.name
    yield _Started(layer)
    for window in layer.windows:
        if (int(window.row_off), int(window.col_off)) not in layer.pending:
            # Complete before this run: counted in the node's start, not advanced again.
            yield _Piece(layer, window, None)
            continue
        size = min(ctx.governor.window_size, config.window_size)
        for piece in _subwindows(window, size):
            needed = not store.is_complete(name, piece)
            if needed:
                yield _Piece(layer, piece, layer.submit(piece), layer.cell_cost * _cells(piece))
            else:
                yield _Piece(layer, piece, None)
        yield _WindowDone(layer, _cells(window))
    yield _LayerDone(layer)


def resample_datasets(
    ctx: RunContext,
    datasets: Iterable[tuple[DatasetConfig, SourceInfo, StageNode]],
    grid: TargetGrid,
    store: LayerStore,
    done: Callable[[DatasetConfig, StageNode], None] | None = None,
) -> None:
    """Resample (or copy) every dataset into the store through one ordered queue of windows.

    One dataset after another, each window by window and resumably, as before;
    but the next dataset's first windows are read and warped while the previous
    one's last ones finish, on threads opened once for the stage
    (:func:`~pipeline.executor.job_pools`). Run one by one, each dataset's pool
    started up and then idled at its tail waiting for its last windows, which
    dominated a stage of many small datasets. ``datasets`` is pulled lazily
    (a dataset when the one before it is all queued); each yields its progress
    node, started when its first window reaches the front of the queue.
    ``done(dataset, node)`` runs in order as each one's last window is written
    and its coverage reported. An error in one dataset's preparation surfaces
    after the datasets before it are finished, as when they ran one by one.
    """
    config = ctx.config.resampling
    gdal_env = _gdal_env(ctx)
    threads = ctx.executor.parallelism(config.threads) + config.read_threads
    queue_bytes = ctx.governor.budget * config.queue_fraction
    queue = _WindowQueue(ctx, grid, store, done, threads, queue_bytes)
    with (
        rasterio.Env(**gdal_env),
        job_pools(ctx.executor, compute_window, config.threads, config.read_threads) as pools,
    ):
        try:
            for dataset, source, node in datasets:
                try:
                    layer = _open_layer(
                        ctx, dataset, source, grid, store, node, pools, gdal_env, threads,
                        queue_bytes, queue.reserved,
                    )  # fmt: skip
                except Exception:
                    queue.drain()
                    raise
                queue.open.append(layer)
                for entry in _layer_entries(ctx, store, layer):
                    queue.put(entry)
            queue.drain()
        finally:
            queue.close()


def resample_dataset(
    ctx: RunContext,
    dataset: DatasetConfig,
    source: SourceInfo,
    grid: TargetGrid,
    store: LayerStore,
    node: StageNode,
) -> None:
    """Resample (or copy) one dataset into the store, window by window, resumably.

    The stage's queue with this dataset alone (benches and tests time and check one).
    """
    resample_datasets(ctx, [(dataset, source, node)], grid, store)


def _report_coverage(name: str, counter: CoverageCounter, threshold: float) -> None:
    """Log the layer's coverage of its footprint; a warning when whole rows/columns are lost."""
    numbers = counter.numbers()
    extra = {"stage": "resample", "dataset": name, **numbers}
    summary = (
        f"{numbers['valid_cells']:,} valid cells of a {numbers['footprint_cells']:,}-cell "
        f"footprint; {numbers['valid_columns']} of {numbers['footprint_columns']} columns and "
        f"{numbers['valid_rows']} of {numbers['footprint_rows']} rows hold data"
    )
    if numbers["coverage"] < threshold:
        log.warning(
            "%s: far less coverage than its source's footprint predicts: %s "
            "(below resampling.coverage_warning %g; a lost hemisphere?)",
            name, summary, threshold, extra=extra,
        )  # fmt: skip
    else:
        log.info("%s: %s", name, summary, extra=extra)
