"""A real worker process: pause/resume/stop by signal, and resume after SIGKILL."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.control import SHRINK_SIGNAL
from pipeline.events import GovernorEvent, MemoryEvent, OutputEvent, StageEvent, StateEvent
from tests.conftest import write_demo_config
from tests.workerproc import WorkerProcess

#: Small windows so the demo has many window boundaries to act on.
SMALL_WINDOWS = {"window_size": 256, "threads": 1}
#: A coarse quarter-degree grid (18 windows per dataset) keeps three full runs quick.
COARSE_GRID = {"crs": "EPSG:4326", "resolution": 0.25, "bounds": [-180, -90, 180, 90]}
#: Half a degree (720 × 360): a whole run in seconds.
QUICK_GRID = {"crs": "EPSG:4326", "resolution": 0.5, "bounds": [-180, -90, 180, 90]}


def _window_progress(event: object) -> bool:
    return isinstance(event, StageEvent) and event.kind == "dataset" and event.done > 0


def _state(name: str):
    return lambda event: isinstance(event, StateEvent) and event.state == name


@pytest.fixture()
def spawn() -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers that are SIGKILLed at teardown if a failed test left them running."""
    started: list[WorkerProcess] = []

    def start(config: Path, *args: str) -> WorkerProcess:
        started.append(WorkerProcess(config, *args))
        return started[-1]

    yield start
    for worker in started:
        worker.kill()


def test_pause_resume_stop_at_window_boundaries(
    tmp_path: Path, demo_dir: Path, spawn: Callable[..., WorkerProcess]
) -> None:
    config = write_demo_config(tmp_path, demo_dir, resampling=SMALL_WINDOWS)
    worker = spawn(config)
    worker.wait_for(_window_progress)

    worker.process.send_signal(signal.SIGUSR1)
    paused = worker.wait_for(_state("paused"), timeout=5)
    progress_at_pause = len(worker.of_type(StageEvent))
    time.sleep(1.0)
    assert worker.process.poll() is None, "a paused worker stays alive"
    assert len(worker.of_type(StageEvent)) == progress_at_pause, "no progress while paused"

    worker.process.send_signal(signal.SIGUSR2)
    resumed = worker.wait_for(_state("resumed"), timeout=5)
    assert resumed.time >= paused.time
    worker.wait_for(lambda e: isinstance(e, StageEvent) and e.time > resumed.time)

    worker.process.send_signal(signal.SIGTERM)
    worker.wait_for(_state("stopped"), timeout=30)
    assert worker.finish() == 0


def _store_arrays(work: Path) -> dict[str, np.ndarray]:
    import zarr

    group = zarr.open_group(str(work / "layers.zarr"), mode="r")
    return {name: np.asarray(array[:]) for name, array in group.arrays()}


def test_sigkill_mid_run_then_resume_gives_identical_outputs(
    tmp_path: Path, demo_dir: Path, spawn: Callable[..., WorkerProcess]
) -> None:
    # The uninterrupted reference runs beside the crash and the resume (its own
    # directories, nothing shared but the read-only demo layers): two cores, two runs.
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    reference = spawn(
        write_demo_config(reference_dir, demo_dir, resampling=SMALL_WINDOWS, grid=COARSE_GRID)
    )

    crashed_dir = tmp_path / "crashed"
    crashed_dir.mkdir()
    config = write_demo_config(crashed_dir, demo_dir, resampling=SMALL_WINDOWS, grid=COARSE_GRID)
    victim = spawn(config)
    victim.wait_for(lambda e: isinstance(e, StageEvent) and e.kind == "dataset" and e.done >= 3)
    victim.process.kill()
    victim.finish()

    resumed = spawn(config)
    assert reference.finish() == 0, reference.process.stderr.read()
    assert resumed.finish() == 0, resumed.process.stderr.read()
    skipped = [e for e in resumed.of_type(StageEvent) if e.kind == "dataset"]
    assert skipped, "the resumed run reports dataset progress"

    _assert_same_results(reference_dir, crashed_dir, resumed)


def _assert_same_results(reference_dir: Path, run_dir: Path, worker: WorkerProcess) -> None:
    """The layer store and the Parquet outputs ``worker`` wrote equal the reference run's."""
    expected, actual = _store_arrays(reference_dir / "work"), _store_arrays(run_dir / "work")
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
    outputs = [Path(e.path) for e in worker.of_type(OutputEvent) if e.path.endswith(".parquet")]
    assert outputs
    for path in outputs:
        assert pq.read_table(path).equals(pq.read_table(reference_dir / "out" / path.name))


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("datasets:\n  - name: a\n    path: a.tif\n    resampling: avg\n")
    worker = WorkerProcess(config)
    assert worker.finish() == 2
    failed = worker.wait_for(_state("failed"))
    assert "datasets[0]" in failed.reason and "\n" not in failed.reason


def test_catalog_only_writes_nothing(tmp_path: Path, demo_dir: Path) -> None:
    config = write_demo_config(tmp_path, demo_dir)
    worker = WorkerProcess(config, "--stages", "catalog")
    assert worker.finish() == 0
    assert not (tmp_path / "work").exists()
    worker.wait_for(_state("done"))


def test_shrink_pause_resume_and_a_halved_start_window_keep_outputs_identical(
    tmp_path: Path, demo_dir: Path, spawn: Callable[..., WorkerProcess]
) -> None:
    """What the daemon does under host memory pressure and after an OOM kill, on a real run."""
    sections = {
        "resampling": {"window_size": 512, "threads": 1},
        "memory": {"budget": "2GiB", "min_window": 128},
        "grid": QUICK_GRID,
        "export": {"formats": ["parquet"], "name": "demo"},
        "analysis": {"methods": []},
        "report": False,
    }
    # The reference runs beside the pressed run (own directories, read-only inputs).
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    reference = spawn(write_demo_config(reference_dir, demo_dir, **sections))

    pressed_dir = tmp_path / "pressed"
    pressed_dir.mkdir()
    worker = spawn(write_demo_config(pressed_dir, demo_dir, **sections), "--start-window", "256")
    first = worker.wait_for(lambda e: isinstance(e, MemoryEvent) and e.window_size is not None)
    assert first.window_size == 256  # an OOM retry starts at half the configured 512
    worker.process.send_signal(SHRINK_SIGNAL)
    shrunk = worker.wait_for(lambda e: isinstance(e, GovernorEvent))
    assert (shrunk.old_size, shrunk.new_size) == (256, 128)
    assert shrunk.reason == "the daemon asked: host memory pressure"
    worker.process.send_signal(signal.SIGUSR1)
    worker.wait_for(_state("paused"), timeout=30)
    worker.process.send_signal(signal.SIGUSR2)
    worker.wait_for(_state("resumed"), timeout=5)
    assert worker.finish() == 0, worker.process.stderr.read()
    assert reference.finish() == 0, reference.process.stderr.read()
    _assert_same_results(reference_dir, pressed_dir, worker)


def test_a_start_window_off_the_chunk_grid_is_bad_input(tmp_path: Path, demo_dir: Path) -> None:
    worker = WorkerProcess(write_demo_config(tmp_path, demo_dir), "--start-window", "300")
    assert worker.finish() == 2
    (failed,) = [e for e in worker.of_type(StateEvent) if e.state == "failed"]
    assert failed.reason == (
        "--start-window: start window 300 is not a positive multiple of memory.min_window (256)"
    )
