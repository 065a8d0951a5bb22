"""Grid math: -tap snapping (checked against gdalwarp), windows, exact coordinates, placement."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import from_origin, xy
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from pipeline.config import GridConfig
from pipeline.grid import ALIGNMENT_TOLERANCE_PX, DRIFT_TOLERANCE, TargetGrid, place
from pipeline.source import SourceInfo

ARC_MINUTE = 1 / 60


def _source(transform: Affine, width: int, height: int, crs: str = "EPSG:4326") -> SourceInfo:
    return SourceInfo(
        dataset="d",
        path=Path("unused.tif"),
        band=1,
        crs=CRS.from_user_input(crs),
        transform=transform,
        width=width,
        height=height,
        dtype="float32",
        nodata=None,
        block_shape=(256, 256),
        count=1,
    )


def test_default_grid_is_global_one_arc_minute() -> None:
    grid = TargetGrid.from_config(GridConfig())
    assert (grid.width, grid.height) == (21600, 10800)
    assert grid.transform.c == -180.0 and grid.transform.f == 90.0
    assert grid.bounds == pytest.approx((-180.0, -90.0, 180.0, 90.0), abs=1e-12)
    assert grid.crs == CRS.from_epsg(4326)


@pytest.mark.parametrize(
    "bounds",
    [(-10.01, -5.02, 10.01, 5.02), (3.3, 40.0, 7.77, 41.26), (-180, -90, 180, 90)],
)
def test_snapping_matches_gdalwarp_tap(tmp_path: Path, gdalwarp: str, bounds: tuple) -> None:
    resolution = 0.25
    source = tmp_path / "src.tif"
    profile = dict(driver="GTiff", width=4, height=4, count=1, dtype="uint8", crs="EPSG:4326")
    with rasterio.open(source, "w", transform=from_origin(-1, 1, 0.5, 0.5), **profile) as dst:
        dst.write(np.ones((1, 4, 4), "uint8"))
    out = tmp_path / "tap.tif"
    west, south, east, north = bounds
    subprocess.run(
        [gdalwarp, "-q", "-tap", "-tr", str(resolution), str(resolution), "-te",
         str(west), str(south), str(east), str(north), str(source), str(out)],
        check=True,
    )  # fmt: skip
    grid = TargetGrid.from_config(GridConfig(resolution=resolution, bounds=bounds))
    with rasterio.open(out) as reference:
        assert (grid.width, grid.height) == (reference.width, reference.height)
        assert grid.transform.almost_equals(reference.transform, precision=1e-9)


def test_windows_tile_the_grid_row_major_aligned_and_clipped() -> None:
    grid = TargetGrid.from_config(GridConfig(resolution=1.0, bounds=(-100, -50, 100, 50)))
    windows = grid.windows(64)
    assert grid.chunk_grid(64) == (2, 4)
    assert len(windows) == 8
    offsets = [(int(w.row_off), int(w.col_off)) for w in windows]
    assert offsets == sorted(offsets), "row-major order"
    cover = np.zeros((grid.height, grid.width), int)
    for window in windows:
        assert window.row_off % 64 == 0 and window.col_off % 64 == 0
        cover[window.toslices()] += 1
    assert (cover == 1).all(), "every pixel in exactly one window"
    last = windows[-1]
    assert (int(last.width), int(last.height)) == (200 - 192, 100 - 64)


def test_window_transform_bounds_and_centres_are_exact_at_the_far_edge() -> None:
    grid = TargetGrid.from_config(GridConfig())
    window = Window(21600 - 256, 10800 - 256, 256, 256)
    assert grid.window_transform(window).almost_equals(
        window_transform(window, grid.transform), precision=1e-12
    )
    west, south, east, north = grid.window_bounds(window)
    assert north == pytest.approx(-90 + 256 * ARC_MINUTE, abs=1e-9)
    assert (east, south) == pytest.approx((180.0, -90.0), abs=1e-9)
    assert west == pytest.approx(180 - 256 * ARC_MINUTE, abs=1e-9)
    xs, ys = grid.cell_centers(window)
    assert xs[-1] == pytest.approx(180 - ARC_MINUTE / 2, abs=1e-9)
    assert ys[-1] == pytest.approx(-90 + ARC_MINUTE / 2, abs=1e-9)
    ref_x, ref_y = xy(grid.transform, [10800 - 1], [21600 - 1])
    assert xs[-1] == pytest.approx(ref_x[0], abs=1e-9)
    assert ys[-1] == pytest.approx(ref_y[0], abs=1e-9)
    # Integer-derived: every centre sits exactly half a pixel from a pixel edge.
    offsets = (xs - grid.transform.c) / grid.transform.a - 0.5
    assert np.abs(offsets - np.round(offsets)).max() < 1e-6


GRID = TargetGrid.from_config(GridConfig())


def test_same_grid_is_passthrough_at_zero() -> None:
    placement = place(GRID, _source(GRID.transform, 21600, 10800))
    assert placement.passthrough
    assert (placement.row_off, placement.col_off) == (0, 0)
    assert placement.offset_error < 1e-9


def test_forty_pixel_offset_lands_on_column_forty() -> None:
    """The old system's bug: a subset whose origin is 40 arc-minutes east was misplaced."""
    west, north = -180 + 40 * ARC_MINUTE, 90 - 7 * ARC_MINUTE
    placement = place(GRID, _source(from_origin(west, north, ARC_MINUTE, ARC_MINUTE), 600, 300))
    assert placement.passthrough
    assert (placement.row_off, placement.col_off) == (7, 40)
    assert placement.offset_error < 1e-6


@pytest.mark.parametrize("fraction", [0.03, 0.09])
def test_fraction_of_a_pixel_within_tolerance_is_passthrough(fraction: float) -> None:
    west = -180 + (40 + fraction) * ARC_MINUTE
    placement = place(GRID, _source(from_origin(west, 90.0, ARC_MINUTE, ARC_MINUTE), 600, 300))
    assert placement.passthrough
    assert placement.col_off == 40
    assert placement.offset_error == pytest.approx(fraction, abs=1e-6)
    assert placement.offset_error < ALIGNMENT_TOLERANCE_PX


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.75])
def test_larger_fraction_is_resampled(fraction: float) -> None:
    west = -180 + (12 + fraction) * ARC_MINUTE
    placement = place(GRID, _source(from_origin(west, 90.0, ARC_MINUTE, ARC_MINUTE), 600, 300))
    assert not placement.passthrough
    assert placement.offset_error == pytest.approx(min(fraction, 1 - fraction), abs=1e-6)


def test_resolution_drift_across_the_extent_is_caught() -> None:
    """Origin on the grid but 1e-5 relative resolution error: 0.2 px off at the far edge."""
    res = ARC_MINUTE * (1 + 1e-5)
    placement = place(GRID, _source(from_origin(-180, 90, res, res), 21600, 10800))
    assert not placement.passthrough
    assert placement.offset_error == pytest.approx(0.216, abs=1e-3)


def test_other_resolution_or_crs_is_resampled() -> None:
    coarse = place(GRID, _source(from_origin(-180, 90, 0.5, 0.5), 720, 360))
    assert not coarse.passthrough
    projected = _source(from_origin(-17367530.45, 7314540.83, 1000, 1000), 100, 100, "EPSG:6933")
    assert not place(GRID, projected).passthrough


def test_header_rounding_within_the_drift_tolerance_is_the_grid_step() -> None:
    """1e-6 relative drift over 216,000 pixels is 0.2 px at the far edge: still a copy."""
    res = ARC_MINUTE * (1 + DRIFT_TOLERANCE * 0.9)
    wide = _source(from_origin(-180, 90, res, res), 216_000, 100)
    placement = place(TargetGrid.from_config(GridConfig(resolution=ARC_MINUTE,
                      bounds=(-180, 80, 3420, 90))), wide)  # fmt: skip
    assert placement.passthrough and placement.offset_error < 1e-6
    beyond = _source(from_origin(-180, 90, ARC_MINUTE * (1 + 2e-6), ARC_MINUTE), 216_000, 100)
    assert not place(TargetGrid.from_config(GridConfig(resolution=ARC_MINUTE,
                     bounds=(-180, 80, 3420, 90))), beyond).passthrough  # fmt: skip
