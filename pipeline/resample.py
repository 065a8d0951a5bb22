"""Windowed resampling of one dataset onto the target grid, matching ``gdalwarp``.

Each output window is warped on its own with ``rasterio.warp.reproject`` from
the open source dataset: GDAL computes the source window that output window
needs (plus the kernel radius and ``resampling.margin`` extra pixels) and reads
only that, through a block cache capped from the memory budget. Windows are
written to the :class:`~pipeline.store.LayerStore` and checkpointed one by one.

Parity with a whole-raster ``gdalwarp``. A warp kernel's footprint on the
source depends on the scale (target pixels per source pixel). GDAL derives it
from the source window of each warp call, so a windowed warp would use a
slightly different kernel in each window, and seams would show. We therefore
pin ``XSCALE``/``YSCALE`` to the ratio GDAL computes for a warp of the whole
grid (:func:`gdal_warp_scale`, an emulation of
``GDALWarpOperation::ComputeSourceWindow``). Setting them to 1, as some
libraries do, makes bilinear/cubic downsampling sample a 2×2/4×4 neighbourhood
instead of the whole footprint, which no longer matches gdalwarp at all.

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
* ``sum`` (and any method that counts whole source pixels) can differ where
  target pixel edges fall exactly on source pixel edges: GDAL's approximate
  transformer interpolates along each window's rows, and rounding at ulp level
  decides whether an edge pixel counts.
* ``gdal_warp_scale`` emulates GDAL's edge sampling; GDAL's retry with
  ``CHECK_WITH_INVERT_PROJ`` for bogus source windows is not emulated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math

import numpy as np
import rasterio
from rasterio.enums import Resampling as RioResampling
from rasterio.warp import reproject, transform
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from pipeline.config import DatasetConfig, Resampling
from pipeline.context import RunContext, StageNode
from pipeline.events import CheckpointEvent
from pipeline.grid import Placement, TargetGrid, place
from pipeline.source import SourceInfo
from pipeline.store import LayerStore

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

#: Sample points per edge GDAL uses to find a warp's source window (SAMPLE_STEPS).
GDAL_SAMPLE_STEPS = 21
#: GDAL snaps source-window edges to integers when closer than this (pixels).
GDAL_ROUND_EPSILON = 1e-6
#: GDAL's kernel radius in source pixels at scale 1 (GWKGetFilterRadius); 0 otherwise.
FILTER_RADIUS = {Resampling.bilinear: 1, Resampling.cubic: 2}
#: Geographic sources wider than this (degrees) may be wrapped round the
#: antimeridian by GDAL (see :func:`_wraps_antimeridian`).
WRAP_SPAN_DEGREES = 180.0
#: Bumped whenever the output of the same inputs would change (invalidates stores).
ALGORITHM_VERSION = 2
_MIB = 1024**2


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


# --------------------------------------------------------------------------- scale


def _to_source_pixels(
    source: SourceInfo, grid: TargetGrid, cols: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Grid pixel coordinates → source pixel coordinates (NaN where not transformable)."""
    xs, ys = grid.transform @ (cols, rows)
    if source.crs != grid.crs:
        with np.errstate(all="ignore"):
            xs, ys = transform(grid.crs, source.crs, np.ravel(xs), np.ravel(ys))
    px, py = ~source.transform @ (np.asarray(xs, float), np.asarray(ys, float))
    bad = ~(np.isfinite(px) & np.isfinite(py))
    px, py = np.asarray(px, float), np.asarray(py, float)
    px[bad] = np.nan
    py[bad] = np.nan
    return px, py


def _edge_samples(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """GDAL's sample points along the four edges of a destination region."""
    step = 1.0 / (GDAL_SAMPLE_STEPS - 1)
    ratios = []
    ratio = 0.0
    while ratio <= 1.0 + step * 0.5:  # the same accumulated steps as GDAL
        ratios.append(ratio)
        ratio += step
    r = np.asarray(ratios)
    cols = np.concatenate([r * width, r * width, np.zeros_like(r), np.full_like(r, width)])
    rows = np.concatenate([np.zeros_like(r), np.full_like(r, height), r * height, r * height])
    return cols, rows


def _grid_samples(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample points over the whole destination (GDAL's fallback when edges fail)."""
    ratios = np.linspace(0.0, 1.0, GDAL_SAMPLE_STEPS)
    cols, rows = np.meshgrid(ratios * width, ratios * height)
    return cols.ravel(), rows.ravel()


def gdal_warp_scale(source: SourceInfo, grid: TargetGrid) -> tuple[float, float]:
    """XSCALE/YSCALE as GDAL computes them for a warp of the whole grid.

    Destination pixels per source pixel along each axis: the grid size over the
    extent (in source pixels) of the grid's footprint, clamped to the source.
    """
    px, py = _to_source_pixels(source, grid, *_edge_samples(grid.width, grid.height))
    if np.isnan(px).any():
        px, py = _to_source_pixels(source, grid, *_grid_samples(grid.width, grid.height))
    if np.isnan(px).all():
        return (1.0, 1.0)

    def snap(value: float) -> float:
        rounded = round(value)
        return float(rounded) if abs(rounded - value) < GDAL_ROUND_EPSILON else value

    scales = []
    for coords, dst_size, src_size in (
        (px, grid.width, source.width),
        (py, grid.height, source.height),
    ):
        low, high = snap(float(np.nanmin(coords))), snap(float(np.nanmax(coords)))
        raw = max(0.0, min(src_size - int(max(0.0, low)), high - low))
        scales.append(dst_size / raw if raw > 0 else 1.0)
    return (scales[0], scales[1])


# --------------------------------------------------------------------------- windows


def _window_samples(window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Grid pixel coordinates sampled over a window, edges included."""
    cols, rows = _grid_samples(int(window.width), int(window.height))
    return cols + int(window.col_off), rows + int(window.row_off)


def _wraps_antimeridian(source: SourceInfo, grid: TargetGrid, window: Window) -> bool:
    """Would GDAL treat this window as reaching round the antimeridian of the source?

    GDAL 3.10 treats a geographic source spanning about the whole globe as
    wrapping in longitude. For a target pixel that reaches past the source's
    east edge (a source ending just short of 180°E, even by float noise), its
    footprint methods then average the whole latitude band instead of the
    covered part (the EGM96 geoid's last column at 1°: -0.78 m instead of
    21.5 m). Such windows are warped from a cropped copy of the source, which
    GDAL does not consider global.
    """
    if not source.crs.is_geographic:
        return False
    west, _, east, _ = source.bounds
    if east - west < WRAP_SPAN_DEGREES:
        return False
    px, _ = _to_source_pixels(source, grid, *_window_samples(window))
    if np.isnan(px).all():
        return False
    return bool(
        np.nanmin(px) < -GDAL_ROUND_EPSILON or np.nanmax(px) > source.width + GDAL_ROUND_EPSILON
    )


def _source_window(
    source: SourceInfo,
    grid: TargetGrid,
    window: Window,
    method: Resampling,
    scale: tuple[float, float],
    margin: int,
) -> Window | None:
    """The source pixels a target window needs (kernel radius and margin included)."""
    px, py = _to_source_pixels(source, grid, *_window_samples(window))
    if np.isnan(px).all():
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


def resample_window(
    source: SourceInfo,
    dataset: DatasetConfig,
    grid: TargetGrid,
    window: Window,
    scale: tuple[float, float],
    threads: int,
    margin: int,
    src_dataset: rasterio.io.DatasetReader,
) -> np.ndarray:
    """Warp one output window from the open source (GDAL reads only what it needs)."""
    dtype = output_dtype(dataset.resampling, source.dtype)
    nodata = output_nodata(dtype, source_nodata(dataset, source))
    out = np.full((int(window.height), int(window.width)), nodata, dtype=dtype)
    src: object = rasterio.band(src_dataset, source.band)
    placement: dict[str, object] = {}
    if _wraps_antimeridian(source, grid, window):
        crop = _source_window(source, grid, window, dataset.resampling, scale, margin)
        if crop is None:
            return out
        src = src_dataset.read(source.band, window=crop)
        placement = {
            "src_transform": window_transform(crop, source.transform),
            "src_crs": source.crs,
        }
    reproject(
        source=src,
        destination=out,
        src_nodata=source_nodata(dataset, source),
        dst_transform=grid.window_transform(window),
        dst_crs=grid.crs,
        dst_nodata=nodata,
        resampling=RioResampling[dataset.resampling.value],
        num_threads=threads,
        XSCALE=repr(scale[0]),
        YSCALE=repr(scale[1]),
        SOURCE_EXTRA=margin,
        **placement,
    )
    return out


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
    stat = source.path.stat()
    facts = {
        "algorithm": ALGORITHM_VERSION,
        "dataset": dataset.model_dump(mode="json", exclude={"name"}),
        "source": {
            "path": str(source.path),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
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


def resample_dataset(
    ctx: RunContext,
    dataset: DatasetConfig,
    source: SourceInfo,
    grid: TargetGrid,
    store: LayerStore,
    node: StageNode,
) -> None:
    """Resample (or copy) one dataset into the store, window by window, resumably."""
    config = ctx.config.resampling
    name = dataset.name
    placement = place(grid, source)
    dtype = output_dtype(dataset.resampling, source.dtype)
    nodata = output_nodata(dtype, source_nodata(dataset, source))
    store.ensure_layer(name, dtype, nodata, fingerprint(dataset, source, grid, store.chunk))

    windows = grid.windows(config.window_size)
    todo = [w for w in windows if not store.is_complete(name, w)]
    node.start(total=len(windows), done=len(windows) - len(todo))
    scale = (1.0, 1.0) if placement.passthrough else gdal_warp_scale(source, grid)
    extra = {"stage": "resample", "dataset": name}
    log.info(
        "%s: %s %d×%d %s → grid %d×%d; %d of %d windows to do",
        name,
        "copying (on the grid)"
        if placement.passthrough
        else f"resampling ({dataset.resampling.value}, scale {scale[0]:.6g}×{scale[1]:.6g})",
        source.width,
        source.height,
        source.crs.to_string(),
        grid.width,
        grid.height,
        len(todo),
        len(windows),
        extra=extra,
    )
    cache_mb = max(1, ctx.governor.gdal_cache_bytes() // _MIB)
    with (
        rasterio.Env(GDAL_CACHEMAX=cache_mb, GDAL_NUM_THREADS=config.threads),
        rasterio.open(source.path) as src,
    ):
        for window in todo:
            for piece in _subwindows(window, min(ctx.governor.window_size, config.window_size)):
                if store.is_complete(name, piece):
                    continue
                if placement.passthrough:
                    data = copy_window(source, dataset, placement, piece, src)
                else:
                    data = resample_window(
                        source, dataset, grid, piece, scale, config.threads, config.margin, src
                    )
                store.write_window(name, piece, data)
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
            node.advance()
