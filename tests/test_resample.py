"""Windowed resampling against the real gdalwarp binary, passthrough placement, resume."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from pipeline.catalog import inspect
from pipeline.config import CatalogConfig, DatasetConfig, GridConfig, PipelineConfig, parse_config
from pipeline.context import RunContext
from pipeline.control import Controller, StopRequested
from pipeline.events import CheckpointEvent, Event, EventSink, MemoryEvent, StageEvent
from pipeline.grid import TargetGrid, place
from pipeline.memory import MemoryGovernor
from pipeline.resample import (
    ChunkWarper,
    output_dtype,
    output_nodata,
    resample_dataset,
    source_nodata,
    warp_plan,
)
from pipeline.source import SourceInfo
from pipeline.store import LayerStore
from pipeline.warpplan import WarpChunk

#: Parity bound from the issue: max abs difference ≤ 1e-6 × data range.
PARITY = 1e-6
#: Small windows so every grid has several windows and their seams are compared.
WINDOW = 64
#: A real raster shipped by Debian's proj-data (a dependency of gdal-bin): EGM96 geoid.
EGM96 = Path("/usr/share/proj/egm96_15.gtx")
#: The EPSG:6933 world extent (metres).
EASE_X, EASE_Y = 17367530.445161499, 7314540.8306386
#: Last EGM96 column (partly covered at 180°E): GDAL 3.10 vs 3.6 edge weighting.
EDGE_COLUMN_TOLERANCE = 0.005
#: Fewest valid pixels a parity comparison must cover to mean anything.
MIN_COMPARED = 10_000
#: gdalwarp's default -wm, and geod's resampling.warp_memory default.
WARP_MEMORY = 64 * 1024**2
GDAL_TYPES = {
    "float32": "Float32",
    "float64": "Float64",
    "int16": "Int16",
    "uint16": "UInt16",
    "uint8": "Byte",
}

GLOBAL_1DEG = TargetGrid.from_config(GridConfig(resolution=1.0))
MIDLAT_1DEG = TargetGrid.from_config(GridConfig(resolution=1.0, bounds=(-180, -80, 180, 80)))


def make_raster(
    path: Path,
    crs: str,
    transform: rasterio.Affine,
    width: int,
    height: int,
    dtype: str = "float32",
    nodata: float | None = -9999,
    seed: int = 0,
) -> Path:
    """Smooth field + noise, with a disc of nodata: gradients and nodata edges in every window."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    data = np.sin(xx / 37.0) * 50 + np.cos(yy / 23.0) * 40 + rng.normal(0, 5, (height, width))
    data += 100
    if nodata is not None:
        data[(xx - width // 3) ** 2 + (yy - height // 2) ** 2 < (height // 5) ** 2] = nodata
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=1, dtype=dtype, crs=crs,
        transform=transform, nodata=nodata, tiled=True, blockxsize=128, blockysize=128,
    ) as dst:  # fmt: skip
        dst.write(data.astype(dtype), 1)
    return path


def source_of(path: Path, name: str = "layer") -> SourceInfo:
    return inspect(DatasetConfig(name=name, path=path), CatalogConfig())


def gdalwarp_reference(
    gdalwarp: str, path: Path | str, grid: TargetGrid, method: str, dtype: str, nodata: float,
    out: Path, extra: tuple[str, ...] = (),
) -> np.ndarray:  # fmt: skip
    """One whole-raster gdalwarp onto exactly the grid, with our output dtype and nodata."""
    west, south, east, north = grid.bounds
    subprocess.run(
        [gdalwarp, "-q", "-overwrite", *extra, "-r", method, "-t_srs", grid.crs.to_wkt(),
         "-te", repr(west), repr(south), repr(east), repr(north),
         "-ts", str(grid.width), str(grid.height), "-ot", GDAL_TYPES[dtype],
         "-dstnodata", "nan" if math.isnan(nodata) else repr(nodata), str(path), str(out)],
        check=True,
    )  # fmt: skip
    with rasterio.open(out) as reference:
        return reference.read(1)


def warp_in_windows(
    source: SourceInfo,
    dataset: DatasetConfig,
    grid: TargetGrid,
    chunks: list[WarpChunk] | None = None,
    window: int = WINDOW,
) -> np.ndarray:
    """Our windowed warp of the whole grid (GDAL's chunk plan unless ``chunks`` is given)."""
    if chunks is None:
        chunks = warp_plan(source, dataset, grid, WARP_MEMORY)
    dtype = output_dtype(dataset.resampling, source.dtype)
    out = np.empty((grid.height, grid.width), dtype)
    with (
        rasterio.open(source.name) as src,
        ChunkWarper(source, dataset, grid, 1, 2, src) as warper,
    ):
        for piece in grid.windows(window):
            out[piece.toslices()] = warper.window(piece, chunks)
    return out


def whole_grid_chunk(grid: TargetGrid, scale: tuple[float, float]) -> list[WarpChunk]:
    """One chunk over the whole grid with a fixed scale (the old single-scale windowing)."""
    return [WarpChunk(Window(0, 0, grid.width, grid.height), scale)]


def _missing(array: np.ndarray, nodata: float) -> np.ndarray:
    return np.isnan(array) if math.isnan(nodata) else array == nodata


def assert_parity(ours: np.ndarray, reference: np.ndarray, nodata: float) -> None:
    """Identical nodata mask and max abs diff ≤ 1e-6 × range (the issue's bound)."""
    assert ours.dtype == reference.dtype
    mask = _missing(reference, nodata)
    mismatched = int((mask != _missing(ours, nodata)).sum())
    assert mismatched == 0, f"{mismatched} pixels differ in the nodata mask"
    valid = ~mask
    assert valid.sum() >= MIN_COMPARED, "the comparison must cover real data"
    values = reference[valid].astype("float64")
    data_range = values.max() - values.min()
    diff = np.abs(ours[valid].astype("float64") - values).max()
    assert diff <= PARITY * data_range, f"max diff {diff} > {PARITY} × range {data_range}"


# --------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def rasters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("rasters")
    return {
        # 0.3° → 1°: a non-integer ratio, so kernels straddle source pixels everywhere.
        "geographic": make_raster(
            folder / "geo.tif", "EPSG:4326", from_origin(-180, 90, 0.3, 0.3), 1200, 600
        ),
        # Equal-area world (EPSG:6933), int16 with nodata: reprojection + dtype rule.
        "equal_area": make_raster(
            folder / "ease.tif",
            "EPSG:6933",
            from_origin(-EASE_X, EASE_Y, 2 * EASE_X / 1000, 2 * EASE_Y / 420),
            1000,
            420,
            dtype="int16",
            nodata=-32768,
            seed=1,
        ),
    }


CASES = [
    ("geographic", "average", GLOBAL_1DEG),
    ("geographic", "bilinear", GLOBAL_1DEG),
    ("geographic", "cubic", GLOBAL_1DEG),
    ("equal_area", "bilinear", GLOBAL_1DEG),
    # The EASE-Grid 2.0 world ends at 85.04°N: gdalwarp 3.6's footprint methods
    # fill the uncovered rows north of it with edge values, GDAL 3.10 leaves them
    # empty (see pipeline.resample); these comparisons stay off the poles.
    ("equal_area", "average", MIDLAT_1DEG),
    ("equal_area", "nearest", GLOBAL_1DEG),
    ("equal_area", "mode", MIDLAT_1DEG),
    ("equal_area", "min", MIDLAT_1DEG),
    ("geographic", "max", GLOBAL_1DEG),
    ("geographic", "med", GLOBAL_1DEG),
    ("geographic", "q1", GLOBAL_1DEG),
    ("equal_area", "q3", MIDLAT_1DEG),
]


@pytest.mark.parametrize(("raster", "method", "grid"), CASES)
def test_windowed_output_equals_gdalwarp(
    rasters: dict[str, Path], tmp_path: Path, gdalwarp: str, raster: str, method: str, grid
) -> None:
    source = source_of(rasters[raster])
    dataset = DatasetConfig(name="layer", path=source.path, resampling=method)
    dtype = output_dtype(dataset.resampling, source.dtype)
    nodata = output_nodata(dtype, source_nodata(dataset, source))
    assert len(grid.windows(WINDOW)) >= 6, "several windows, so seams are compared"
    ours = warp_in_windows(source, dataset, grid)
    reference = gdalwarp_reference(gdalwarp, source.path, grid, method, dtype, nodata,
                                   tmp_path / "ref.tif")  # fmt: skip
    assert_parity(ours, reference, nodata)


def test_output_dtype_rule() -> None:
    from pipeline.config import Resampling

    assert output_dtype(Resampling.average, "int16") == "float32"
    assert output_dtype(Resampling.bilinear, "uint8") == "float32"
    assert output_dtype(Resampling.mode, "int16") == "int16"
    assert output_dtype(Resampling.average, "float64") == "float64"
    assert output_nodata("int16", None) == -32768
    assert output_nodata("uint8", None) == 255
    assert math.isnan(output_nodata("float32", -9999))


def test_scale_is_the_whole_raster_ratio(rasters: dict[str, Path]) -> None:
    def plan(name: str) -> list[WarpChunk]:
        source = source_of(rasters[name])
        return warp_plan(
            source, DatasetConfig(name="l", path=source.path), GLOBAL_1DEG, WARP_MEMORY
        )

    assert [c.scale for c in plan("geographic")] == [pytest.approx((0.3, 0.3))]
    assert [c.scale for c in plan("equal_area")] == [pytest.approx((360 / 1000, 180 / 420))]


def test_unit_scale_breaks_bilinear_downsampling_parity(
    rasters: dict[str, Path], tmp_path: Path, gdalwarp: str
) -> None:
    """Why XSCALE/YSCALE are pinned: with 1 the kernel ignores most of the footprint."""
    source = source_of(rasters["geographic"])
    dataset = DatasetConfig(name="layer", path=source.path, resampling="bilinear")
    ours = warp_in_windows(source, dataset, GLOBAL_1DEG, whole_grid_chunk(GLOBAL_1DEG, (1.0, 1.0)))
    reference = gdalwarp_reference(gdalwarp, source.path, GLOBAL_1DEG, "bilinear", "float32",
                                   math.nan, tmp_path / "ref.tif")  # fmt: skip
    valid = ~np.isnan(reference) & ~np.isnan(ours)
    spread = np.nanmax(reference) - np.nanmin(reference)
    assert np.abs(ours[valid] - reference[valid]).max() > 1e-3 * spread


@pytest.mark.parametrize("method", ["average", "bilinear"])
def test_packaged_real_raster_equals_gdalwarp(tmp_path: Path, gdalwarp: str, method: str) -> None:
    """EGM96 15' geoid from Debian's proj-data: a global grid offset by half a pixel."""
    if not EGM96.exists():
        if os.environ.get("GEOD_REQUIRE_GDALWARP"):
            pytest.fail(f"{EGM96} missing: install Debian proj-data (comes with gdal-bin)")
        pytest.skip(f"{EGM96} not installed")
    source = source_of(EGM96)
    assert (source.width, source.height) == (1440, 721)
    dataset = DatasetConfig(name="geoid", path=EGM96, resampling=method)
    chunks = warp_plan(source, dataset, GLOBAL_1DEG, WARP_MEMORY)
    assert [c.scale for c in chunks] == [pytest.approx((0.25, 0.25))]
    ours = warp_in_windows(source, dataset, GLOBAL_1DEG, chunks)
    reference = gdalwarp_reference(gdalwarp, EGM96, GLOBAL_1DEG, method, "float32", math.nan,
                                   tmp_path / "ref.tif")  # fmt: skip
    # The source ends at 179.875°E, so the last column (179°..180°E) is partly
    # covered. GDAL 3.10 would wrap it round the globe (a latitude-band mean,
    # -0.78 m at the equator); geod warps it from a cropped source and gets the
    # covered part's average, close to gdalwarp 3.6's (which weights the edge
    # pixel a little differently). Every other column is compared exactly.
    assert_parity(ours[:, :-1], reference[:, :-1], math.nan)
    spread = np.nanmax(reference) - np.nanmin(reference)
    assert np.nanmax(np.abs(ours[:, -1] - reference[:, -1])) <= EDGE_COLUMN_TOLERANCE * spread


# --------------------------------------------------------------------------- dataset runs


def make_config(
    tmp_path: Path, datasets: list[dict], grid: dict, window: int = 128, threads: int = 1
) -> PipelineConfig:
    return parse_config(
        {
            "datasets": datasets,
            "grid": grid,
            "resampling": {"window_size": window, "threads": threads},
            "memory": {"budget": "4GiB", "min_window": WINDOW, "reduced_window": WINDOW},
            "paths": {"work_dir": str(tmp_path / "work")},
        },
        base=tmp_path,
    )


def make_context(
    config: PipelineConfig, on_event: Callable[[Event], None] | None = None
) -> tuple[RunContext, list[Event]]:
    events: list[Event] = []

    def record(event: Event) -> None:
        events.append(event)
        if on_event is not None:
            on_event(event)

    sink = EventSink(callback=record)
    governor = MemoryGovernor(config.memory, sink, initial_window=config.resampling.window_size)
    return RunContext(config, sink, Controller(sink), governor), events


def run_dataset(ctx: RunContext, root: Path, grid: TargetGrid, name: str) -> LayerStore:
    dataset = ctx.config.dataset(name)
    store = LayerStore(root, grid, ctx.config.memory.min_window)
    node = ctx.stage("resample").child(name, "dataset")
    resample_dataset(ctx, dataset, source_of(dataset.path, name), grid, store, node)
    node.finish()
    return store


def read_layer(store: LayerStore, name: str) -> np.ndarray:
    grid = store.grid
    return store.read_window(name, Window(0, 0, grid.width, grid.height))


def test_resample_dataset_fills_the_store_like_gdalwarp(
    rasters: dict[str, Path], tmp_path: Path, gdalwarp: str
) -> None:
    config = make_config(
        tmp_path, [{"name": "ease", "path": str(rasters["equal_area"]), "resampling": "bilinear"}],
        {"resolution": 1.0},
    )  # fmt: skip
    ctx, events = make_context(config)
    store = run_dataset(ctx, tmp_path / "layers.zarr", GLOBAL_1DEG, "ease")
    assert store.completed("ease") == store.total_chunks()
    reference = gdalwarp_reference(gdalwarp, rasters["equal_area"], GLOBAL_1DEG, "bilinear",
                                   "float32", math.nan, tmp_path / "ref.tif")  # fmt: skip
    assert_parity(read_layer(store, "ease"), reference, math.nan)
    windows = len(GLOBAL_1DEG.windows(128))
    progress = [e for e in events if isinstance(e, StageEvent) and e.id == "resample/ease"]
    assert progress[-1].status == "done" and progress[-1].done == windows
    # Each window adds its own cells: the edge windows of the 360×180 grid are smaller.
    cells = [w.height * w.width for w in GLOBAL_1DEG.windows(128)]
    running = [e for e in progress if e.status == "running"]
    assert [e.cells_done for e in running] == [sum(cells[: e.done]) for e in running]
    started = [e for e in progress if e.status != "pending"]
    assert {e.cells_total for e in started} == {GLOBAL_1DEG.height * GLOBAL_1DEG.width}
    assert len(set(cells)) > 1 and progress[-1].cells_done == progress[-1].cells_total
    assert len([e for e in events if isinstance(e, CheckpointEvent)]) == windows
    assert len([e for e in events if isinstance(e, MemoryEvent)]) == windows


def _offset_source(folder: Path, cols: float, rows: float) -> Path:
    """A 1 arc-minute raster whose origin is ``cols``/``rows`` grid pixels into the grid."""
    res = 1 / 60
    transform = from_origin(-10 + cols * res, 5 - rows * res, res, res)
    height, width = 200, 300
    values = (np.arange(height)[:, None] * 1000 + np.arange(width)[None, :]).astype("float32")
    path = folder / f"offset_{cols}_{rows}.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=1, dtype="float32",
        crs="EPSG:4326", transform=transform, nodata=-1.0,
    ) as dst:  # fmt: skip
        dst.write(values, 1)
    return path


def test_forty_pixel_offset_is_copied_to_exactly_that_place(tmp_path: Path, gdalwarp: str) -> None:
    grid_cfg = {"resolution": 1 / 60, "bounds": [-10, -5, 10, 5]}
    grid = TargetGrid.from_config(GridConfig.model_validate(grid_cfg))
    path = _offset_source(tmp_path, 40, 7)
    source = source_of(path, "offset")
    placement = place(grid, source)
    assert placement.passthrough and (placement.row_off, placement.col_off) == (7, 40)

    config = make_config(tmp_path, [{"name": "offset", "path": str(path)}], grid_cfg)
    ctx, _ = make_context(config)
    layer = read_layer(run_dataset(ctx, tmp_path / "layers.zarr", grid, "offset"), "offset")
    with rasterio.open(path) as src:
        original = src.read(1)
        np.testing.assert_array_equal(layer[7 : 7 + 200, 40 : 40 + 300], original)
        assert np.isnan(layer[:7]).all() and np.isnan(layer[:, :40]).all()
        # Same place on the ground: grid cell centres = source cell centres (< 0.1 px).
        xs, ys = grid.cell_centers(Window(40, 7, 300, 200))
        src_xs = src.transform.c + (np.arange(300) + 0.5) * src.transform.a
        src_ys = src.transform.f + (np.arange(200) + 0.5) * src.transform.e
        assert np.abs(xs - src_xs).max() / grid.transform.a < 0.1
        assert np.abs(ys - src_ys).max() / -grid.transform.e < 0.1
    # A copy is what gdalwarp's nearest does on a whole-pixel shift. (Its average
    # also counts a float-noise sliver, ~1e-12 of a pixel, past the source edge.)
    reference = gdalwarp_reference(gdalwarp, path, grid, "nearest", "float32", math.nan,
                                   tmp_path / "ref.tif")  # fmt: skip
    assert_parity(layer, reference, math.nan)


def test_fractional_offset_is_resampled_like_gdalwarp(tmp_path: Path, gdalwarp: str) -> None:
    grid_cfg = {"resolution": 1 / 60, "bounds": [-10, -5, 10, 5]}
    grid = TargetGrid.from_config(GridConfig.model_validate(grid_cfg))
    path = _offset_source(tmp_path, 40.3, 7.3)
    placement = place(grid, source_of(path))
    assert not placement.passthrough and placement.offset_error == pytest.approx(0.3, abs=1e-6)
    config = make_config(tmp_path, [{"name": "shifted", "path": str(path)}], grid_cfg)
    ctx, _ = make_context(config)
    layer = read_layer(run_dataset(ctx, tmp_path / "layers.zarr", grid, "shifted"), "shifted")
    # The source spans grid pixels 40.3..340.3 × 7.3..207.3: exactly these are covered.
    covered = np.zeros(layer.shape, bool)
    covered[7:208, 40:341] = True
    assert (~np.isnan(layer) == covered).all()
    reference = gdalwarp_reference(gdalwarp, path, grid, "average", "float32", math.nan,
                                   tmp_path / "ref.tif")  # fmt: skip
    # gdalwarp 3.6 also fills the row and the column just before the source, which
    # it does not cover, by repeating the first covered row/column; GDAL 3.10
    # leaves them empty. Everything the source covers is compared.
    np.testing.assert_array_equal(reference[6, 40:341], reference[7, 40:341])
    np.testing.assert_array_equal(reference[7:208, 39], reference[7:208, 40])
    assert_parity(layer, np.where(covered, reference, np.nan), math.nan)


def _chunk_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "/c/" in f"/{p.relative_to(root)}"
    }


@pytest.mark.parametrize("threads", [1, 2])
def test_stopped_run_resumes_to_a_bit_identical_store(
    rasters: dict[str, Path], tmp_path: Path, threads: int
) -> None:
    """Also with two warp threads: windows warped ahead of a stop are dropped, not written."""
    datasets = [{"name": "geo", "path": str(rasters["geographic"]), "resampling": "average"}]
    grid_cfg = {"resolution": 1.0}
    reference_ctx, _ = make_context(make_config(tmp_path / "a", datasets, grid_cfg))
    reference = run_dataset(reference_ctx, tmp_path / "a.zarr", GLOBAL_1DEG, "geo")

    config = make_config(tmp_path / "b", datasets, grid_cfg, threads=threads)
    stopper: list[RunContext] = []

    def stop_after_three(event: Event) -> None:
        if isinstance(event, CheckpointEvent) and event.detail.get("col_off") == 256:
            stopper[0].control.request_stop()

    ctx, _ = make_context(config, stop_after_three)
    stopper.append(ctx)
    with pytest.raises(StopRequested):
        run_dataset(ctx, tmp_path / "b.zarr", GLOBAL_1DEG, "geo")
    partial = LayerStore(tmp_path / "b.zarr", GLOBAL_1DEG, WINDOW)
    partial.ensure_layer("geo", "float32", math.nan, _fingerprint_of(reference, "geo"))
    assert 0 < partial.completed("geo") < partial.total_chunks()

    resumed_ctx, events = make_context(config)
    resumed = run_dataset(resumed_ctx, tmp_path / "b.zarr", GLOBAL_1DEG, "geo")
    start = next(e for e in events if isinstance(e, StageEvent) and e.status == "running")
    assert start.done == 3, "the three finished windows are skipped"
    assert start.cells_done == sum(w.height * w.width for w in GLOBAL_1DEG.windows(128)[:3])
    checkpoints = [e for e in events if isinstance(e, CheckpointEvent)]
    assert len(checkpoints) == len(GLOBAL_1DEG.windows(128)) - 3
    assert resumed.completed("geo") == reference.completed("geo")
    assert _chunk_files(tmp_path / "b.zarr") == _chunk_files(tmp_path / "a.zarr")


@pytest.mark.parametrize("method", ["average", "bilinear"])
def test_pipelined_threads_write_the_same_store_in_the_same_order(
    rasters: dict[str, Path], tmp_path: Path, method: str
) -> None:
    datasets = [{"name": "ease", "path": str(rasters["equal_area"]), "resampling": method}]
    serial_ctx, serial_events = make_context(
        make_config(tmp_path / "a", datasets, {"resolution": 1.0}, window=WINDOW)
    )
    run_dataset(serial_ctx, tmp_path / "a.zarr", GLOBAL_1DEG, "ease")
    ctx, events = make_context(
        make_config(tmp_path / "b", datasets, {"resolution": 1.0}, window=WINDOW, threads=2)
    )
    run_dataset(ctx, tmp_path / "b.zarr", GLOBAL_1DEG, "ease")
    assert _chunk_files(tmp_path / "b.zarr") == _chunk_files(tmp_path / "a.zarr")

    def order(recorded: list[Event]) -> list[tuple[int, int]]:
        return [
            (e.detail["row_off"], e.detail["col_off"])
            for e in recorded
            if isinstance(e, CheckpointEvent)
        ]

    assert (
        order(events)
        == order(serial_events)
        == [(int(w.row_off), int(w.col_off)) for w in GLOBAL_1DEG.windows(WINDOW)]
    )


def _fingerprint_of(store: LayerStore, name: str) -> str:
    import zarr

    return str(zarr.open_array(store.root / name, mode="r").attrs["geod_fingerprint"])


def test_governor_window_smaller_than_configured_subdivides_windows(
    rasters: dict[str, Path], tmp_path: Path
) -> None:
    datasets = [{"name": "geo", "path": str(rasters["geographic"]), "resampling": "bilinear"}]
    whole_ctx, _ = make_context(make_config(tmp_path / "a", datasets, {"resolution": 1.0}))
    whole = run_dataset(whole_ctx, tmp_path / "a.zarr", GLOBAL_1DEG, "geo")

    ctx, events = make_context(make_config(tmp_path / "b", datasets, {"resolution": 1.0}))
    ctx.governor.window_size = WINDOW  # as after a critical memory reading
    pieces = run_dataset(ctx, tmp_path / "b.zarr", GLOBAL_1DEG, "geo")
    first_checkpoints = [e for e in events if isinstance(e, CheckpointEvent)][:4]
    assert [e.done for e in first_checkpoints] == [1, 2, 3, 4], "one chunk per piece"
    np.testing.assert_array_equal(read_layer(pieces, "geo"), read_layer(whole, "geo"))


def test_changed_method_resets_the_layer(rasters: dict[str, Path], tmp_path: Path) -> None:
    path = str(rasters["geographic"])
    first, _ = make_context(make_config(tmp_path, [{"name": "g", "path": path}], {"resolution": 1}))
    averaged = read_layer(run_dataset(first, tmp_path / "s.zarr", GLOBAL_1DEG, "g"), "g")
    changed = make_config(tmp_path, [{"name": "g", "path": path, "resampling": "max"}],
                          {"resolution": 1})  # fmt: skip
    second, events = make_context(changed)
    maxed = read_layer(run_dataset(second, tmp_path / "s.zarr", GLOBAL_1DEG, "g"), "g")
    start = next(e for e in events if isinstance(e, StageEvent) and e.status == "running")
    assert start.done == 0, "a stale checkpoint is not trusted"
    valid = ~np.isnan(averaged)
    assert (maxed[valid] >= averaged[valid]).all() and (maxed[valid] > averaged[valid]).any()


#: A resampling run in its own process, so the test can SIGKILL it mid-write.
_KILLABLE_RUN = """
import sys
from pathlib import Path
from pipeline.catalog import inspect
from pipeline.config import parse_config
from pipeline.context import RunContext
from pipeline.control import Controller
from pipeline.events import EventSink
from pipeline.grid import TargetGrid
from pipeline.memory import MemoryGovernor
from pipeline.resample import resample_dataset
from pipeline.store import LayerStore

source, store = sys.argv[1], Path(sys.argv[2])
config = parse_config({
    "datasets": [{"name": "geo", "path": source, "resampling": "bilinear"}],
    "grid": {"resolution": 1.0},
    "resampling": {"window_size": 64},
    "memory": {"budget": "4GiB", "min_window": 64, "reduced_window": 64},
})
sink = EventSink()
ctx = RunContext(config, sink, Controller(sink), MemoryGovernor(config.memory, sink, 64))
grid = TargetGrid.from_config(config.grid)
dataset = config.datasets[0]
layers = LayerStore(store, grid, 64)
node = ctx.stage("resample").child("geo", "dataset")
resample_dataset(ctx, dataset, inspect(dataset, config.catalog), grid, layers, node)
"""


def test_sigkill_during_writes_never_marks_a_partial_chunk_complete(
    rasters: dict[str, Path], tmp_path: Path
) -> None:
    repo = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=repo)
    argv = [sys.executable, "-c", _KILLABLE_RUN, str(rasters["geographic"])]
    subprocess.run([*argv, str(tmp_path / "reference.zarr")], env=env, check=True)

    killed = tmp_path / "killed.zarr"
    manifest = killed / "geo" / "geod-manifest.tsv"
    total = GLOBAL_1DEG.chunk_grid(WINDOW)[0] * GLOBAL_1DEG.chunk_grid(WINDOW)[1]
    for lines_before_kill in (2, 7, 12):
        process = subprocess.Popen([*argv, str(killed)], env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if manifest.exists() and manifest.read_bytes().count(b"\n") >= lines_before_kill:
                break
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
        process.wait()
        store = LayerStore(killed, GLOBAL_1DEG, WINDOW)
        entries = manifest.read_bytes().count(b"\n")
        assert 0 < entries < total, "killed in the middle of the run"
        assert store.verify("geo") == entries, "every chunk marked complete is whole"

    subprocess.run([*argv, str(killed)], env=env, check=True)
    assert _chunk_files(killed) == _chunk_files(tmp_path / "reference.zarr")


def test_integer_passthrough_follows_the_dtype_rule(tmp_path: Path, gdalwarp: str) -> None:
    """An int16 layer already on the grid, averaged: copied, as float32 with NaN nodata."""
    grid_cfg = {"resolution": 1 / 60, "bounds": [-10, -5, 10, 5]}
    grid = TargetGrid.from_config(GridConfig.model_validate(grid_cfg))
    path = make_raster(
        tmp_path / "int.tif", "EPSG:4326", from_origin(-10, 5, 1 / 60, 1 / 60), 1200, 600,
        dtype="int16", nodata=-32768,
    )  # fmt: skip
    assert place(grid, source_of(path)).passthrough
    config = make_config(tmp_path, [{"name": "int", "path": str(path)}], grid_cfg)
    ctx, _ = make_context(config)
    store = run_dataset(ctx, tmp_path / "layers.zarr", grid, "int")
    assert store.layer_info("int")[0] == "float32"
    layer = read_layer(store, "int")
    with rasterio.open(path) as src:
        original = src.read(1)
    np.testing.assert_array_equal(np.isnan(layer), original == -32768)
    reference = gdalwarp_reference(gdalwarp, path, grid, "average", "float32", math.nan,
                                   tmp_path / "ref.tif")  # fmt: skip
    assert_parity(layer, reference, math.nan)
