"""Block reduction of integer-factor aligned sources equals GDAL's warp on every cell."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling as RioResampling
from rasterio.transform import from_origin
from rasterio.warp import reproject
from rasterio.windows import Window

from pipeline.blockreduce import MODE_MAX_PIXELS, alignment, is_exact, reduce_window
from pipeline.config import DatasetConfig, GridConfig, Resampling
from pipeline.grid import TargetGrid
from pipeline.resample import output_dtype, output_nodata
from tests.test_resample import (
    GLOBAL_1DEG,
    assert_parity,
    gdalwarp_reference,
    make_config,
    make_context,
    make_raster,
    read_layer,
    run_dataset,
    source_of,
    warp_in_windows,
)

#: 0.1° source pixels: ten to a 1° grid cell each way.
STEP = 0.1
METHODS = ["average", "sum", "min", "max"]


def _aligned(folder: Path, west: float, north: float, width: int, height: int, dtype: str) -> Path:
    nodata = -9999 if dtype != "uint8" else 255
    return make_raster(
        folder / f"aligned_{dtype}_{width}x{height}.tif", "EPSG:4326",
        from_origin(west, north, STEP, STEP), width, height, dtype=dtype, nodata=nodata,
    )  # fmt: skip


@pytest.fixture(scope="module")
def aligned(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``_aligned`` with the module's arguments, each raster written once (about a second
    for a global one): tests only read sources, their stores and references go to their
    own ``tmp_path``."""
    made: dict[tuple[float, float, int, int, str], Path] = {}

    def get(west: float, north: float, width: int, height: int, dtype: str) -> Path:
        key = (west, north, width, height, dtype)
        if key not in made:  # a folder each: the file name does not say where it lies
            made[key] = _aligned(tmp_path_factory.mktemp("aligned"), *key)
        return made[key]

    return get


def _run(tmp_path: Path, path: Path, method: str) -> np.ndarray:
    config = make_config(
        tmp_path, [{"name": "layer", "path": str(path), "resampling": method}],
        {"resolution": 1.0}, window=64, threads=2,
    )  # fmt: skip
    ctx, _ = make_context(config)
    return read_layer(run_dataset(ctx, tmp_path / "layers.zarr", GLOBAL_1DEG, "layer"), "layer")


@pytest.mark.parametrize("method", ["average", "min", "max"])
@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_global_aligned_source_equals_the_gdalwarp_binary(
    tmp_path: Path, gdalwarp: str, method: str, dtype: str, aligned: Callable[..., Path]
) -> None:
    path = aligned(-180, 90, 3600, 1800, dtype)
    source = source_of(path)
    assert alignment(source, GLOBAL_1DEG, Resampling(method)) is not None
    ours = _run(tmp_path, path, method)
    out_dtype = output_dtype(Resampling(method), dtype)
    nodata = output_nodata(out_dtype, source.nodata)
    reference = gdalwarp_reference(gdalwarp, path, GLOBAL_1DEG, method, out_dtype, nodata,
                                   tmp_path / "ref.tif")  # fmt: skip
    assert_parity(ours, reference, nodata)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("west", [None, -150.0, -150.3])
def test_aligned_source_equals_the_whole_source_warp(
    tmp_path: Path, method: str, west: float | None, aligned: Callable[..., Path]
) -> None:
    """Global (sum too: gdalwarp 3.6's sum differs from GDAL 3.10's whatever the path), and
    partial with edges inside the grid, on and off cell edges, partly covered cells."""
    path = (
        aligned(-180, 90, 3600, 1800, "float32")
        if west is None
        else aligned(west, 70.0, 2955, 1283, "float32")
    )
    source = source_of(path)
    assert alignment(source, GLOBAL_1DEG, Resampling(method)) is not None
    ours = _run(tmp_path, path, method)
    warped = warp_in_windows(source, DatasetConfig(name="layer", path=path, resampling=method),
                             GLOBAL_1DEG)  # fmt: skip
    assert_parity(ours, warped, math.nan)
    identical = (ours == warped) | (np.isnan(ours) & np.isnan(warped))
    assert identical.mean() > 0.99, "nearly every cell bit for bit"


def test_only_windows_inside_the_source_are_reduced(aligned: Callable[..., Path]) -> None:
    source = source_of(aligned(-150.0, 70.0, 2955, 1283, "float32"))
    align = alignment(source, GLOBAL_1DEG, Resampling.average)
    assert align is not None and (align.factor_x, align.factor_y) == (10, 10)
    assert is_exact(align, source, Window(64, 64, 64, 64))
    assert not is_exact(align, source, Window(0, 0, 64, 64)), "the grid row before the source"
    assert not is_exact(align, source, Window(64, 128, 64, 52)), "past the south edge"


def test_misaligned_sources_and_large_mode_blocks_are_warped(
    tmp_path: Path, aligned: Callable[..., Path]
) -> None:
    global_source = source_of(aligned(-180, 90, 3600, 1800, "float32"))
    assert alignment(global_source, GLOBAL_1DEG, Resampling.mode) is None, (
        "float32: GDAL is quicker"
    )
    classes = source_of(_classes(tmp_path, "uint8", 255))
    assert alignment(classes, MODE_GRID, Resampling.mode) is None, "uint8: GDAL is quicker"
    large = source_of(_classes(tmp_path, "int16", -32768))
    coarse = TargetGrid.from_config(GridConfig(resolution=0.6, bounds=(-60, -30, 60, 30)))
    assert alignment(large, coarse, Resampling.mode) is None, "6 × 6 > MODE_MAX_PIXELS"
    assert alignment(global_source, GLOBAL_1DEG, Resampling.bilinear) is None
    half_pixel = make_raster(tmp_path / "offset.tif", "EPSG:4326",
                             from_origin(-179.95, 90, STEP, STEP), 3000, 1800)  # fmt: skip
    assert alignment(source_of(half_pixel), GLOBAL_1DEG, Resampling.average) is None
    third = make_raster(tmp_path / "third.tif", "EPSG:4326",
                        from_origin(-180, 90, 0.3, 0.3), 1200, 600)  # fmt: skip
    assert alignment(source_of(third), GLOBAL_1DEG, Resampling.average) is None


@pytest.mark.parametrize("method", METHODS)
def test_reduction_in_bands_equals_one_block(method: str, aligned: Callable[..., Path]) -> None:
    """The working-memory cap splits a window into cell-row bands without changing a cell."""
    source = source_of(aligned(-180, 90, 3600, 1800, "float32"))
    align = alignment(source, GLOBAL_1DEG, Resampling(method))
    assert align is not None
    window = Window(0, 0, 360, 180)
    with rasterio.open(source.name) as src:
        args = (source, align, Resampling(method), window, source.nodata, "float32", math.nan, src)
        whole = reduce_window(*args, working_bytes=2**40)
        one_row = reduce_window(*args, working_bytes=1)
    np.testing.assert_array_equal(one_row, whole)
    assert not np.isnan(whole).all()


#: A 0.3° grid over 3 × 3 blocks of 0.1° classes.
MODE_GRID = TargetGrid.from_config(GridConfig(resolution=0.3, bounds=(-60, -30, 60, 30)))


def _classes(folder: Path, dtype: str, nodata: float) -> Path:
    """Four classes at random, a sixth of the pixels nodata: ties in about a fifth of the cells."""
    rng = np.random.default_rng(7)
    height, width = 600, 1200
    data = rng.integers(0, 4, (height, width)).astype(dtype)
    data[rng.random((height, width)) < 1 / 6] = nodata
    path = folder / f"classes_{dtype}.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=1, dtype=dtype,
        crs="EPSG:4326", transform=from_origin(-60, 30, STEP, STEP), nodata=nodata,
    ) as dst:  # fmt: skip
        dst.write(data, 1)
    return path


@pytest.mark.parametrize(("dtype", "nodata"), [("int16", -32768), ("uint16", 65535)])
def test_mode_equals_the_binary_and_the_whole_source_warp_on_every_cell(
    tmp_path: Path, gdalwarp: str, dtype: str, nodata: float
) -> None:
    """GDAL's tie-breaking included: equal cell for cell, not within a bound."""
    path = _classes(tmp_path, dtype, nodata)
    source = source_of(path)
    align = alignment(source, MODE_GRID, Resampling.mode)
    assert align is not None and align.factor_x * align.factor_y <= MODE_MAX_PIXELS
    config = make_config(
        tmp_path, [{"name": "layer", "path": str(path), "resampling": "mode"}],
        {"resolution": 0.3, "bounds": [-60, -30, 60, 30]}, window=64, threads=2,
    )  # fmt: skip
    ctx, _ = make_context(config)
    ours = read_layer(run_dataset(ctx, tmp_path / "layers.zarr", MODE_GRID, "layer"), "layer")
    assert ours.dtype == np.dtype(dtype)
    binary = gdalwarp_reference(gdalwarp, path, MODE_GRID, "mode", dtype, nodata,
                                tmp_path / "ref.tif")  # fmt: skip
    whole = np.full(ours.shape, nodata, dtype)
    with rasterio.open(path) as src:
        reproject(
            src.read(1), whole, src_transform=src.transform, src_crs=src.crs,
            src_nodata=nodata, dst_transform=MODE_GRID.transform, dst_crs=MODE_GRID.crs,
            dst_nodata=nodata, resampling=RioResampling.mode,
        )  # fmt: skip
    blocks = np.asarray(rasterio.open(path).read(1)).reshape(200, 3, 400, 3)
    tied = sum(
        (blocks == value).sum(axis=(1, 3)) == (blocks == ours[:, None, :, None]).sum(axis=(1, 3))
        for value in range(4)
    )
    assert (tied > 1).mean() > 0.1, "ties in many cells, so tie-breaking is compared"
    np.testing.assert_array_equal(ours, binary)
    np.testing.assert_array_equal(ours, whole)
