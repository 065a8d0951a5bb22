"""Source windows decoded ahead of their warp: the same cells, and real overlap.

With ``resampling.read_threads`` a window's source pixels are read and decoded
on a reader thread while the previous window warps, then warped from memory
through a virtual raster with the source's own size and georeferencing. These
tests check that this gives every cell exactly as reading the file inside the
warp does, on the inputs users have (reprojected int16 with nodata, a 0…360°
NetCDF without a CRS, packed int16 with scale and offset), and that the local
pool really runs reads ahead of computes, in order, failing and stopping cleanly.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from pipeline.blockreduce import alignment
from pipeline.catalog import inspect
from pipeline.config import CatalogConfig, DatasetConfig, GridConfig, Resampling
from pipeline.executor import Staged
from pipeline.executor.local import LocalExecutor
from pipeline.grid import TargetGrid, place
from pipeline.resample import (
    WindowJob,
    output_dtype,
    output_nodata,
    read_window_source,
    release_job,
    source_nodata,
    warp_plan,
    warp_window,
)
from tests.test_inputs import TIMES, write_netcdf
from tests.test_resample import EASE_X, EASE_Y, make_raster

WINDOW = 64
#: Seconds a pool test waits for another thread before calling it a deadlock.
HANDOFF_TIMEOUT = 30


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DatasetConfig]:
    folder = tmp_path_factory.mktemp("read-ahead")
    ease = make_raster(
        folder / "ease.tif",
        "EPSG:6933",
        from_origin(-EASE_X, EASE_Y, 2 * EASE_X / 1000, 2 * EASE_Y / 420),
        1000,
        420,
        dtype="int16",
        nodata=-32768,
        seed=3,
    )
    geo = make_raster(folder / "geo.tif", "EPSG:4326", from_origin(-180, 90, 0.3, 0.3), 1200, 600)
    climate = write_netcdf(folder / "climate.nc", TIMES)
    return {
        "ease": DatasetConfig(name="ease", path=ease),
        "geo": DatasetConfig(name="geo", path=geo),
        # No CRS, 0…360° longitudes, packed int16: the catalog's VRT document is the source.
        "climate": DatasetConfig(
            name="climate", path=climate, crs="EPSG:4326", variable="tas", time="2000-02-01"
        ),
    }


def job_for(dataset: DatasetConfig, grid: TargetGrid, method: str) -> WindowJob:
    """The job ``resample_dataset`` would build for this dataset (default settings)."""
    dataset = dataset.model_copy(update={"resampling": Resampling(method)})
    source = inspect(dataset, CatalogConfig(timeout=30.0), wrap_longitudes=True)
    dtype = output_dtype(dataset.resampling, source.dtype)
    return WindowJob(
        token=f"read-ahead:{dataset.name}:{method}:{grid.width}",
        source=source,
        dataset=dataset,
        grid=grid,
        margin=2,
        warp_memory=64 * 1024**2,
        gdal_env={"GDAL_CACHEMAX": 64},
        placement=place(grid, source),
        aligned=alignment(source, grid, dataset.resampling),
        chunks=tuple(warp_plan(source, dataset, grid, 64 * 1024**2)),
        dtype=dtype,
        nodata=output_nodata(dtype, source_nodata(dataset, source)),
    )


CASES = [
    ("ease", "bilinear", 1.0),
    ("ease", "average", 1.0),
    ("ease", "mode", 1.0),
    ("ease", "max", 1.0),
    ("geo", "average", 1.0),
    ("geo", "cubic", 0.7),
    ("geo", "sum", 1.0),
    ("geo", "nearest", 0.45),
    ("climate", "bilinear", 2.0),
    ("climate", "average", 1.5),
]


@pytest.mark.parametrize(("name", "method", "resolution"), CASES)
def test_warp_from_a_decoded_crop_equals_reading_the_file(
    sources: dict[str, DatasetConfig], name: str, method: str, resolution: float
) -> None:
    grid = TargetGrid.from_config(GridConfig(resolution=resolution))
    job = job_for(sources[name], grid, method)
    from_crop = 0
    try:
        for window in grid.windows(WINDOW):
            crop = read_window_source(job, window)
            direct = warp_window(job, window, None)
            if crop is None:
                continue
            from_crop += 1
            ours = warp_window(job, window, crop)
            assert ours.dtype == direct.dtype
            assert np.array_equal(ours, direct, equal_nan=True), (name, method, window)
    finally:
        release_job(job.token)
    windows = len(grid.windows(WINDOW))
    # Only windows reaching round the antimeridian of a near-global source warp
    # from the file: most windows must have been warped from their crop.
    assert from_crop >= windows // 2, f"{from_crop} of {windows} windows read ahead"


def test_a_source_with_a_mask_band_is_warped_from_the_file(tmp_path: Path) -> None:
    """An internal mask is not in a decoded crop: such windows read the file themselves."""
    path = tmp_path / "masked.tif"
    data = np.arange(360 * 180, dtype="float32").reshape(180, 360)
    profile = dict(
        driver="GTiff", width=360, height=180, count=1, dtype="float32", crs="EPSG:4326",
        transform=from_origin(-180, 90, 1.0, 1.0), tiled=True, blockxsize=128, blockysize=128,
    )  # fmt: skip
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
        mask = np.full(data.shape, 255, dtype="uint8")
        mask[:, :90] = 0
        dst.write_mask(mask)
    grid = TargetGrid.from_config(GridConfig(resolution=1.5))
    job = job_for(DatasetConfig(name="masked", path=path), grid, "bilinear")
    try:
        window = grid.windows(WINDOW)[0]
        assert read_window_source(job, window) is None
        assert np.isnan(warp_window(job, window, None)[:, :50]).all()  # the mask holds
    finally:
        release_job(job.token)


# --------------------------------------------------------------------------- the pool


class Handoffs:
    """Reads and computes that record their thread and can wait for each other."""

    def __init__(self) -> None:
        self.read_threads: dict[int, str] = {}
        self.read_done = {item: threading.Event() for item in range(8)}

    def read(self, item: int) -> int:
        self.read_threads[item] = threading.current_thread().name
        self.read_done[item].set()
        if item == 5:
            raise ValueError("item 5 cannot be read")
        return item * 10

    def compute(self, item: int, read: int) -> tuple[int, str, bool]:
        # Item 0's compute waits until item 1 has been read: without reads running
        # ahead on their own thread (one compute thread here) this would time out.
        overlapped = item != 0 or self.read_done[1].wait(HANDOFF_TIMEOUT)
        return read + 1, threading.current_thread().name, overlapped


def _read(shared: Handoffs, item: int) -> int:
    return shared.read(item)


def _compute(shared: Handoffs, item: int, read: int) -> tuple[int, str, bool]:
    return shared.compute(item, read)


STAGED = Staged(_read, _compute)


def test_reads_run_ahead_on_reader_threads_and_results_come_in_order() -> None:
    handoffs = Handoffs()
    with LocalExecutor().pool(STAGED, handoffs, threads=1, readers=1) as pool:
        futures = [pool.submit(item) for item in range(5)]
        results = [future.result(timeout=HANDOFF_TIMEOUT) for future in futures]
    assert [value for value, _, _ in results] == [1, 11, 21, 31, 41]
    assert all(overlapped for _, _, overlapped in results)
    assert all(name.startswith("geod-_compute-read") for name in handoffs.read_threads.values())
    assert all(name.startswith("geod-_compute") and "-read" not in name for _, name, _ in results)


def test_a_failed_read_fails_its_item_only() -> None:
    handoffs = Handoffs()
    with LocalExecutor().pool(STAGED, handoffs, threads=1, readers=1) as pool:
        futures = {item: pool.submit(item) for item in range(4, 7)}
        with pytest.raises(ValueError, match="item 5 cannot be read"):
            futures[5].result(timeout=HANDOFF_TIMEOUT)
        assert futures[6].result(timeout=HANDOFF_TIMEOUT)[0] == 61


def test_closing_cancels_what_is_still_queued_and_runs_cleanup() -> None:
    handoffs, release, cleaned = Handoffs(), threading.Event(), []

    def blocked_read(shared: Handoffs, item: int) -> int:
        release.wait(HANDOFF_TIMEOUT)
        return shared.read(item)

    staged = Staged(blocked_read, _compute)
    with LocalExecutor().pool(
        staged, handoffs, threads=1, cleanup=lambda: cleaned.append(True), readers=1
    ) as pool:
        futures = [pool.submit(item) for item in range(1, 4)]
        release.set()  # item 1's read is running; 2 and 3 wait in the reader queue
        pool.close()
    cancelled = 0
    for future in futures:
        try:
            future.result(timeout=HANDOFF_TIMEOUT)
        except CancelledError:
            cancelled += 1
    assert cancelled >= 1 and cleaned, "queued items dropped, cleanup run"


def test_without_readers_a_staged_task_runs_whole_on_the_compute_threads() -> None:
    handoffs = Handoffs()
    handoffs.read_done[1].set()  # nothing reads ahead here
    with LocalExecutor().pool(STAGED, handoffs, threads=1, readers=0) as pool:
        value, name, _ = pool.submit(2).result(timeout=HANDOFF_TIMEOUT)
    assert value == 21 and handoffs.read_threads[2] == name
    assert STAGED(handoffs, 3)[0] == 31  # what a Dask task runs: read then compute


def test_a_window_job_read_is_skipped_where_blocks_are_reduced(tmp_path: Path) -> None:
    """Aligned sources are reduced by blocks, which read the file themselves."""
    path = make_raster(tmp_path / "aligned.tif", "EPSG:4326", from_origin(-180, 90, 0.5, 0.5),
                       720, 360)  # fmt: skip
    grid = TargetGrid.from_config(GridConfig(resolution=1.0))
    job = job_for(DatasetConfig(name="aligned", path=path), grid, "average")
    try:
        assert job.aligned is not None
        assert read_window_source(job, Window(0, 0, WINDOW, WINDOW)) is None
    finally:
        release_job(job.token)
