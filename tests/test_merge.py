"""Merge: every cell of the region in exactly one chunk, exact coordinates, right values.

Layers are written into a real LayerStore (Zarr) on a real TargetGrid. Each
layer's value is a known function of its grid row and column, so a merged row's
values check its coordinates as well as its data. ``build_run`` is also used by
the export tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet
import pytest
import rasterio
from affine import Affine
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.windows import Window

from pipeline.config import ConfigError, PipelineConfig, parse_config
from pipeline.events import Event, EventSink, GovernorEvent
from pipeline.grid import TargetGrid
from pipeline.memory import MemoryGovernor
from pipeline.merge import MergeError, MergeStream, iter_merged, plan_merge, region_window
from pipeline.store import LayerStore

#: Store chunk of the test runs (memory.min_window).
CHUNK = 64


@dataclass(frozen=True)
class Layer:
    """A test layer: dtype, nodata, and where it has data."""

    name: str
    dtype: str
    nodata: float | None

    def values(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Value at each (row, col): a distinct, exactly representable number per cell."""
        if self.dtype.startswith("float"):
            return (rows * 10_000 + cols + 0.25).astype(self.dtype)
        return ((rows * 7 + cols * 3) % 200).astype(self.dtype)

    def valid(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Each layer covers a different part of the grid (the rest is nodata)."""
        if self.name == "richness":  # "land": a diagonal band
            return (rows + cols) % 5 != 0
        if self.name == "landcover":  # a regional subset
            return (rows < 40) & (cols > 100)
        if self.name == "threat":
            return cols % 3 == 0
        return rows % 2 == 0

    def array(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        data = self.values(rows, cols)
        fill = np.nan if self.nodata is None else self.nodata
        return np.where(self.valid(rows, cols), data, np.asarray(fill, dtype=self.dtype))


LAYERS = (
    Layer("richness", "float32", None),
    Layer("endemism", "float64", None),
    Layer("landcover", "int16", -1),
    Layer("threat", "uint8", 255),
)


@dataclass
class Run:
    config: PipelineConfig
    grid: TargetGrid
    store: LayerStore
    events: list[Event]

    def governor(self, rss: int | None = None) -> MemoryGovernor:
        """A governor reading the real RSS, or a fixed ``rss`` to force pressure."""
        sink = EventSink(callback=self.events.append)
        reader = None if rss is None else (lambda: rss)
        return MemoryGovernor(
            self.config.memory, sink, self.config.resampling.window_size, rss_reader=reader
        )


def write_geotiff(path: Path, grid: TargetGrid, layer: Layer) -> None:
    """The layer as a GeoTIFF exactly on the grid (a passthrough source)."""
    rows, cols = np.mgrid[0 : grid.height, 0 : grid.width]
    nodata = np.nan if layer.nodata is None else layer.nodata
    profile = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": 1,
        "dtype": layer.dtype,
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": CHUNK,
        "blockysize": CHUNK,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(layer.array(rows, cols), 1)


def reopen_run(
    tmp_path: Path,
    resolution: float = 1.0,
    merge: dict[str, Any] | None = None,
    export: dict[str, Any] | None = None,
    layers: tuple[Layer, ...] = LAYERS,
    bounds: tuple[float, float, float, float] = (-180, -90, 180, 90),
) -> Run:
    """The run's config, grid and store, its layers opened as the resample stage opens them."""
    data = {
        "name": "mergetest",
        "datasets": [{"name": layer.name, "path": f"src/{layer.name}.tif"} for layer in layers],
        "grid": {"resolution": resolution, "bounds": list(bounds)},
        "resampling": {"window_size": 4 * CHUNK},
        "memory": {"min_window": CHUNK, "reduced_window": 2 * CHUNK, "budget": "4GiB"},
        "paths": {"work_dir": "work", "output_dir": "out"},
        "merge": merge or {},
        "export": export or {},
    }
    config = parse_config(data, "test", tmp_path)
    grid = TargetGrid.from_config(config.grid)
    store = LayerStore(tmp_path / "work" / "layers.zarr", grid, CHUNK)
    for layer in layers:
        nodata = None if layer.nodata is None else float(layer.nodata)
        store.ensure_layer(layer.name, layer.dtype, nodata, "test-fingerprint")
    return Run(config, grid, store, [])


def build_run(tmp_path: Path, layers: tuple[Layer, ...] = LAYERS, **options: Any) -> Run:
    """A run whose layers are complete in a real store, with matching GeoTIFF sources."""
    run = reopen_run(tmp_path, layers=layers, **options)
    (tmp_path / "src").mkdir(exist_ok=True)
    for layer in layers:
        write_geotiff(tmp_path / "src" / f"{layer.name}.tif", run.grid, layer)
        for window in run.grid.windows(CHUNK):
            rows, cols = np.mgrid[
                window.row_off : window.row_off + window.height,
                window.col_off : window.col_off + window.width,
            ]
            run.store.write_window(layer.name, window, layer.array(rows, cols))
    return run


def collect(run: Run, **kwargs: Any) -> tuple[list[Any], pa.Table]:
    chunks = list(iter_merged(run.store, run.grid, run.config, run.governor(), **kwargs))
    table = pa.Table.from_batches([c.batch for c in chunks], chunks[0].batch.schema)
    return chunks, table


def check_values(table: pa.Table, grid: TargetGrid, layers: tuple[Layer, ...] = LAYERS) -> None:
    """Every row's coordinates are its cell centre and every value is the layer's."""
    rows = table.column("row").to_numpy().astype(np.int64)
    cols = table.column("col").to_numpy().astype(np.int64)
    t = grid.transform
    assert np.array_equal(table.column("x").to_numpy(), t.c + (cols + 0.5) * t.a)
    assert np.array_equal(table.column("y").to_numpy(), t.f + (rows + 0.5) * t.e)
    for layer in layers:
        column = table.column(layer.name)
        assert column.type == pa.from_numpy_dtype(np.dtype(layer.dtype))
        valid = layer.valid(rows, cols)
        assert np.array_equal(column.is_valid().to_numpy(zero_copy_only=False), valid)
        got = column.drop_null().to_numpy()
        assert np.array_equal(got, layer.values(rows, cols)[valid])


def test_every_cell_in_exactly_one_chunk_with_exact_coordinates(tmp_path: Path) -> None:
    # 0.5° grid: 720 × 360; 128-row bands of 720 columns exceed 65 536 cells,
    # so bands split into column blocks of 512 (a multiple of the store chunk).
    run = build_run(
        tmp_path,
        resolution=0.5,
        merge={
            "skip_all_nodata": False,
            "include_row_col": True,
            "chunk_rows": 128,
            "max_chunk_cells": 65_536,
        },
        layers=LAYERS[:2],
    )
    stream = MergeStream(run.store, run.grid, run.config)
    assert (stream.plan.band_rows, stream.plan.block_cols) == (128, 512)
    assert (stream.plan.bands, stream.plan.blocks) == (3, 2)
    chunks, table = collect(run)
    assert [c.index for c in chunks] == list(range(6))
    assert all(c.batch.num_rows <= 65_536 for c in chunks)
    keys = (
        table.column("row").to_numpy().astype(np.int64) * run.grid.width
        + table.column("col").to_numpy()
    )
    assert np.array_equal(np.sort(keys), np.arange(run.grid.width * run.grid.height))
    for chunk in chunks:  # each chunk holds exactly the cells of its window
        rows, cols = chunk.batch.column("row").to_numpy(), chunk.batch.column("col").to_numpy()
        assert (rows.min(), rows.max() + 1) == chunk.rows
        assert (cols.min(), cols.max() + 1) == chunk.cols
    check_values(table, run.grid, LAYERS[:2])


def test_four_layers_of_different_dtypes_merge_cell_by_cell(tmp_path: Path) -> None:
    run = build_run(tmp_path, merge={"skip_all_nodata": False, "include_row_col": True})
    _, table = collect(run)
    assert table.schema.names == ["x", "y", "row", "col", *(layer.name for layer in LAYERS)]
    assert table.num_rows == run.grid.width * run.grid.height
    check_values(table, run.grid)


def test_skip_all_nodata_and_require_drop_exactly_the_right_rows(tmp_path: Path) -> None:
    run = build_run(tmp_path, merge={"include_row_col": True}, layers=LAYERS[2:])
    rows, cols = np.mgrid[0 : run.grid.height, 0 : run.grid.width]
    landcover, threat = LAYERS[2], LAYERS[3]
    _, table = collect(run)
    any_valid = landcover.valid(rows, cols) | threat.valid(rows, cols)
    assert table.num_rows == int(any_valid.sum())
    check_values(table, run.grid, LAYERS[2:])

    run.config.merge.require = ["landcover"]
    _, required = collect(run)
    assert required.num_rows == int(landcover.valid(rows, cols).sum())
    assert required.column("landcover").null_count == 0
    check_values(required, run.grid, LAYERS[2:])


def test_bounds_keep_cells_whose_centres_lie_inside_edges_included(tmp_path: Path) -> None:
    run = build_run(
        tmp_path,
        merge={"skip_all_nodata": False, "include_row_col": True, "bounds": [-10, 0, 20.5, 30]},
        layers=LAYERS[:1],
    )
    _, table = collect(run)
    x, y = table.column("x").to_numpy(), table.column("y").to_numpy()
    # Centres at -9.5 … 19.5 and 0.5 … 29.5, and 20.5 (exactly on the east edge) too.
    assert (x.min(), x.max(), y.min(), y.max()) == (-9.5, 20.5, 0.5, 29.5)
    assert table.num_rows == 31 * 30
    check_values(table, run.grid, LAYERS[:1])
    with pytest.raises(MergeError, match=r"merge.bounds: .* contains no cell centre"):
        region_window(run.grid, (0.1, 0.1, 0.4, 0.4))
    reversed_bounds = {"datasets": [{"name": "a", "path": "a"}], "merge": {"bounds": [9, 0, 1, 5]}}
    with pytest.raises(ConfigError, match=r"^config: merge.bounds: bounds must be west < east"):
        parse_config(reversed_bounds)


def test_start_chunk_yields_exactly_the_tail_of_a_full_pass(tmp_path: Path) -> None:
    run = build_run(tmp_path, merge={"include_row_col": True, "chunk_rows": 16})
    full, _ = collect(run)
    tail, _ = collect(run, start_chunk=7)
    assert [c.index for c in tail] == [c.index for c in full[7:]]
    for a, b in zip(tail, full[7:], strict=True):
        assert a.batch.equals(b.batch)


def test_memory_pressure_thins_parts_without_gaps_or_duplicates(tmp_path: Path) -> None:
    run = build_run(
        tmp_path,
        merge={"skip_all_nodata": False, "include_row_col": True, "chunk_rows": 64},
        layers=LAYERS[:1],
    )
    # A reading above the critical level drops the window to min_window: ¼ of
    # the initial 256, so 64-row units are read in 16-row parts.
    governor = run.governor(rss=run.config.memory.budget_bytes())
    chunks = list(iter_merged(run.store, run.grid, run.config, governor))
    assert any(isinstance(e, GovernorEvent) for e in run.events)
    by_unit: dict[int, list[Any]] = {}
    for chunk in chunks:
        by_unit.setdefault(chunk.index, []).append(chunk)
    assert sorted(by_unit) == list(range(3))  # 180 rows / 64
    for parts in by_unit.values():
        assert [c.part for c in parts] == list(range(len(parts)))
        assert [c.last for c in parts] == [False] * (len(parts) - 1) + [True]
    # Parts are planned one ahead of the consumer (read-ahead), so the first
    # reading shrinks unit 2: its 52 rows come as 16 + 16 + 16 + 4.
    assert [c.batch.num_rows // 360 for c in by_unit[2]] == [16, 16, 16, 4]
    table = pa.Table.from_batches([c.batch for c in chunks])
    keys = table.column("row").to_numpy().astype(np.int64) * 360 + table.column("col").to_numpy()
    assert np.array_equal(np.sort(keys), np.arange(360 * 180))
    check_values(table, run.grid, LAYERS[:1])


def test_plan_bounds_chunk_cells_and_aligns_blocks_to_store_chunks(tmp_path: Path) -> None:
    config = parse_config(
        {
            "datasets": [{"name": "a", "path": "a.tif"}],
            "grid": {"resolution": 1 / 60},
            "merge": {"chunk_rows": 512},
        },
        "test",
        tmp_path,
    )
    grid = TargetGrid.from_config(config.grid)
    plan = plan_merge(grid, config, 256)
    assert (grid.width, grid.height) == (21600, 10800)
    assert plan.block_cols == 8192 and plan.block_cols % 256 == 0
    assert plan.band_rows * plan.block_cols <= config.merge.max_chunk_cells
    covered = sum(int(plan.unit(i).width * plan.unit(i).height) for i in range(plan.total))
    assert covered == grid.width * grid.height


def test_missing_or_incomplete_layer_is_one_clear_error(tmp_path: Path) -> None:
    run = build_run(tmp_path, layers=LAYERS[:1])
    run.store.ensure_layer("endemism", "float32", None, "fp")
    run.store.write_window("endemism", Window(0, 0, CHUNK, CHUNK), np.ones((CHUNK, CHUNK), "f4"))
    run.config.datasets.append(run.config.datasets[0].model_copy(update={"name": "endemism"}))
    with pytest.raises(MergeError, match=r"layer 'endemism' is incomplete in rows 0\.\.180"):
        list(iter_merged(run.store, run.grid, run.config, run.governor()))
    run.config.datasets.append(run.config.datasets[0].model_copy(update={"name": "absent"}))
    with pytest.raises(MergeError, match=r"dataset 'absent' has no layer in the store"):
        MergeStream(run.store, run.grid, run.config)


def test_four_demo_datasets_of_different_resolutions_and_crs_merge_correctly(
    tmp_path: Path, demo_dir: Path
) -> None:
    """The acceptance case: 0.5° global, 5' on-grid subset, 1' regional int16, EASE-Grid 2.0.

    Each is resampled (or copied) by the real resample stage onto a 5' grid over
    Africa/Europe, then merged and exported; every merged cell must hold exactly
    what the store holds, the on-grid dataset exactly its source pixel, and the
    regional one nulls outside its extent.
    """
    from pipeline.catalog import inspect_all
    from pipeline.context import RunContext
    from pipeline.control import Controller
    from pipeline.export import run_merge_export
    from pipeline.grid import place
    from pipeline.resample import resample_dataset

    # The small demo set (seed 0): the session's, which the tests only read.
    (tmp_path / "demo").symlink_to(demo_dir, target_is_directory=True)
    names = ("richness_05deg", "endemism_5min", "landcover_1min", "threat_ease")
    methods = ("bilinear", "average", "mode", "average")
    data = {
        "datasets": [
            {"name": n.split("_")[0], "path": f"demo/{n}.tif", "resampling": m}
            for n, m in zip(names, methods, strict=True)
        ],
        "grid": {"resolution": 1 / 12, "bounds": [-20, -40, 60, 40]},
        "resampling": {"window_size": 512},
        "memory": {"budget": "4GiB"},
        "paths": {"work_dir": "work", "output_dir": "out"},
        "merge": {"skip_all_nodata": False, "include_row_col": True, "chunk_rows": 128},
        "export": {"validate_samples": 400},
    }
    config = parse_config(data, "test", tmp_path)
    grid = TargetGrid.from_config(config.grid)
    store = LayerStore(tmp_path / "work" / "layers.zarr", grid, config.memory.min_window)
    events: list[Event] = []
    sink = EventSink(callback=events.append)
    governor = MemoryGovernor(config.memory, sink, config.resampling.window_size)
    ctx = RunContext(config, sink, Controller(sink), governor)
    sources = inspect_all(config)
    for dataset, source in zip(config.datasets, sources, strict=True):
        resample_dataset(ctx, dataset, source, grid, store, ctx.stage(dataset.name))
    (path,) = run_merge_export(ctx, store, grid, ctx.stage("export"))

    table = pa.parquet.read_table(path)
    assert table.num_rows == grid.width * grid.height == 960 * 960
    rows = table.column("row").to_numpy().astype(np.int64)
    cols = table.column("col").to_numpy().astype(np.int64)
    assert np.array_equal(np.sort(rows * grid.width + cols), np.arange(960 * 960))
    t = grid.transform
    assert np.array_equal(table.column("x").to_numpy(), t.c + (cols + 0.5) * t.a)
    assert np.array_equal(table.column("y").to_numpy(), t.f + (rows + 0.5) * t.e)
    full = Window(0, 0, grid.width, grid.height)
    for dataset in config.datasets:
        layer = store.read_window(dataset.name, full)[rows, cols]
        column = table.column(dataset.name)
        assert column.type == pa.from_numpy_dtype(layer.dtype)
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        nodata = store.layer_info(dataset.name)[1]
        expected_valid = ~np.isnan(layer) if layer.dtype.kind == "f" else layer != nodata
        assert np.array_equal(valid, expected_valid), dataset.name
        assert 0 < valid.sum() <= len(valid)
        assert np.array_equal(column.drop_null().to_numpy(), layer[valid]), dataset.name

    placement = place(grid, sources[1])
    assert placement.passthrough and not place(grid, sources[0]).passthrough
    with rasterio.open(sources[1].path) as src:
        endemism = src.read(1)
    inside = (rows >= placement.row_off) & (cols >= placement.col_off)
    inside &= rows < placement.row_off + endemism.shape[0]
    inside &= cols < placement.col_off + endemism.shape[1]
    source_values = endemism[rows[inside] - placement.row_off, cols[inside] - placement.col_off]
    merged = table.column("endemism").to_numpy(zero_copy_only=False)[inside]
    assert np.array_equal(merged, source_values, equal_nan=True)

    x, y = table.column("x").to_numpy(), table.column("y").to_numpy()
    outside = (x < 0) | (x > 20) | (y > 10) | (y < -5)  # the 1' landcover subset
    # GDAL's whole-raster mode warp (which the windowed warp equals on every
    # cell) also fills the one grid row just north of the source's top edge
    # from the source's first rows; every other cell outside is null.
    row_above = (y > 10) & (y < 10 + 1 / 12) & (x > 0) & (x < 20)
    landcover_null = table.column("landcover").is_null().to_numpy(zero_copy_only=False)
    assert landcover_null[outside & ~row_above].all()
    assert not landcover_null[row_above].all()


@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(1, 5000),
    height=st.integers(1, 3000),
    chunk_rows=st.integers(16, 2048),
    max_cells=st.integers(65_536, 2_000_000),
    store_chunk=st.sampled_from([64, 128, 256, 512]),
)
def test_units_tile_the_region_exactly_within_the_cell_bound(
    width: int, height: int, chunk_rows: int, max_cells: int, store_chunk: int
) -> None:
    grid = TargetGrid(CRS.from_epsg(4326), Affine(0.1, 0, -180, 0, -0.1, 90), width, height)
    config = parse_config(
        {"datasets": [{"name": "a", "path": "a.tif"}],
         "merge": {"chunk_rows": chunk_rows, "max_chunk_cells": max_cells}},
    )  # fmt: skip
    plan = plan_merge(grid, config, store_chunk)
    covered = np.zeros((height, width), dtype=np.int8)
    for index in range(plan.total):
        unit = plan.unit(index)
        assert unit.width * unit.height <= max_cells
        assert unit.col_off % store_chunk == 0 or plan.block_cols == width
        covered[unit.row_off : unit.row_off + unit.height,
                unit.col_off : unit.col_off + unit.width] += 1  # fmt: skip
    assert (covered == 1).all()


@settings(max_examples=200, deadline=None)
@given(
    west_east=st.tuples(st.floats(-200, 200), st.floats(-200, 200)).map(sorted),
    south_north=st.tuples(st.floats(-100, 100), st.floats(-100, 100)).map(sorted),
)
def test_bounds_select_exactly_the_cells_whose_centres_are_inside(
    west_east: list[float], south_north: list[float]
) -> None:
    # Drawn as sorted pairs: the config rejects reversed bounds, and filtering three
    # draws in four away made Hypothesis's health check fail now and then.
    (west, east), (south, north) = west_east, south_north
    assume(west < east and south < north)
    data = {
        "datasets": [{"name": "a", "path": "a.tif"}],
        "grid": {"resolution": 2.5},
        "merge": {"bounds": [west, south, east, north]},
    }
    grid = TargetGrid.from_config(parse_config(data).grid)
    xs, ys = grid.cell_centers(Window(0, 0, grid.width, grid.height))
    inside_x = np.flatnonzero((xs >= west) & (xs <= east))
    inside_y = np.flatnonzero((ys >= south) & (ys <= north))
    if not len(inside_x) or not len(inside_y):
        with pytest.raises(MergeError):
            region_window(grid, (west, south, east, north))
        return
    window = region_window(grid, (west, south, east, north))
    assert (window.col_off, window.col_off + window.width) == (inside_x[0], inside_x[-1] + 1)
    assert (window.row_off, window.row_off + window.height) == (inside_y[0], inside_y[-1] + 1)
