"""Which kernel scale GDAL's whole-raster warp uses on each part of the grid.

A warp kernel's footprint on the source depends on its scale (target pixels
per source pixel). GDAL does not warp a large destination in one go: its
``GDALWarpOperation::CollectChunkList`` halves the destination (along its
longer side) while the buffers would exceed the warp memory limit, or while
less than half of the source window it computed is actually inside the source
(the "fill ratio" heuristic, for destinations over 100 pixels on a side). Each
resulting chunk is warped with the scale computed from *its own* source
window. So the scale — and with it bilinear/cubic kernels and the footprint
of edge pixels — varies over the grid of a single ``gdalwarp`` run.

A windowed warp that pins one scale for the whole grid therefore differs from
GDAL's whole-raster warp wherever GDAL split: a 95 × 90 raster on a 360 × 240
grid was warped with scale 3.8 (the whole grid over the clamped source) where
GDAL's chunk around it uses 0.1, and 18 partly covered edge cells came out
empty. :func:`plan_chunks` replays GDAL's chunking from headers alone
(``ComputeSourceWindow`` on 21 samples per edge, its grid fallback, the
memory estimate and both split rules) and the resampler warps each window
piecewise, one piece per chunk it overlaps, with that chunk's scale.

GDAL also wraps longitudes round a geographic source: it gives the source
a CENTER_LONG (the middle of its corners' longitudes, unless they span more
than a full turn) and its coordinate transformation moves every longitude it
returns into the half-turn either side of it — even when source and grid
share a CRS. A grid longitude east of that range lands west of the source, so
a chunk reaching past it gets a source window starting at column 0 and a
different scale (a 259°-wide source from 150.3°W: the grid east of 159.2°E is
sampled at 200.8°W…180°W, the chunk over 90°E…180°E reads the whole source
width at scale 1.76, not 0.37). :func:`center_longitude` and the ``wrap``
option of :func:`to_source_pixels` replay that.

What is not replayed: GDAL samples through its approximate transformer (max
error 0.125 px) while this uses exact PROJ transforms, so for reprojected
sources the chunk scales can differ in the last digits; and
``ComputeSourceWindowStartingFromSource`` (a forward-transform extension used
only with grid sampling) is not emulated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.warp import transform
from rasterio.windows import Window

from pipeline.config import Resampling
from pipeline.source import SourceInfo

#: Sample points per edge GDAL uses to find a warp's source window (SAMPLE_STEPS).
GDAL_SAMPLE_STEPS = 21
#: GDAL snaps source-window edges to integers when closer than this (pixels).
GDAL_ROUND_EPSILON = 1e-6
#: GDAL's kernel radius in source pixels at scale 1 (GWKGetFilterRadius); 0 otherwise.
FILTER_RADIUS = {Resampling.bilinear: 1, Resampling.cubic: 2}
#: Below this scale GDAL widens the kernel radius by 1/scale.
RADIUS_SCALE_THRESHOLD = 0.95
#: Smallest scale GDAL uses (guards against overflow on crazy transforms).
MIN_SCALE = 1e-3
#: A chunk whose fill ratio is below this is split (GDAL's #3120 heuristic) ...
FILL_RATIO_SPLIT = 0.5
#: ... if it is wider or taller than this many destination pixels.
FILL_RATIO_MIN_SIZE = 100
#: A chunk over the memory limit is split only while larger than this on a side.
MEMORY_MIN_SIZE = 2
#: Source coordinates this far outside the raster make GDAL distrust the
#: transform and retry with CHECK_WITH_INVERT_PROJ (round-trip checked points).
BOGUS_SOURCE_PIXELS = 1e6
#: Fewer than this many transformable samples and GDAL gives up on a window.
MIN_GOOD_SAMPLES = 5
#: Round-trip tolerance of the CHECK_WITH_INVERT_PROJ retry, in grid CRS units
#: (PROJ's defaults: 0.1° geographic, 10 km projected).
INVERT_CHECK_DEGREES = 0.1
INVERT_CHECK_METRES = 10_000.0
#: GDAL's special points: the poles, a hair short of ±90° (PROJ round-trips that).
POLE_LATITUDE = 89.9999
#: The geographic CRS the poles are given in (made when needed: a CRS made at import
#: opens PROJ's database before the worker forks its catalog child, which then hangs).
LONLAT_EPSG = 4326
#: GDAL takes a computed downsampling scale as ``1 / n`` when ``1 / scale`` is this close
#: to a whole ``n`` (a pinned XSCALE/YSCALE is used as given).
SCALE_SNAP = 0.05
#: Degrees in a turn: a geographic source spanning more gets no CENTER_LONG,
#: and GDAL wraps longitudes to within half of it from the centre.
FULL_TURN_DEGREES = 360.0


@dataclass(frozen=True)
class SourceWindow:
    """GDAL's source window for one destination region and what follows from it."""

    col_off: int
    row_off: int
    width: int
    height: int
    scale: tuple[float, float]
    fill_ratio: float


@dataclass(frozen=True)
class WarpChunk:
    """A destination region GDAL warps in one go, and the kernel scale it uses there."""

    window: Window
    scale: tuple[float, float]


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
    """GDAL's fallback samples over the whole region (it uses the width for both half-pixel
    ratios, and so does this)."""
    step = 1.0 / (GDAL_SAMPLE_STEPS - 1)
    inner = [i * step for i in range(GDAL_SAMPLE_STEPS)]
    ratios = np.asarray([0.5 / width, *inner, 1 - 0.5 / width])
    cols, rows = np.meshgrid(ratios * width, ratios * height)
    return cols.ravel(), rows.ravel()


def _transform_points(
    src_crs: object, dst_crs: object, xs: np.ndarray, ys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """PROJ transform of many points where each failing point becomes NaN.

    ``rasterio.warp.transform`` raises for the whole batch when one point is
    outside the projection's domain; GDAL's warper just marks that point failed.
    The batch is halved until the failures are isolated.
    """
    try:
        with np.errstate(all="ignore"):
            tx, ty = transform(src_crs, dst_crs, xs, ys)
        return np.asarray(tx, float), np.asarray(ty, float)
    except CPLE_BaseError:
        if xs.size == 1:
            return np.full(1, np.nan), np.full(1, np.nan)
    half = xs.size // 2
    x0, y0 = _transform_points(src_crs, dst_crs, xs[:half], ys[:half])
    x1, y1 = _transform_points(src_crs, dst_crs, xs[half:], ys[half:])
    return np.concatenate([x0, x1]), np.concatenate([y0, y1])


def to_source_pixels(
    source: SourceInfo,
    grid_crs: object,
    grid_transform: object,
    cols: np.ndarray,
    rows: np.ndarray,
    check_inverse: bool = False,
    wrap: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Grid pixel coordinates → source pixel coordinates (NaN where not transformable).

    With ``check_inverse`` a point also fails when transforming it back misses
    it by more than PROJ's CHECK_WITH_INVERT_PROJ tolerance. With ``wrap``
    source longitudes are wrapped round the source's :func:`center_longitude`
    as GDAL's transformer does (after the round-trip check, as OGR does).
    """
    xs, ys = grid_transform @ (cols, rows)  # type: ignore[operator]
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    if source.crs != grid_crs:
        sx, sy = _transform_points(grid_crs, source.crs, np.ravel(xs), np.ravel(ys))
        if check_inverse:
            bx, by = _transform_points(source.crs, grid_crs, sx, sy)
            geographic = getattr(grid_crs, "is_geographic", False)
            tolerance = INVERT_CHECK_DEGREES if geographic else INVERT_CHECK_METRES
            with np.errstate(invalid="ignore"):
                far = ~(np.abs(bx - xs) <= tolerance) | ~(np.abs(by - ys) <= tolerance)
            sx[far] = np.nan
        xs, ys = sx, sy
    center = center_longitude(source) if wrap else None
    if center is not None:
        xs = wrap_longitudes(xs, center)
    px, py = ~source.transform @ (xs, ys)
    px, py = np.asarray(px, float), np.asarray(py, float)
    bad = ~(np.isfinite(px) & np.isfinite(py))
    px[bad] = np.nan
    py[bad] = np.nan
    return px, py


def center_longitude(source: SourceInfo) -> float | None:
    """The CENTER_LONG GDAL's transformer gives a geographic source (``InsertCenterLong``).

    The middle of the four corners' longitudes, printed with ``%g`` (six
    significant digits) as GDAL does before parsing it back; None for a
    projected source or one spanning more than a full turn.
    """
    if not getattr(source.crs, "is_geographic", False):
        return None
    t = source.transform
    corners = [
        t.c + col * t.a + row * t.b for col in (0, source.width) for row in (0, source.height)
    ]
    west, east = min(corners), max(corners)
    if east - west > FULL_TURN_DEGREES:
        return None
    return float(f"{(west + east) / 2.0:g}")


def wrap_longitudes(longitudes: np.ndarray, center: float) -> np.ndarray:
    """OGR's target wrap: one turn added west of ``center - 180``, or taken east of ``+ 180``."""
    half = FULL_TURN_DEGREES / 2.0
    with np.errstate(invalid="ignore"):
        west = longitudes < center - half
        east = ~west & (longitudes > center + half)
    return longitudes + FULL_TURN_DEGREES * west - FULL_TURN_DEGREES * east


def snap_scale(scale: float) -> float:
    """A chunk's kernel scale as GDAL uses it: below 1, ``1 / n`` when ``1 / scale`` is within
    :data:`SCALE_SNAP` of a whole ``n``.

    GDAL snaps the scale it computes for a chunk, but takes a pinned XSCALE or
    YSCALE as given; so the plan pins the snapped value (a 356°-wide source on
    a 1° grid: 360/712 px gives 0.5056, GDAL warps with 0.5, and bilinear and
    cubic moved by up to 0.7 % of the range on most cells with the raw value).
    """
    if scale >= 1:
        return scale
    whole = math.floor(1 / scale + 0.5)
    return 1 / whole if abs(1 / scale - whole) < SCALE_SNAP else scale


def _snap(value: float) -> float:
    rounded = round(value)
    return float(rounded) if abs(rounded - value) < GDAL_ROUND_EPSILON else value


@dataclass(frozen=True)
class SourceProbe:
    """What GDAL's warp operation fixes once per warp, before it computes any source window.

    ``grid_sampling``: a pole lands on the destination raster (GDAL's
    ``aDstXYSpecialPoints``: lon 0°, lat ±89.9999°), so every region is sampled
    on a grid instead of along its edges. ``forward``: GDAL's 23 × 23 grid of
    source pixels transformed onto the destination (source col, row, then
    destination col, row; NaN where PROJ fails); a grid-sampled window is
    widened to every one of them that lands in its region
    (``ComputeSourceWindowStartingFromSource``). Where a global grid holds the
    poles this is what makes a source ending a pixel short of the antimeridian
    keep its full width, although its wrapped edge samples land west of it.
    """

    grid_sampling: bool
    forward: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

    @classmethod
    def of(
        cls,
        source: SourceInfo,
        grid_crs: object,
        grid_transform: object,
        grid_size: tuple[int, int],
    ) -> SourceProbe:
        poles_x, poles_y = np.zeros(2), np.asarray([-POLE_LATITUDE, POLE_LATITUDE])
        if not getattr(grid_crs, "is_geographic", False):
            lonlat = CRS.from_epsg(LONLAT_EPSG)
            poles_x, poles_y = _transform_points(lonlat, grid_crs, poles_x, poles_y)
        cols, rows = ~grid_transform @ (poles_x, poles_y)  # type: ignore[operator]
        cols, rows = np.asarray(cols, float), np.asarray(rows, float)
        with np.errstate(invalid="ignore"):
            inside = (cols >= 0) & (cols <= grid_size[0]) & (rows >= 0) & (rows <= grid_size[1])
        width, height = source.width, source.height
        ratio_x, ratio_y = _source_ratios(width), _source_ratios(height)
        src_cols, src_rows = np.meshgrid(ratio_x * width, ratio_y * height)
        src_cols, src_rows = src_cols.ravel(), src_rows.ravel()
        xs, ys = source.transform @ (src_cols, src_rows)
        xs, ys = np.asarray(xs, float), np.asarray(ys, float)
        if source.crs != grid_crs:
            xs, ys = _transform_points(source.crs, grid_crs, xs, ys)
        dst_cols, dst_rows = ~grid_transform @ (xs, ys)  # type: ignore[operator]
        forward = (src_cols, src_rows, np.asarray(dst_cols, float), np.asarray(dst_rows, float))
        return cls(bool(inside.any()), forward)

    def widen(
        self, bounds: tuple[float, float, float, float], region: Window
    ) -> tuple[float, float, float, float]:
        """``bounds`` grown to the forward samples that land in ``region`` (edges included)."""
        src_cols, src_rows, dst_cols, dst_rows = self.forward
        col0, row0 = int(region.col_off), int(region.row_off)
        with np.errstate(invalid="ignore"):
            hit = (
                (dst_cols >= col0)
                & (dst_cols <= col0 + int(region.width))
                & (dst_rows >= row0)
                & (dst_rows <= row0 + int(region.height))
            )
        if not hit.any():
            return bounds
        return (
            min(bounds[0], float(src_cols[hit].min())),
            min(bounds[1], float(src_rows[hit].min())),
            max(bounds[2], float(src_cols[hit].max())),
            max(bounds[3], float(src_rows[hit].max())),
        )


def _source_ratios(size: int) -> np.ndarray:
    """GDAL's ratios of the source grid: half a pixel in from each edge, and 21 steps."""
    step = 1.0 / (GDAL_SAMPLE_STEPS - 1)
    inner = [i * step for i in range(GDAL_SAMPLE_STEPS)]
    return np.asarray([0.5 / size, *inner, 1 - 0.5 / size])


def _sample_bounds(
    source: SourceInfo,
    grid_crs: object,
    grid_transform: object,
    region: Window,
    probe: SourceProbe | None,
) -> tuple[float, float, float, float] | None:
    """min/max source x and y of GDAL's samples of ``region``; None if it gives up."""
    col0, row0 = int(region.col_off), int(region.row_off)
    width, height = int(region.width), int(region.height)
    grid_first = probe is not None and probe.grid_sampling
    samplers = (_grid_samples,) if grid_first else (_edge_samples, _grid_samples)
    for check_inverse in (False, True):
        for sampler in samplers:
            cols, rows = sampler(width, height)
            px, py = to_source_pixels(
                source, grid_crs, grid_transform, cols + col0, rows + row0, check_inverse, wrap=True
            )
            failed = int(np.isnan(px).sum())
            if failed and sampler is _edge_samples:
                continue  # GDAL retries with a grid when any edge point fails
            if failed > px.size - MIN_GOOD_SAMPLES:
                return None
            bounds = (
                float(np.nanmin(px)),
                float(np.nanmin(py)),
                float(np.nanmax(px)),
                float(np.nanmax(py)),
            )
            bogus = not failed and (
                bounds[0] < -BOGUS_SOURCE_PIXELS
                or bounds[1] < -BOGUS_SOURCE_PIXELS
                or bounds[2] > source.width + BOGUS_SOURCE_PIXELS
                or bounds[3] > source.height + BOGUS_SOURCE_PIXELS
            )
            if bogus and not check_inverse:
                break  # retry everything with CHECK_WITH_INVERT_PROJ
            if sampler is _grid_samples and probe is not None:
                bounds = probe.widen(bounds, region)
            return bounds
    return None


def compute_source_window(
    source: SourceInfo,
    grid_crs: object,
    grid_transform: object,
    region: Window,
    method: Resampling,
    source_extra: int = 0,
    probe: SourceProbe | None = None,
) -> SourceWindow | None:
    """``GDALWarpOperation::ComputeSourceWindow`` for a destination region; None if empty.

    ``probe`` holds what GDAL fixes per warp (:class:`SourceProbe`); without it
    regions are sampled along their edges and grid samples are not widened.
    """
    bounds = _sample_bounds(source, grid_crs, grid_transform, region, probe)
    if bounds is None:
        return None
    min_x, min_y, max_x, max_y = (_snap(v) for v in bounds)
    if min_x > source.width or max_x < 0 or min_y > source.height or max_y < 0:
        return None
    radius = FILTER_RADIUS.get(method, 0)
    sizes = (int(region.width), int(region.height))
    raw_scales = [
        max(MIN_SCALE, size / (high - low)) if high > low else math.inf
        for size, low, high in ((sizes[0], min_x, max_x), (sizes[1], min_y, max_y))
    ]
    radii = [
        (math.ceil(radius / s) if s < RADIUS_SCALE_THRESHOLD else radius) + source_extra
        for s in raw_scales
    ]
    offsets, lengths, scales = [], [], []
    for low, high, raster, rad, size in (
        (min_x, max_x, source.width, radii[0], sizes[0]),
        (min_y, max_y, source.height, radii[1], sizes[1]),
    ):
        low_clamped = int(max(0.0, low))
        high_clamped = int(min(math.ceil(high), raster))
        raw = max(0.0, min(float(raster - low_clamped), high - low))
        if high_clamped - low_clamped > 0.9 * raster:
            off, length = 0, raster
        else:
            off = max(0, min(low_clamped - rad, raster))
            length = max(0, min(raster - off, high_clamped - off + rad))
        offsets.append(off)
        lengths.append(length)
        scales.append(snap_scale(size / raw) if raw > 0 else 1.0)
    fill = (lengths[0] * lengths[1]) / max(
        1.0, (max_x - min_x + 2 * radii[0]) * (max_y - min_y + 2 * radii[1])
    )
    return SourceWindow(
        offsets[0], offsets[1], lengths[0], lengths[1], (scales[0], scales[1]), fill
    )


@dataclass(frozen=True)
class PixelCost:
    """Bits per source and per destination pixel in GDAL's memory estimate."""

    source_bits: int
    destination_bits: int

    @classmethod
    def of(cls, source_dtype: str, output_dtype: str, source_has_nodata: bool) -> PixelCost:
        """Working type (GDAL's union of both types) plus one mask bit per validity mask."""
        word = np.promote_types(np.dtype(source_dtype), np.dtype(output_dtype)).itemsize * 8
        return cls(word + (1 if source_has_nodata else 0), word + 1)


def plan_chunks(
    source: SourceInfo,
    grid_crs: object,
    grid_transform: object,
    grid_size: tuple[int, int],
    method: Resampling,
    cost: PixelCost,
    memory_limit: float,
) -> list[WarpChunk]:
    """GDAL's chunk list for a warp of the whole grid (``CollectChunkListInternal``).

    Chunks without any source pixel are left out: GDAL writes only nodata there,
    whatever the scale.
    """
    chunks: list[WarpChunk] = []
    pending = [Window(0, 0, grid_size[0], grid_size[1])]
    probe = SourceProbe.of(source, grid_crs, grid_transform, grid_size)
    while pending:
        region = pending.pop()
        facts = compute_source_window(source, grid_crs, grid_transform, region, method, probe=probe)
        if facts is None or facts.width == 0 or facts.height == 0:
            continue
        width, height = int(region.width), int(region.height)
        memory = (
            cost.source_bits * facts.width * facts.height + cost.destination_bits * width * height
        ) / 8.0
        too_big = memory > memory_limit and max(width, height) > MEMORY_MIN_SIZE
        too_sparse = (
            0 < facts.fill_ratio < FILL_RATIO_SPLIT and max(width, height) > FILL_RATIO_MIN_SIZE
        )
        if not (too_big or too_sparse):
            chunks.append(WarpChunk(region, facts.scale))
            continue
        col, row = int(region.col_off), int(region.row_off)
        if width > height:  # GDAL halves the longer side (rows when square)
            half = width // 2
            pending.append(Window(col, row, half, height))
            pending.append(Window(col + half, row, width - half, height))
        else:
            half = height // 2
            pending.append(Window(col, row, width, half))
            pending.append(Window(col, row + half, width, height - half))
    return chunks


def pieces(window: Window, chunks: list[WarpChunk]) -> list[WarpChunk]:
    """The parts of ``window`` covered by chunks, each with its chunk's scale (window-relative
    offsets stay grid offsets).

    A window whose chunks all use one scale and together cover it is one piece:
    the kernel then depends on the scale alone, not on where GDAL cut its chunks,
    and every extra piece is another source read (on a 64 MiB warp memory a
    1024-cell window often straddles two or three chunks of equal scale, which
    doubled the resample stage's time).
    """
    col0, row0 = int(window.col_off), int(window.row_off)
    col1, row1 = col0 + int(window.width), row0 + int(window.height)
    out = []
    for chunk in chunks:
        c0 = max(col0, int(chunk.window.col_off))
        r0 = max(row0, int(chunk.window.row_off))
        c1 = min(col1, int(chunk.window.col_off) + int(chunk.window.width))
        r1 = min(row1, int(chunk.window.row_off) + int(chunk.window.height))
        if c0 < c1 and r0 < r1:
            out.append(WarpChunk(Window(c0, r0, c1 - c0, r1 - r0), chunk.scale))
    covered = sum(int(piece.window.width) * int(piece.window.height) for piece in out)
    if len({piece.scale for piece in out}) == 1 and covered == (col1 - col0) * (row1 - row0):
        return [WarpChunk(window, out[0].scale)]
    return out
