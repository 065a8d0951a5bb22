"""Edge-exact windowing: every cell of the grid equals GDAL's whole-raster warp.

Each case compares the WHOLE grid (nodata mask included) of geod's windowed
warp against two references: ``rasterio.warp.reproject`` of the whole source
onto the same grid (GDAL 3.10, the library geod runs) and the ``gdalwarp``
binary (Debian GDAL 3.6). The cases are the ones a single whole-grid kernel
scale got wrong: a small raster on a larger grid (GDAL splits the grid where
most of a chunk's source window is outside the source, and each chunk has its
own scale), a projected source narrower than one target cell, sum over
target edges that coincide with source edges, and chunks split by the warp
memory limit.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling as RioResampling
from rasterio.transform import from_origin
from rasterio.warp import reproject
from rasterio.windows import Window

from pipeline.config import DatasetConfig, GridConfig
from pipeline.grid import TargetGrid
from pipeline.resample import output_dtype, output_nodata, source_nodata, warp_plan
from pipeline.warpplan import WarpChunk, compute_source_window, pieces
from tests.test_resample import (
    PARITY,
    WARP_MEMORY,
    gdalwarp_reference,
    source_of,
    warp_in_windows,
)

#: 30 arc-seconds and 5 arc-minutes, in degrees.
ARCSEC_30 = 1 / 120
ARCMIN_5 = 1 / 12
#: A 30″ Int16 raster of 95 × 90 pixels, starting off the 5′ lines (3 and 7
#: source pixels past them), so all four edges cut 5′ cells partly.
SMALL_WEST, SMALL_NORTH = 10.0 + 3 * ARCSEC_30, 50.0 - 7 * ARCSEC_30
#: A grid much larger than that raster (360 × 240 cells): GDAL splits it.
REGION_5MIN = TargetGrid.from_config(GridConfig(resolution=ARCMIN_5, bounds=(0, 40, 30, 60)))
#: Around the raster only: one GDAL chunk, so the same scale as the old code.
LOCAL_5MIN = TargetGrid.from_config(GridConfig(resolution=ARCMIN_5, bounds=(9.5, 48.5, 11.5, 50.5)))
#: UTM 32N raster of 150 × 200 pixels at 30 m (4.5 km wide, a 5′ cell is 6 km),
#: centred on the 5′ cell centre (9.0417°E, 49.9583°N).
UTM_ORIGIN = (500739.0, 5536400.0)
UTM_SHAPE = (150, 200)
#: The 2 × 2 cells round that UTM raster (GDAL's average fills a cell from a
#: source narrower than it only where the source window is that cell's own).
UTM_LOCAL = TargetGrid.from_config(
    GridConfig(resolution=ARCMIN_5, bounds=(9.0, 50.0 - 2 * ARCMIN_5, 9.0 + 2 * ARCMIN_5, 50.0))
)
UTM_REGION = TargetGrid.from_config(GridConfig(resolution=ARCMIN_5, bounds=(5, 45, 15, 55)))
#: A warp memory limit small enough that GDAL splits a 360 × 180 grid by memory.
SMALL_WARP_MEMORY_MB = 1
WINDOWS = (64, 256)


def _random_raster(
    path: Path, crs: str, transform: rasterio.Affine, shape: tuple[int, int], dtype: str,
    nodata: float, seed: int,
) -> Path:  # fmt: skip
    """Uncorrelated values (every source pixel matters) with a few nodata pixels."""
    width, height = shape
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 1000, (height, width)).astype(dtype)
    data[rng.random((height, width)) < 0.02] = nodata
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=1, dtype=dtype, crs=crs,
        transform=transform, nodata=nodata,
    ) as dst:  # fmt: skip
        dst.write(data, 1)
    return path


@pytest.fixture(scope="module")
def small_int16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("edges")
    transform = from_origin(SMALL_WEST, SMALL_NORTH, ARCSEC_30, ARCSEC_30)
    return _random_raster(folder / "small.tif", "EPSG:4326", transform, (95, 90), "int16",
                          -32768, seed=3)  # fmt: skip


@pytest.fixture(scope="module")
def narrow_utm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("utm")
    transform = from_origin(*UTM_ORIGIN, 30.0, 30.0)
    return _random_raster(folder / "utm.tif", "EPSG:32632", transform, UTM_SHAPE, "float32",
                          -9999.0, seed=4)  # fmt: skip


def whole_reproject(
    path: Path, grid: TargetGrid, method: str, dtype: str, nodata: float, memory_mb: float = 0
) -> np.ndarray:
    """GDAL 3.10's own warp of the whole source onto the whole grid, in one call."""
    out = np.full((grid.height, grid.width), nodata, dtype=dtype)
    with rasterio.open(path) as src:
        reproject(
            rasterio.band(src, 1), out, dst_transform=grid.transform, dst_crs=grid.crs,
            dst_nodata=nodata, resampling=RioResampling[method], warp_mem_limit=memory_mb,
        )  # fmt: skip
    return out


def _missing(array: np.ndarray, nodata: float) -> np.ndarray:
    return np.isnan(array) if math.isnan(nodata) else array == nodata


def max_diff(ours: np.ndarray, reference: np.ndarray, nodata: float) -> tuple[int, float]:
    """(cells whose nodata mask differs, max abs diff over cells valid in both)."""
    mask_ours, mask_ref = _missing(ours, nodata), _missing(reference, nodata)
    both = ~mask_ours & ~mask_ref
    diff = np.abs(ours[both].astype("float64") - reference[both].astype("float64"))
    return int((mask_ours != mask_ref).sum()), float(diff.max()) if diff.size else 0.0


def assert_every_cell(
    ours: np.ndarray, reference: np.ndarray, nodata: float, min_valid: int, label: str
) -> None:
    """Identical nodata mask on the whole grid and max abs diff ≤ 1e-6 × range."""
    assert ours.shape == reference.shape and ours.dtype == reference.dtype
    mismatched, diff = max_diff(ours, reference, nodata)
    valid = ~_missing(reference, nodata)
    assert mismatched == 0, f"{label}: {mismatched} cells differ in the nodata mask"
    assert valid.sum() >= min_valid, f"{label}: only {valid.sum()} valid cells compared"
    values = reference[valid].astype("float64")
    bound = PARITY * max(values.max() - values.min(), 1.0)
    assert diff <= bound, f"{label}: max diff {diff} > {bound}"


def run_case(
    path: Path, grid: TargetGrid, method: str, tmp_path: Path, gdalwarp: str, min_valid: int,
    memory: int = WARP_MEMORY, window: int = 64,
) -> np.ndarray:  # fmt: skip
    """geod's windowed warp, checked on every cell against both whole-raster references."""
    source = source_of(path)
    dataset = DatasetConfig(name="layer", path=path, resampling=method)
    dtype = output_dtype(dataset.resampling, source.dtype)
    nodata = output_nodata(dtype, source_nodata(dataset, source))
    chunks = warp_plan(source, dataset, grid, memory)
    ours = warp_in_windows(source, dataset, grid, chunks, window)
    whole = whole_reproject(path, grid, method, dtype, nodata, memory / 1024**2)
    assert_every_cell(ours, whole, nodata, min_valid, "vs whole-source reproject")
    reference = gdalwarp_reference(
        gdalwarp, path, grid, method, dtype, nodata, tmp_path / "ref.tif",
        extra=("-wm", str(memory)),
    )  # fmt: skip
    assert_every_cell(ours, reference, nodata, min_valid, "vs gdalwarp")
    return ours


def single_scale_warp(path: Path, grid: TargetGrid, method: str) -> np.ndarray:
    """The previous windowing: one kernel scale, GDAL's for the whole grid in one piece."""
    source = source_of(path)
    dataset = DatasetConfig(name="layer", path=path, resampling=method)
    whole = Window(0, 0, grid.width, grid.height)
    facts = compute_source_window(source, grid.crs, grid.transform, whole, dataset.resampling)
    assert facts is not None
    return warp_in_windows(source, dataset, grid, [WarpChunk(whole, facts.scale)])


# --------------------------------------------------------------------------- small raster


#: 95 × 90 source pixels in 10 × 10 blocks: 10 × 10 cells touched, the
#: outermost ring of 36 only partly.
SMALL_CELLS = 100
#: Of those, the cells whose centre lies on the source (the first row's do not).
SMALL_CENTRED = 90


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize(
    "method", ["average", "sum", "bilinear", "cubic", "nearest", "mode", "max", "med", "q1"]
)
def test_small_int16_raster_on_a_larger_grid_equals_a_whole_raster_warp(
    small_int16: Path, tmp_path: Path, gdalwarp: str, method: str, window: int
) -> None:
    # 90 of the 100 touched cells: on this grid GDAL leaves the first row, whose
    # cell centres lie north of the source, empty with every method (on the
    # local grid, one chunk, its footprint methods fill it: see below). The
    # point-sampling methods lose a few more where a centre hits a nodata pixel.
    run_case(small_int16, REGION_5MIN, method, tmp_path, gdalwarp, min_valid=SMALL_CENTRED - 5,
             window=window)  # fmt: skip


def test_the_grid_is_split_and_one_scale_loses_partly_covered_edge_cells(small_int16: Path) -> None:
    """Why the chunk plan: GDAL warps the raster's neighbourhood with its own scale."""
    source = source_of(small_int16)
    dataset = DatasetConfig(name="layer", path=small_int16, resampling="average")
    chunks = warp_plan(source, dataset, REGION_5MIN, WARP_MEMORY)
    whole_grid = (REGION_5MIN.width, REGION_5MIN.height)
    assert all((c.window.width, c.window.height) != whole_grid for c in chunks)
    reference = whole_reproject(small_int16, REGION_5MIN, "average", "float32", math.nan)
    old = single_scale_warp(small_int16, REGION_5MIN, "average")
    lost = int((np.isnan(old) & ~np.isnan(reference)).sum())
    assert lost > 0, "a single whole-grid scale used to leave edge cells empty"
    assert int((~np.isnan(reference)).sum()) == SMALL_CENTRED


def test_local_grid_needs_no_split(small_int16: Path, tmp_path: Path, gdalwarp: str) -> None:
    source = source_of(small_int16)
    dataset = DatasetConfig(name="layer", path=small_int16, resampling="average")
    assert len(warp_plan(source, dataset, LOCAL_5MIN, WARP_MEMORY)) == 1
    run_case(small_int16, LOCAL_5MIN, "average", tmp_path, gdalwarp, min_valid=SMALL_CELLS)


# --------------------------------------------------------------------------- narrow UTM raster


@pytest.mark.parametrize("method", ["bilinear", "cubic", "nearest"])
def test_utm_raster_narrower_than_a_cell_on_a_regional_grid(
    narrow_utm: Path, tmp_path: Path, gdalwarp: str, method: str
) -> None:
    run_case(narrow_utm, UTM_REGION, method, tmp_path, gdalwarp, min_valid=1)


def test_utm_narrow_raster_bilinear_differed_with_one_scale(narrow_utm: Path) -> None:
    reference = whole_reproject(narrow_utm, UTM_REGION, "bilinear", "float32", math.nan)
    old = single_scale_warp(narrow_utm, UTM_REGION, "bilinear")
    valid = ~np.isnan(reference)
    assert valid.sum() == 1
    assert np.nanmax(np.abs(old[valid] - reference[valid])) > 1.0


@pytest.mark.parametrize("method", ["bilinear", "sum", "nearest"])
def test_utm_raster_narrower_than_a_cell_on_its_own_cells(
    narrow_utm: Path, tmp_path: Path, gdalwarp: str, method: str
) -> None:
    run_case(narrow_utm, UTM_LOCAL, method, tmp_path, gdalwarp, min_valid=1)


@pytest.mark.parametrize("method", ["average", "max", "mode"])
def test_utm_raster_inside_one_cell_footprint_methods(
    narrow_utm: Path, tmp_path: Path, gdalwarp: str, method: str
) -> None:
    """The raster lies wholly inside cell (0, 0). Where the two GDALs disagree:

    GDAL 3.10's whole-raster warp fills that cell from the pixels it contains
    (and geod equals it on every cell); gdalwarp 3.6's footprint methods leave
    a cell that contains the whole source empty, so against the binary the
    grid is compared everywhere except that one cell, which 3.6 has as nodata.
    """
    source = source_of(narrow_utm)
    dataset = DatasetConfig(name="layer", path=narrow_utm, resampling=method)
    chunks = warp_plan(source, dataset, UTM_LOCAL, WARP_MEMORY)
    ours = warp_in_windows(source, dataset, UTM_LOCAL, chunks)
    whole = whole_reproject(narrow_utm, UTM_LOCAL, method, "float32", math.nan)
    assert_every_cell(ours, whole, math.nan, 1, "vs whole-source reproject")
    reference = gdalwarp_reference(gdalwarp, narrow_utm, UTM_LOCAL, method, "float32",
                                   math.nan, tmp_path / "ref.tif")  # fmt: skip
    assert np.isnan(reference).all(), "gdalwarp 3.6 leaves the containing cell empty"
    assert np.isfinite(ours[0, 0]) and np.isnan(ours.ravel()[1:]).all()


# --------------------------------------------------------------------------- memory chunks


@pytest.mark.parametrize("method", ["bilinear", "average", "cubic"])
def test_memory_split_chunks_equal_a_whole_warp_with_the_same_limit(
    tmp_path: Path, gdalwarp: str, method: str
) -> None:
    """With -wm 1 MB GDAL splits a 1° world into chunks; each gets its own scale."""
    path = _random_raster(tmp_path / "geo.tif", "EPSG:4326", from_origin(-180, 90, 0.3, 0.3),
                          (1200, 600), "float32", -9999.0, seed=5)  # fmt: skip
    grid = TargetGrid.from_config(GridConfig(resolution=1.0))
    memory = SMALL_WARP_MEMORY_MB * 1024**2
    source = source_of(path)
    dataset = DatasetConfig(name="layer", path=path, resampling=method)
    assert len(warp_plan(source, dataset, grid, memory)) > 1
    run_case(path, grid, method, tmp_path, gdalwarp, min_valid=10_000, memory=memory)


# --------------------------------------------------------------------------- poles and drift

#: A cell-centred 5′ band of the globe: centres from 90°N to 90°S, so its
#: edges reach ±90.0417°, and a pixel size drifted by 1e-6 from 1/12°.
DRIFTED_STEP = ARCMIN_5 * (1 + 1e-6)
POLAR_BAND = TargetGrid.from_config(GridConfig(resolution=ARCMIN_5, bounds=(-180, -90, -120, 90)))


@pytest.fixture(scope="module")
def past_the_poles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("poles")
    transform = from_origin(-180 - DRIFTED_STEP / 2, 90 + DRIFTED_STEP / 2, DRIFTED_STEP,
                            DRIFTED_STEP)  # fmt: skip
    return _random_raster(folder / "poles.tif", "EPSG:4326", transform, (720, 2161), "float32",
                          -9999.0, seed=6)  # fmt: skip


@pytest.mark.parametrize("method", ["average", "bilinear", "nearest"])
def test_extent_past_the_poles_with_drifted_step_resamples_on_every_cell(
    past_the_poles: Path, tmp_path: Path, gdalwarp: str, method: str
) -> None:
    source = source_of(past_the_poles)
    assert source.bounds[3] > 90.04 and source.bounds[1] < -90.04
    most = int(0.95 * POLAR_BAND.width * POLAR_BAND.height)  # 2 % of pixels are nodata
    ours = run_case(past_the_poles, POLAR_BAND, method, tmp_path, gdalwarp, min_valid=most,
                    window=256)  # fmt: skip
    assert np.isfinite(ours[0]).mean() > 0.9 and np.isfinite(ours[-1]).mean() > 0.9


# --------------------------------------------------------------------------- why the grid transform


def _reproject_pieces(path: Path, grid: TargetGrid, method: str, memory: int) -> np.ndarray:
    """Each piece warped onto its own window transform (not the grid's), chunk scales kept."""
    source = source_of(path)
    dataset = DatasetConfig(name="layer", path=path, resampling=method)
    chunks = warp_plan(source, dataset, grid, memory)
    out = np.full((grid.height, grid.width), np.nan, "float32")
    with rasterio.open(path) as src:
        for window in grid.windows(64):
            for piece in pieces(window, chunks):
                part = np.full((int(piece.window.height), int(piece.window.width)), np.nan,
                               "float32")  # fmt: skip
                reproject(rasterio.band(src, 1), part, dst_nodata=np.nan,
                          dst_transform=grid.window_transform(piece.window), dst_crs=grid.crs,
                          resampling=RioResampling[method], XSCALE=repr(piece.scale[0]),
                          YSCALE=repr(piece.scale[1]), SOURCE_EXTRA=2)  # fmt: skip
                out[piece.window.toslices()] = part
    return out


def test_window_transforms_instead_of_the_grids_change_sum_at_coinciding_edges(
    small_int16: Path,
) -> None:
    whole = whole_reproject(small_int16, REGION_5MIN, "sum", "float32", math.nan)
    shifted = _reproject_pieces(small_int16, REGION_5MIN, "sum", WARP_MEMORY)
    assert max_diff(shifted, whole, math.nan)[1] >= 1.0, "a whole source pixel moved"
