"""A layer store of four synthetic global layers, written straight into Zarr (bench helper).

The export benchmarks measure merge and writers, not resampling, so the layers
are generated on the target grid directly: smooth fields with ~60 % "ocean"
nodata (like real biodiversity layers), one int16 regional subset, so that
compression, null handling and row skipping behave as on real data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import pipeline
from pipeline.config import PipelineConfig
from pipeline.grid import TargetGrid
from pipeline.store import LayerStore

#: The window the layers are written in (the store's chunk is memory.min_window).
WRITE_WINDOW = 1024
#: The int16 layer covers only this west, south, east, north box (a regional dataset).
LANDCOVER_BOX = (-20.0, -40.0, 60.0, 40.0)
LANDCOVER_NODATA = -1
DATASETS = (("richness", "float32"), ("endemism", "float32"), ("landcover", "int16"),
            ("threat", "float32"))  # fmt: skip


@dataclass
class SyntheticRun:
    config: PipelineConfig
    grid: TargetGrid
    store: LayerStore


def _fields(lon: np.ndarray, lat: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    lam, phi = np.radians(lon), np.radians(lat)
    land = np.sin(2 * lam + 0.4) * np.cos(3 * phi) + 0.4 * np.sin(5 * lam + 1.3 * phi) - 0.25
    ocean = land < 0
    noise = rng.normal(0, 0.5, lon.shape)
    richness = (120 * np.cos(phi) ** 2 * (1 + 0.3 * np.sin(7 * lam)) + noise).astype("float32")
    endemism = np.exp(-(((lat - 5) / 25) ** 2)) * (0.5 + 0.5 * np.cos(3 * lam)) + noise / 100
    threat = (0.5 + 0.5 * np.sin(4 * lam) * np.cos(2 * phi) + noise / 50).astype("float32")
    landcover = (np.floor(10 + 9 * np.sin(11 * lam) * np.cos(13 * phi))).astype("int16")
    west, south, east, north = LANDCOVER_BOX
    outside = (lon < west) | (lon > east) | (lat < south) | (lat > north) | ocean
    return {
        "richness": np.where(ocean, np.float32(np.nan), richness),
        "endemism": np.where(ocean, np.float32(np.nan), endemism.astype("float32")),
        "landcover": np.where(outside, np.int16(LANDCOVER_NODATA), landcover),
        "threat": np.where(ocean, np.float32(np.nan), threat),
    }


def open_config(
    directory: Path, resolution: float, export: dict | None = None, merge: dict | None = None
) -> PipelineConfig:
    data = {
        "name": "bench",
        "datasets": [{"name": name, "path": f"src/{name}.tif"} for name, _ in DATASETS],
        "grid": {"resolution": resolution},
        "resampling": {"window_size": WRITE_WINDOW},
        "paths": {"work_dir": "work", "output_dir": "out"},
        "export": export or {},
        "merge": merge or {},
    }
    return pipeline.parse_config(data, "bench", directory)


def open_run(
    directory: Path, resolution: float, export: dict | None = None, merge: dict | None = None
) -> SyntheticRun:
    """The run in ``directory`` (its store must have been built by :func:`build`)."""
    config = open_config(directory, resolution, export, merge)
    grid = pipeline.target_grid(config)
    return SyntheticRun(config, grid, pipeline.open_store(config, grid))


def build(directory: Path, resolution: float, seed: int = 0) -> SyntheticRun:
    """Write the four layers for a global grid of ``resolution`` degrees."""
    run = open_run(directory, resolution)
    rng = np.random.default_rng(seed)
    for name, dtype in DATASETS:
        nodata = float(LANDCOVER_NODATA) if dtype == "int16" else None
        run.store.ensure_layer(name, dtype, nodata, f"bench-{resolution}-{seed}")
    for window in run.grid.windows(WRITE_WINDOW):
        if all(run.store.is_complete(name, window) for name, _ in DATASETS):
            continue
        xs, ys = run.grid.cell_centers(window)
        lon, lat = np.meshgrid(xs, ys)
        for name, values in _fields(lon, lat, rng).items():
            run.store.write_window(name, window, values)
    return run
