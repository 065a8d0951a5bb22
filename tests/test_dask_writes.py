"""On a cluster each resample task writes its own window's chunks; the run's worker
records their checksums in grid order.

One writer for a whole cluster bounded a Dask run (two workers resampled barely
faster than one). Here a real LocalCluster of two worker processes computes a
layer's windows through the executor's pool with the store's writer in the job:
every result that comes back is the written window's checksums and coverage, not
its pixels; recorded in order they make a store that verifies chunk by chunk and
holds exactly the cells computed locally.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import from_origin

from pipeline.config import DatasetConfig, PipelineConfig
from pipeline.coverage import mask_counts, valid_mask
from pipeline.events import EventSink
from pipeline.executor.dask import DaskExecutor
from pipeline.grid import TargetGrid
from pipeline.resample import WrittenWindow, compute_window, release_job, warp_window
from pipeline.store import LayerStore
from tests.test_read_ahead import job_for
from tests.test_resample import GLOBAL_1DEG, make_raster

WINDOW = 64


@pytest.fixture(scope="module")
def executor() -> Iterator[DaskExecutor]:
    config = PipelineConfig.model_validate(
        {
            "datasets": [{"name": "unused", "path": "/nonexistent.tif"}],
            "executor": "dask",
            "dask": {"local_cluster": {"n_workers": 2, "threads_per_worker": 1}},
        }
    )
    executor = DaskExecutor.connect(config, EventSink())
    yield executor
    executor.close()


@pytest.mark.parametrize("method", ["average", "cubic"])
def test_tasks_write_their_windows_and_the_store_verifies(
    executor: DaskExecutor, tmp_path: Path, method: str
) -> None:
    grid: TargetGrid = GLOBAL_1DEG
    # 0.5° from 175°W, 60°N: a real warp onto the 1° grid, nodata inside it.
    path = make_raster(tmp_path / "layer.tif", "EPSG:4326", from_origin(-175, 60, 0.5, 0.5),
                       700, 240)  # fmt: skip
    job = job_for(DatasetConfig(name="layer", path=path), grid, method)
    store = LayerStore(tmp_path / "store", grid, WINDOW)
    store.ensure_layer("layer", job.dtype, job.nodata, f"remote-{method}")
    remote = dataclasses.replace(job, token=f"{job.token}:remote", writer=store.writer)
    windows = grid.windows(WINDOW)

    with executor.pool(compute_window, remote, 0) as pool:
        futures = [pool.submit(window) for window in windows]
        results = [future.result() for future in futures]
    assert all(isinstance(result, WrittenWindow) for result in results)
    for result in results:
        store.record("layer", result.lines)
    assert store.verify("layer") == store.total_chunks()

    try:
        for window, result in zip(windows, results, strict=True):
            local = warp_window(job, window, None)
            stored = store.read_window("layer", window)
            assert np.array_equal(stored, local, equal_nan=True), window
            cells, rows, cols = result.counts
            want = mask_counts(valid_mask(local, job.nodata))
            assert cells == want[0]
            assert np.array_equal(rows, want[1]) and np.array_equal(cols, want[2])
    finally:
        release_job(job.token)
