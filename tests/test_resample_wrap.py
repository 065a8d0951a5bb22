"""Wide geographic sources: GDAL's own chunk plan, and every cell of the grid.

GDAL gives a geographic source a CENTER_LONG and wraps the longitudes it maps
onto it into the half-turn either side; it samples every region on a grid
(and widens it by source pixels transformed forward) when a pole lies on the
destination; and it snaps a chunk's computed kernel scale to ``1 / n``. Each
changes the kernel scale of bilinear and cubic, so a plan that missed one
warped most cells of these sources with the wrong kernel (up to 30 % of the
data range off, on up to 62,000 of 64,800 cells) while the run ended ``done``.

Each case is a source users have: a regional layer wider than a half-turn,
near-global layers that start or end a few pixels short of ±180° (one with
drifted pixel sizes and rows past ±90°). The plan is compared with the chunks
and source windows ``gdalwarp`` itself reports (``CPL_DEBUG``), and the stage's
real path (windows read ahead, then warped) with a whole-source
``rasterio.warp.reproject`` and with the ``gdalwarp`` binary on every cell.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import from_origin
from rasterio.windows import Window

from pipeline.config import DatasetConfig, GridConfig, Resampling
from pipeline.grid import TargetGrid
from pipeline.resample import read_window_source, release_job, warp_window
from pipeline.warpplan import SourceProbe, compute_source_window
from tests.test_read_ahead import job_for
from tests.test_resample import WARP_MEMORY, gdalwarp_reference, source_of
from tests.test_resample_edges import _random_raster, assert_every_cell, whole_reproject

#: (west, north, pixel width, pixel height, columns, rows) of each source.
SOURCES = {
    # 259° wide from 150.3°W: GDAL wraps the grid east of 159.2°E round to its west.
    "regional_259deg": (-150.3, 40.7, 0.37, 0.29, 700, 400),
    # 356° from 178°W: 360 / 712 pixels is a scale of 0.5056, which GDAL snaps to 0.5.
    "near_global_356deg": (-178.0, 80.0, 0.5, 0.5, 712, 300),
    # Ends 0.5° short of 180°E: 180°E wraps onto its west edge, the poles keep its width.
    "short_of_180": (-179.9, 70.0, 0.6, 0.6, 599, 200),
    # Drifted pixel sizes, rows past ±90°: 180°W wraps onto its east edge.
    "drifted_past_poles": (-178.0, 92.5, 0.3600001, 0.3700002, 990, 500),
}
#: A global 1° grid (poles on it: grid sampling) and a ±60° band at 0.5° (edge sampling).
GRIDS = {
    "global_1deg": TargetGrid.from_config(GridConfig(resolution=1.0, bounds=(-180, -90, 180, 90))),
    "band_60deg": TargetGrid.from_config(GridConfig(resolution=0.5, bounds=(-180, -60, 180, 60))),
}
WINDOW = 64
NODATA = -9999.0
#: Cells each comparison must cover (the smallest source fills ~9,000 on the band grid).
MIN_VALID = 5_000
#: gdalwarp's debug line for each chunk it warps.
CHUNK_LINE = re.compile(r"Src=(\d+),(\d+),(\d+)x(\d+) Dst=(\d+),(\d+),(\d+)x(\d+)")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("wide")
    paths = {}
    for seed, (name, (west, north, px, py, width, height)) in enumerate(SOURCES.items()):
        paths[name] = _random_raster(
            folder / f"{name}.tif", "EPSG:4326", from_origin(west, north, px, py),
            (width, height), "float32", NODATA, seed,
        )  # fmt: skip
    return paths


def gdal_chunks(gdalwarp: str, path: Path, grid: TargetGrid, method: str, out: Path) -> set:
    """(source window, destination window) of every chunk ``gdalwarp`` warps."""
    west, south, east, north = grid.bounds
    result = subprocess.run(
        [gdalwarp, "-overwrite", "-r", method, "-te", repr(west), repr(south), repr(east),
         repr(north), "-ts", str(grid.width), str(grid.height), "-wm", str(WARP_MEMORY),
         "-ot", "Float32", str(path), str(out)],
        check=True, capture_output=True, text=True, env={**os.environ, "CPL_DEBUG": "ON"},
    )  # fmt: skip
    return {
        (tuple(map(int, m.groups()[:4])), tuple(map(int, m.groups()[4:])))
        for m in CHUNK_LINE.finditer(result.stderr)
    }


@pytest.mark.parametrize("grid_name", list(GRIDS))
@pytest.mark.parametrize("name", list(SOURCES))
def test_the_plan_is_the_chunk_list_gdalwarp_reports(
    sources: dict[str, Path], tmp_path: Path, gdalwarp: str, name: str, grid_name: str
) -> None:
    grid, path = GRIDS[grid_name], sources[name]
    job = job_for(DatasetConfig(name=name, path=path), grid, "bilinear")
    source = source_of(path)
    probe = SourceProbe.of(source, grid.crs, grid.transform, (grid.width, grid.height))
    ours = set()
    for chunk in job.chunks:
        window = chunk.window
        facts = compute_source_window(
            source, grid.crs, grid.transform, window, Resampling.bilinear, probe=probe
        )
        assert facts is not None
        ours.add(
            (
                (facts.col_off, facts.row_off, facts.width, facts.height),
                (int(window.col_off), int(window.row_off), int(window.width), int(window.height)),
            )
        )
    assert ours == gdal_chunks(gdalwarp, path, grid, "bilinear", tmp_path / "chunks.tif")


def test_the_grid_east_of_the_wrap_line_reads_the_whole_source_width(
    sources: dict[str, Path],
) -> None:
    """The chunk over 90°E…180°E of a source ending at 108.7°E starts at column 0."""
    grid, path = GRIDS["global_1deg"], sources["regional_259deg"]
    job = job_for(DatasetConfig(name="regional", path=path), grid, "bilinear")
    east = [c for c in job.chunks if c.window.col_off == 270 and c.window.row_off == 0]
    assert len(east) == 1
    assert east[0].scale[0] == pytest.approx(90 / 700)


def test_a_computed_scale_near_one_half_is_snapped_to_it(sources: dict[str, Path]) -> None:
    job = job_for(DatasetConfig(name="near", path=sources["near_global_356deg"]),
                  GRIDS["global_1deg"], "cubic")  # fmt: skip
    assert [c.scale for c in job.chunks] == [(0.5, 0.6)]


def stage_warp(path: Path, grid: TargetGrid, method: str) -> tuple[np.ndarray, float]:
    """The stage's own path: each window read ahead, then warped from its crop."""
    job = job_for(DatasetConfig(name=path.stem, path=path), grid, method)
    out = np.full((grid.height, grid.width), job.nodata, job.dtype)
    try:
        for window in grid.windows(WINDOW):
            out[window.toslices()] = warp_window(job, window, read_window_source(job, window))
    finally:
        release_job(job.token)
    return out, job.nodata


@pytest.mark.parametrize("method", ["bilinear", "cubic"])
@pytest.mark.parametrize("grid_name", list(GRIDS))
@pytest.mark.parametrize("name", list(SOURCES))
def test_every_cell_equals_the_whole_source_warp_and_gdalwarp(
    sources: dict[str, Path], tmp_path: Path, gdalwarp: str, name: str, grid_name: str,
    method: str,
) -> None:  # fmt: skip
    grid, path = GRIDS[grid_name], sources[name]
    ours, nodata = stage_warp(path, grid, method)
    whole = whole_reproject(path, grid, method, ours.dtype.name, nodata, WARP_MEMORY / 1024**2)
    assert_every_cell(ours, whole, nodata, MIN_VALID, "vs whole-source reproject")
    reference = gdalwarp_reference(
        gdalwarp, path, grid, method, ours.dtype.name, nodata, tmp_path / "ref.tif",
        extra=("-wm", str(WARP_MEMORY)),
    )  # fmt: skip
    assert_every_cell(ours, reference, nodata, MIN_VALID, "vs gdalwarp")


def test_a_partial_window_over_the_wrap_line_matches_too(sources: dict[str, Path]) -> None:
    """A window straddling 159.2°E (the wrap line) equals the whole warp there."""
    grid, path = GRIDS["global_1deg"], sources["regional_259deg"]
    job = job_for(DatasetConfig(name="straddle", path=path), grid, "bilinear")
    window = Window(256, 0, 104, 180)
    try:
        ours = warp_window(job, window, read_window_source(job, window))
    finally:
        release_job(job.token)
    whole = whole_reproject(path, grid, "bilinear", "float32", np.nan, WARP_MEMORY / 1024**2)
    assert_every_cell(ours, whole[window.toslices()], np.nan, 1_000, "straddling window")
