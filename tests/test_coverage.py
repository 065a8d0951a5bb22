"""Coverage check: a layer that misses whole rows/columns of its footprint is a warning."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from pipeline.config import GridConfig
from pipeline.coverage import footprint
from pipeline.grid import TargetGrid
from tests.test_resample import make_config, make_context, run_dataset, source_of

GRID = {"resolution": 2.0}


def _global_layer(path: Path, keep: np.ndarray) -> Path:
    """A 1° world, values where ``keep`` is true, NaN elsewhere."""
    data = np.where(keep, np.random.default_rng(0).random(keep.shape), np.nan).astype("float32")
    with rasterio.open(
        path, "w", driver="GTiff", width=360, height=180, count=1, dtype="float32",
        crs="EPSG:4326", transform=from_origin(-180, 90, 1.0, 1.0), nodata=float("nan"),
    ) as dst:  # fmt: skip
        dst.write(data, 1)
    return path


def _resample(tmp_path: Path, path: Path, caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    config = make_config(tmp_path, [{"name": "layer", "path": str(path)}], GRID)
    ctx, _events = make_context(config)
    grid = TargetGrid.from_config(config.grid)
    with caplog.at_level(logging.INFO, logger="geod.resample"):
        run_dataset(ctx, tmp_path / "layers.zarr", grid, "layer")
    return next(r for r in caplog.records if hasattr(r, "footprint_cells"))


def test_a_lost_hemisphere_is_a_warning_with_both_numbers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keep = np.zeros((180, 360), bool)
    keep[:, 180:] = True  # only the eastern hemisphere arrives
    record = _resample(tmp_path, _global_layer(tmp_path / "east.tif", keep), caplog)
    assert record.levelno == logging.WARNING
    assert record.footprint_cells == 180 * 90 and record.valid_cells == 90 * 90
    assert record.footprint_columns == 180 and record.valid_columns == 90
    assert "8,100 valid cells of a 16,200-cell footprint" in record.getMessage()


def test_a_land_mask_is_not_a_lost_hemisphere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keep = np.random.default_rng(1).random((180, 360)) < 0.3  # 30 % "land", everywhere
    record = _resample(tmp_path, _global_layer(tmp_path / "land.tif", keep), caplog)
    assert record.levelno == logging.INFO
    assert record.valid_cells < record.footprint_cells and record.coverage == 1.0


def test_footprint_of_a_small_source_is_the_cells_whose_centres_it_covers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "small.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=10, height=10, count=1, dtype="float32",
        crs="EPSG:4326", transform=from_origin(10, 50, 1.0, 1.0),
    ) as dst:  # fmt: skip
        dst.write(np.ones((1, 10, 10), "float32"))
    area = footprint(TargetGrid.from_config(GridConfig(resolution=2.0)), source_of(path))
    assert (area.row0, area.row1, area.col0, area.col1) == (20, 25, 95, 100)
    assert area.cells == 25
