"""The separable ``average`` and ``bilinear`` equal GDAL's kernels on every cell they compute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling as RioResampling
from rasterio.transform import Affine, from_origin
from rasterio.warp import reproject

from pipeline.config import DatasetConfig, GridConfig, Resampling
from pipeline.grid import TargetGrid
from pipeline.resample import ChunkWarper, warp_plan
from pipeline.separable import SeparableKernel, applies, pixel_masks
from pipeline.warpplan import pieces
from tests.test_resample import (
    GLOBAL_1DEG,
    WARP_MEMORY,
    assert_parity,
    gdalwarp_reference,
    make_config,
    make_context,
    make_raster,
    read_layer,
    run_dataset,
    source_of,
)

#: Least share of the cells with data the separable kernels must compute (bilinear leaves
#: windows whose kernel reaches a source edge to GDAL).
MIN_COMPUTED = 0.5
#: Sources as users have them, each warped onto the global 1° grid (name: transform, size).
SOURCES = {
    # 0.4° global: 2.5 pixels a cell, edges falling inside pixels.
    "global_2_5": (from_origin(-180, 90, 0.4, 0.4), (900, 450)),
    # A partial source, odd origin and pixel size: cells part covered at every edge.
    "partial_odd": (from_origin(-150.3, 40.7, 0.37, 0.29), (450, 400)),
    # Drifted pixel size, extent past ±90°: clipped by the grid.
    "drifted_past_poles": (from_origin(-178.0, 92.5, 0.3600001, 0.3700002), (990, 500)),
    # South-up rows (as NetCDF stores them): the row axis runs the other way.
    "south_up": (Affine(0.45, 0, -120.0, 0, 0.45, -60.0), (400, 260)),
    # Coarser than the grid: each cell inside one pixel or across two.
    "coarser_2_5deg": (from_origin(-180, 90, 2.5, 2.5), (144, 72)),
}


def _source(folder: Path, name: str, dtype: str = "float32", nodata: float | None = -9999) -> Path:
    transform, (width, height) = SOURCES[name]
    return make_raster(
        folder / f"{name}_{dtype}.tif", "EPSG:4326", transform, width, height, dtype, nodata
    )


#: Window side for computing the grid piece by piece, as the stage does.
WINDOW = 32
#: Methods computed by separable weights.
METHODS = ["average", "bilinear"]


def _ours(path: Path, grid: TargetGrid, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The grid window by window, piece by piece at GDAL's chunk scales, each piece from the
    whole source as its crop; which cells were computed (bilinear leaves edges to GDAL), and
    which GDAL's chunks cover (GDAL leaves the others empty)."""
    source = source_of(path)
    dataset = DatasetConfig(name="layer", path=path, resampling=Resampling(method))
    chunks = warp_plan(source, dataset, grid, WARP_MEMORY)
    out = np.full((grid.height, grid.width), np.nan, "float32")
    computed = np.zeros(out.shape, bool)
    covered = np.zeros(out.shape, bool)
    with rasterio.open(path) as src:
        data = src.read(1)
        valid, tainted = pixel_masks(data, src.nodata, Resampling(method))
        for window in grid.windows(WINDOW):
            for piece in pieces(window, chunks):
                at = piece.window
                covered[at.toslices()] = True
                kernel = SeparableKernel.over(
                    Resampling(method), src.transform, (src.height, src.width),
                    (0, 0, *data.shape), grid.transform,
                    (int(at.row_off), int(at.col_off), int(at.height), int(at.width)),
                    piece.scale,
                )  # fmt: skip
                if kernel is not None:
                    out[at.toslices()] = kernel.apply(data, valid, "float32", np.nan, tainted)
                    computed[at.toslices()] = kernel.computed()
    return out, computed, covered


def _compare(
    ours: tuple[np.ndarray, np.ndarray, np.ndarray], reference: np.ndarray, method: str
) -> None:
    """Every computed cell as the reference's; average computes every covered cell."""
    values, computed, covered = ours
    if method == "average":
        assert np.array_equal(computed, covered)
    with_data = ~np.isnan(reference)
    assert (computed & with_data).sum() > MIN_COMPUTED * with_data.sum()
    assert_parity(np.where(computed, values, np.nan), np.where(computed, reference, np.nan), np.nan)


def _gdal_whole(path: Path, grid: TargetGrid, method: str) -> np.ndarray:
    """GDAL 3.10's warp (rasterio's) of the whole source onto the same grid."""
    out = np.full((grid.height, grid.width), np.nan, "float32")
    with rasterio.open(path) as src:
        reproject(
            rasterio.band(src, 1), out, dst_transform=grid.transform, dst_crs=grid.crs,
            dst_nodata=np.nan, resampling=RioResampling[method],
        )  # fmt: skip
    return out


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_cell_equals_the_whole_source_warp(tmp_path: Path, name: str, method: str) -> None:
    path = _source(tmp_path, name)
    _compare(_ours(path, GLOBAL_1DEG, method), _gdal_whole(path, GLOBAL_1DEG, method), method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["global_2_5", "partial_odd", "south_up"])
def test_every_cell_equals_the_gdalwarp_binary(
    tmp_path: Path, gdalwarp: str, name: str, method: str
) -> None:
    path = _source(tmp_path, name)
    reference = gdalwarp_reference(
        gdalwarp, path, GLOBAL_1DEG, method, "float32", np.nan, tmp_path / "ref.tif"
    )
    _compare(_ours(path, GLOBAL_1DEG, method), reference, method)


@pytest.mark.parametrize("method", METHODS)
def test_packed_int16_and_nan_pixels_count_as_gdal_counts_them(tmp_path: Path, method: str) -> None:
    """int16 resampled into float32; NaN pixels in a float source with a numeric nodata."""
    packed = _source(tmp_path, "global_2_5", dtype="int16")
    _compare(_ours(packed, GLOBAL_1DEG, method), _gdal_whole(packed, GLOBAL_1DEG, method), method)
    path = _source(tmp_path, "global_2_5")
    with rasterio.open(path, "r+") as dst:
        data = dst.read(1)
        data[100:140, 300:420] = np.nan
        dst.write(data, 1)
    _compare(_ours(path, GLOBAL_1DEG, method), _gdal_whole(path, GLOBAL_1DEG, method), method)


def test_a_crop_too_small_for_the_window_is_refused() -> None:
    transform, (width, height) = SOURCES["global_2_5"]
    grid, method = GLOBAL_1DEG, Resampling.average
    whole, short = (
        SeparableKernel.over(
            method,
            transform,
            (height, width),
            (0, 0, rows, rows),
            grid.transform,
            (0, 0, 10, 10),
            (0.4, 0.4),
        )
        for rows in (height, 20)
    )
    assert whole is not None and short is None


def test_applies_to_average_and_bilinear_within_one_crs_to_float_outputs() -> None:
    crs, t = GLOBAL_1DEG.crs, GLOBAL_1DEG.transform
    assert applies(Resampling.average, crs, crs, t, t, "float32")
    assert applies(Resampling.bilinear, crs, crs, t, t, "float64")
    assert not applies(Resampling.cubic, crs, crs, t, t, "float32")
    assert not applies(Resampling.average, crs, crs, t, t, "int16")
    equal_area = rasterio.crs.CRS.from_epsg(6933)
    assert not applies(Resampling.average, equal_area, crs, t, t, "float32")
    rotated = t @ Affine.rotation(1.0)
    assert not applies(Resampling.average, crs, crs, rotated, t, "float32")


@pytest.mark.parametrize(("method", "read_threads"), [("average", 0), ("bilinear", 1)])
@pytest.mark.parametrize("name", ["global_2_5", "partial_odd"])
def test_the_stage_takes_the_separable_path_and_equals_gdalwarp(
    tmp_path: Path, gdalwarp: str, name: str, method: str, read_threads: int
) -> None:
    """Window by window through the stage (read ahead or not; bilinear's source edges
    warped by GDAL), every cell as the gdalwarp binary's (the whole-source warp's for a
    partial source: see pipeline/resample.py on gdalwarp 3.6's edges)."""
    grid = TargetGrid.from_config(GridConfig(resolution=0.5))
    path = _source(tmp_path, name)
    dataset = DatasetConfig(name="layer", path=path, resampling=Resampling(method))
    with rasterio.open(path) as src, ChunkWarper(source_of(path), dataset, grid, 1, 2, src) as w:
        assert w.separable
    config = make_config(
        tmp_path, [{"name": "layer", "path": str(path), "resampling": method}],
        {"resolution": 0.5}, window=64, threads=1,
    )  # fmt: skip
    config.resampling.read_threads = read_threads
    ctx, _ = make_context(config)
    ours = read_layer(run_dataset(ctx, tmp_path / "layers.zarr", grid, "layer"), "layer")
    if name == "partial_odd":  # gdalwarp 3.6 extends a source past its top and left edges
        reference = _gdal_whole(path, grid, method)
    else:
        reference = gdalwarp_reference(
            gdalwarp, path, grid, method, "float32", np.nan, tmp_path / "ref.tif"
        )
    assert_parity(ours, reference, np.nan)
