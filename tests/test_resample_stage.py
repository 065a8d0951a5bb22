"""The resample stage: every dataset through one ordered queue of windows.

The next dataset's windows are read and warped while the previous one's last
ones finish; what is written, checkpointed and reported stays per dataset and
in order, exactly as when the datasets ran one by one.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling as RioResampling
from rasterio.transform import from_origin
from rasterio.warp import reproject
from rasterio.windows import Window

from pipeline.config import PipelineConfig, parse_config
from pipeline.context import RunContext, StageNode
from pipeline.control import StopRequested
from pipeline.events import CheckpointEvent, Event, StageEvent
from pipeline.resample import queue_full, resample_dataset, resample_datasets
from pipeline.store import LayerStore
from tests.test_resample import (
    EASE_X,
    EASE_Y,
    GLOBAL_1DEG,
    PARITY,
    WINDOW,
    _chunk_files,
    make_context,
    make_raster,
    source_of,
)

#: The stage's datasets: (name, raster key, method). "twin" is "geo" again under another
#: name: equal fingerprints, so only the job token's layer name keeps their sources apart.
STAGE = [
    ("geo", "geographic", "bilinear"),
    ("ease", "equal_area", "average"),
    ("twin", "geographic", "bilinear"),
    ("placed", "on_grid", "nearest"),
    ("blocks", "aligned", "average"),
]
#: Windows per dataset on the 1° grid in WINDOW-pixel windows.
WINDOWS = len(GLOBAL_1DEG.windows(WINDOW))


@pytest.fixture(scope="module")
def rasters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("stage-rasters")
    return {
        "geographic": make_raster(
            folder / "geo.tif", "EPSG:4326", from_origin(-180, 90, 0.3, 0.3), 1200, 600
        ),
        "equal_area": make_raster(
            folder / "ease.tif",
            "EPSG:6933",
            from_origin(-EASE_X, EASE_Y, 2 * EASE_X / 500, 2 * EASE_Y / 210),
            500,
            210,
            dtype="int16",
            nodata=-32768,
            seed=1,
        ),
        # Already on the 1° grid: copied window by window.
        "on_grid": make_raster(
            folder / "placed.tif",
            "EPSG:4326",
            from_origin(-180, 90, 1.0, 1.0),
            360,
            180,
            dtype="uint8",
            nodata=255,
            seed=2,
        ),
        # 0.5° into 1°: reduced by 2×2 blocks.
        "aligned": make_raster(
            folder / "aligned.tif",
            "EPSG:4326",
            from_origin(-180, 90, 0.5, 0.5),
            720,
            360,
            seed=3,
        ),
    }


def stage_config(
    tmp_path: Path, rasters: dict[str, Path], threads: int = 2, read_threads: int = 1
) -> PipelineConfig:
    return parse_config(
        {
            "datasets": [
                {"name": name, "path": str(rasters[key]), "resampling": method}
                for name, key, method in STAGE
            ],
            "grid": {"resolution": 1.0},
            "resampling": {
                "window_size": WINDOW,
                "threads": threads,
                "read_threads": read_threads,
            },
            "memory": {"budget": "4GiB", "min_window": WINDOW, "reduced_window": WINDOW},
            "paths": {"work_dir": str(tmp_path / "work")},
        },
        base=tmp_path,
    )


def run_stage(ctx: RunContext, root: Path) -> LayerStore:
    """The stage as the runner runs it: a node per dataset, finished in order."""
    store = LayerStore(root, GLOBAL_1DEG, ctx.config.memory.min_window)
    stage = ctx.stage("resample", unit="datasets")
    stage.start(total=len(ctx.config.datasets))

    def layers():  # type: ignore[no-untyped-def]
        for dataset in ctx.config.datasets:
            yield (
                dataset,
                source_of(dataset.path, dataset.name),
                stage.child(dataset.name, "dataset"),
            )

    def done(dataset: object, node: StageNode) -> None:
        node.finish()
        stage.advance()

    resample_datasets(ctx, layers(), GLOBAL_1DEG, store, done)
    stage.finish()
    return store


def read_layer(store: LayerStore, name: str) -> np.ndarray:
    return store.read_window(name, Window(0, 0, GLOBAL_1DEG.width, GLOBAL_1DEG.height))


@pytest.fixture(scope="module")
def stage_root(rasters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole stage of ``stage_config``'s datasets, uninterrupted, run once: the store
    the tests below compare with (they only read it)."""
    tmp = tmp_path_factory.mktemp("stage")
    run_stage(make_context(stage_config(tmp, rasters))[0], tmp / "stage.zarr")
    return tmp / "stage.zarr"


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def test_every_cell_equals_each_dataset_resampled_alone(
    rasters: dict[str, Path], tmp_path: Path, stage_root: Path
) -> None:
    config = stage_config(tmp_path, rasters)
    stage = LayerStore(stage_root, GLOBAL_1DEG, WINDOW)
    alone_ctx, _ = make_context(config)
    for dataset in config.datasets:
        store = LayerStore(tmp_path / f"{dataset.name}.zarr", GLOBAL_1DEG, WINDOW)
        node = alone_ctx.stage("resample").child(dataset.name, "dataset")
        resample_dataset(
            alone_ctx, dataset, source_of(dataset.path, dataset.name), GLOBAL_1DEG, store, node
        )
        assert stage.completed(dataset.name) == stage.total_chunks()
        assert _equal(read_layer(stage, dataset.name), read_layer(store, dataset.name)), (
            dataset.name
        )
    assert _equal(read_layer(stage, "geo"), read_layer(stage, "twin"))


def test_a_stage_layer_equals_a_whole_raster_reproject(
    rasters: dict[str, Path], stage_root: Path
) -> None:
    """Windows of several datasets in flight together still warp each one as a whole."""
    stage = LayerStore(stage_root, GLOBAL_1DEG, WINDOW)
    for name in ("geo", "twin"):
        with rasterio.open(rasters["geographic"]) as src:
            whole = np.full((GLOBAL_1DEG.height, GLOBAL_1DEG.width), np.nan, "float32")
            reproject(
                rasterio.band(src, 1), whole, dst_transform=GLOBAL_1DEG.transform,
                dst_crs=GLOBAL_1DEG.crs, dst_nodata=math.nan, resampling=RioResampling.bilinear,
            )  # fmt: skip
        layer = read_layer(stage, name)
        assert (np.isnan(layer) == np.isnan(whole)).all(), name
        valid = ~np.isnan(whole)
        span = float(np.nanmax(whole) - np.nanmin(whole))
        assert valid.sum() > WINDOW * WINDOW
        assert float(np.abs(layer[valid] - whole[valid]).max()) <= PARITY * span, name


def test_progress_is_per_dataset_in_order_while_windows_run_ahead(
    rasters: dict[str, Path], tmp_path: Path
) -> None:
    ctx, events = make_context(stage_config(tmp_path, rasters, threads=1, read_threads=1))
    run_stage(ctx, tmp_path / "stage.zarr")
    names = [name for name, _, _ in STAGE]
    nodes = [e for e in events if isinstance(e, StageEvent) and e.parent == "resample"]
    for name in names:
        mine = [e for e in nodes if e.name == name]
        assert [e.status for e in mine[:2]] == ["pending", "running"], name
        assert mine[1].done == 0 and mine[1].total == WINDOWS
        assert [e.done for e in mine[2:-1]] == list(range(1, WINDOWS + 1)), name
        assert mine[-1].status == "done" and mine[-1].cells_done == mine[-1].cells_total
    # Each dataset starts once the one before is done, and writes only in between.
    order = [
        (e.name, e.status)
        for e in nodes
        if e.status in ("running", "done") and (e.status == "done" or e.done == 0)
    ]
    assert order == [(name, status) for name in names for status in ("running", "done")]
    written = [e.dataset for e in events if isinstance(e, CheckpointEvent)]
    assert written == [name for name in names for _ in range(len(written) // len(names))]
    # ... but the next dataset was queued (its node created) before the previous one's
    # last window was written: its windows ran ahead.
    for before, after in itertools.pairwise(names):
        queued = next(
            i for i, e in enumerate(events)
            if isinstance(e, StageEvent) and e.name == after and e.status == "pending"
        )  # fmt: skip
        last_write = max(
            i
            for i, e in enumerate(events)
            if isinstance(e, CheckpointEvent) and e.dataset == before
        )
        assert queued < last_write, f"{after} queued only after {before} was written"


def test_a_stopped_stage_resumes_in_the_second_dataset(
    rasters: dict[str, Path], tmp_path: Path, stage_root: Path
) -> None:
    reference = LayerStore(stage_root, GLOBAL_1DEG, WINDOW)
    config = stage_config(tmp_path / "b", rasters)
    stopper: list[RunContext] = []
    written: list[str] = []

    def stop_in_ease(event: Event) -> None:
        if isinstance(event, CheckpointEvent):
            written.append(event.dataset)
            if written.count("ease") == 5:
                stopper[0].control.request_stop()

    ctx, _ = make_context(config, stop_in_ease)
    stopper.append(ctx)
    with pytest.raises(StopRequested):
        run_stage(ctx, tmp_path / "b.zarr")
    assert set(written) == {"geo", "ease"}, "stopped in the second dataset"

    resumed_ctx, events = make_context(config)
    resumed = run_stage(resumed_ctx, tmp_path / "b.zarr")
    nodes = [e for e in events if isinstance(e, StageEvent) and e.parent == "resample"]
    starts = {e.name: next(n for n in nodes if n.name == e.name and n.status == "running")
              for e in nodes}  # fmt: skip
    assert starts["geo"].done == WINDOWS and starts["ease"].done == 5
    assert starts["ease"].cells_done == sum(
        w.height * w.width for w in GLOBAL_1DEG.windows(WINDOW)[:5]
    )
    assert all(
        e.done <= e.total and e.cells_done <= e.cells_total for e in nodes if e.cells_total
    ), "windows done before the resume are counted once"
    assert all(e.done == WINDOWS for e in nodes if e.status == "done")
    checkpoints = [e.dataset for e in events if isinstance(e, CheckpointEvent)]
    assert "geo" not in checkpoints and checkpoints.count("ease") == WINDOWS - 5
    for name, _, _ in STAGE:
        assert resumed.completed(name) == reference.completed(name)
    assert _chunk_files(tmp_path / "b.zarr") == _chunk_files(stage_root)


#: The stage in its own process, so the test can SIGKILL it mid-write.
_KILLABLE_STAGE = """
import sys
from pathlib import Path
from pipeline.catalog import inspect
from pipeline.config import parse_config
from pipeline.context import RunContext
from pipeline.control import Controller
from pipeline.events import EventSink
from pipeline.grid import TargetGrid
from pipeline.memory import MemoryGovernor
from pipeline.resample import resample_datasets
from pipeline.store import LayerStore

first, second, store = sys.argv[1], sys.argv[2], Path(sys.argv[3])
config = parse_config({
    "datasets": [{"name": "one", "path": first, "resampling": "bilinear"},
                 {"name": "two", "path": second, "resampling": "average"}],
    "grid": {"resolution": 1.0},
    "resampling": {"window_size": 64, "threads": 2, "read_threads": 1},
    "memory": {"budget": "4GiB", "min_window": 64, "reduced_window": 64},
})
sink = EventSink()
ctx = RunContext(config, sink, Controller(sink), MemoryGovernor(config.memory, sink, 64))
grid = TargetGrid.from_config(config.grid)
layers = LayerStore(store, grid, 64)
stage = ctx.stage("resample")
resample_datasets(
    ctx,
    ((d, inspect(d, config.catalog), stage.child(d.name, "dataset")) for d in config.datasets),
    grid,
    layers,
)
"""


def test_a_stage_killed_in_the_second_dataset_resumes_to_an_identical_store(
    rasters: dict[str, Path], tmp_path: Path
) -> None:
    repo = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=repo)
    argv = [sys.executable, "-c", _KILLABLE_STAGE, str(rasters["geographic"]),
            str(rasters["equal_area"])]  # fmt: skip
    subprocess.run([*argv, str(tmp_path / "reference.zarr")], env=env, check=True)

    killed = tmp_path / "killed.zarr"
    manifest = killed / "two" / "geod-manifest.tsv"
    process = subprocess.Popen([*argv, str(killed)], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if manifest.exists() and manifest.read_bytes().count(b"\n") >= WINDOWS // 2:
            break
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    store = LayerStore(killed, GLOBAL_1DEG, WINDOW)
    entries = manifest.read_bytes().count(b"\n")
    assert 0 < entries < store.total_chunks(), "killed in the middle of the second dataset"
    assert store.verify("two") == entries, "every chunk marked complete is whole"
    assert store.verify("one") == store.total_chunks(), "the first dataset was finished"

    subprocess.run([*argv, str(killed)], env=env, check=True)
    assert _chunk_files(killed) == _chunk_files(tmp_path / "reference.zarr")


@pytest.mark.parametrize("fault", ["deleted", "garbage"])
def test_a_bad_second_source_fails_as_alone_after_the_first_is_finished(
    rasters: dict[str, Path], tmp_path: Path, fault: str
) -> None:
    """Deleted: its preparation fails (its fingerprint stats it); garbage: its windows do."""
    bad = tmp_path / "bad.tif"
    bad.write_bytes(rasters["geographic"].read_bytes())
    config = parse_config(
        {
            "datasets": [
                {"name": "good", "path": str(rasters["equal_area"]), "resampling": "average"},
                {"name": "bad", "path": str(bad), "resampling": "bilinear"},
            ],
            "grid": {"resolution": 1.0},
            "resampling": {"window_size": WINDOW, "threads": 2},
            "memory": {"budget": "4GiB", "min_window": WINDOW, "reduced_window": WINDOW},
        },
        base=tmp_path,
    )
    good, broken = config.datasets
    sources = [source_of(good.path, good.name), source_of(bad, broken.name)]
    if fault == "deleted":
        bad.unlink()
    else:
        bad.write_bytes(b"not a GeoTIFF any more" * 1000)

    ctx, _ = make_context(config)
    alone = LayerStore(tmp_path / "alone.zarr", GLOBAL_1DEG, WINDOW)
    with pytest.raises(Exception) as expected:
        resample_dataset(ctx, broken, sources[1], GLOBAL_1DEG, alone, ctx.stage("x"))

    ctx, events = make_context(config)
    store = LayerStore(tmp_path / "stage.zarr", GLOBAL_1DEG, WINDOW)
    stage = ctx.stage("resample")
    with pytest.raises(type(expected.value)) as raised:
        resample_datasets(
            ctx,
            (
                (d, s, stage.child(d.name, "dataset"))
                for d, s in zip(config.datasets, sources, strict=True)
            ),
            GLOBAL_1DEG,
            store,
        )
    assert str(raised.value) == str(expected.value)
    assert store.verify("good") == store.total_chunks(), "the first dataset was finished"
    assert not any(isinstance(e, CheckpointEvent) and e.dataset == "bad" for e in events)


def test_the_in_flight_bound_holds_across_datasets_of_different_window_bytes() -> None:
    """threads + 1 pieces within the share; bytes, not counts, across sizes."""
    window = 1000
    for threads, share, depth in ((1, 100 * window, 2), (2, 100 * window, 3), (2, 2.5 * window, 2),
                                  (4, 0.5 * window, 1)):  # fmt: skip
        assert not queue_full(depth, depth * window, threads, share)
        assert queue_full(depth + 1, (depth + 1) * window, threads, share)
    # A share of three float32 windows holds a float64 and a float32 one, not one more.
    float32, float64 = 4 * window, 8 * window
    share = 3 * float32
    assert not queue_full(3, 3 * float32, 4, share)
    assert not queue_full(2, float64 + float32, 4, share)
    assert queue_full(3, float64 + 2 * float32, 4, share)
    assert not queue_full(1, 100 * window, 4, share), "never below the serial loop"
