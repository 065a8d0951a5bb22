"""MemoryGovernor: the shrink/grow policy on scripted RSS readings, then on this real process."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import MemoryConfig
from pipeline.control import Controller
from pipeline.demo import generate
from pipeline.events import EVENTS_FD_ENV, Event, EventSink, GovernorEvent, MemoryEvent, decode
from pipeline.memory import MemoryGovernor
from pipeline.runner import STORE_NAME

REPO = Path(__file__).resolve().parent.parent

GIB = 1024**3
BUDGET = GIB


class Recorder:
    """An EventSink callback that keeps every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def scripted(fractions: list[float]) -> tuple[MemoryGovernor, Recorder, Iterator[int]]:
    """A governor whose RSS readings are ``fractions`` of a 1 GiB budget, in order."""
    readings = iter(int(f * BUDGET) for f in fractions)
    recorder = Recorder()
    governor = MemoryGovernor(
        MemoryConfig(budget=BUDGET), EventSink(callback=recorder), 2048, lambda: next(readings)
    )
    return governor, recorder, readings


def run(governor: MemoryGovernor, count: int) -> list[int]:
    return [governor.after_window("resample") for _ in range(count)]


def test_shrinks_on_warning_drops_on_critical_and_grows_back_after_calm_windows() -> None:
    calm = [0.5] * 4
    fractions = [0.5, 0.85, 0.85, 0.85, 0.95, *calm, *calm, *calm, *calm]
    governor, recorder, _ = scripted(fractions)

    sizes = run(governor, len(fractions))

    assert (
        sizes
        == [2048, 1024, 512, 512, 256]
        + [256] * 3
        + [512]
        + [512] * 3
        + [1024]
        + [1024] * 3
        + [2048]
        + [2048] * 4
    )
    changes = [(e.old_size, e.new_size, e.level) for e in recorder.of(GovernorEvent)]
    assert changes == [
        (2048, 1024, "warning"),
        (1024, 512, "warning"),
        (512, 256, "critical"),
        (256, 512, "normal"),
        (512, 1024, "normal"),
        (1024, 2048, "normal"),
    ]
    memory = recorder.of(MemoryEvent)
    assert len(memory) == len(fractions)
    assert [m.window_size for m in memory] == sizes
    assert all(m.budget == BUDGET and m.stage == "resample" for m in memory)
    assert memory[1].rss == int(0.85 * BUDGET)
    assert all(m.system_available and m.system_available > 0 for m in memory)


def test_each_change_is_one_log_record_in_the_documented_wording(
    caplog: pytest.LogCaptureFixture,
) -> None:
    governor, _, _ = scripted([0.85, 0.95, *[0.5] * 4])
    with caplog.at_level(logging.INFO, logger="geod.memory"):
        run(governor, 6)

    records = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "geod.memory"]
    assert records == [
        ("WARNING", "window 2048 → 1024: RSS 870 MiB ≥ 80 % of 1.0 GiB"),
        ("WARNING", "window 1024 → 256: RSS 973 MiB ≥ 90 % of 1.0 GiB; ran GC"),
        ("INFO", "window 256 → 512: RSS 512 MiB < 70 % of 1.0 GiB for 4 windows"),
    ]


def test_pressure_between_calm_windows_restarts_the_hysteresis_count() -> None:
    governor, recorder, _ = scripted([0.95, 0.5, 0.5, 0.5, 0.82, 0.5, 0.5, 0.5, 0.5])

    sizes = run(governor, 9)

    # The 0.82 reading neither grows nor shrinks the 256 window, but resets the count.
    assert sizes == [256, 256, 256, 256, 256, 256, 256, 256, 512]
    assert [(e.old_size, e.new_size) for e in recorder.of(GovernorEvent)] == [
        (2048, 256),
        (256, 512),
    ]


def test_readings_between_calm_and_warning_hold_the_size() -> None:
    """Just under the warning level is not calm: growing there would flap."""
    governor, recorder, _ = scripted([0.85, *[0.75] * 12, *[0.69] * 4])

    sizes = run(governor, 17)

    assert sizes == [1024] * 16 + [2048]
    assert [(e.old_size, e.new_size) for e in recorder.of(GovernorEvent)] == [
        (2048, 1024),
        (1024, 2048),
    ]


def test_initial_window_at_the_reduced_floor_only_moves_on_critical() -> None:
    readings = iter(int(f * BUDGET) for f in [0.85, 0.95, *[0.5] * 8])
    recorder = Recorder()
    governor = MemoryGovernor(
        MemoryConfig(budget=BUDGET), EventSink(callback=recorder), 512, lambda: next(readings)
    )

    assert run(governor, 10) == [512, 256, 256, 256, 256, 512, 512, 512, 512, 512]
    assert [(e.old_size, e.new_size) for e in recorder.of(GovernorEvent)] == [
        (512, 256),
        (256, 512),
    ]


def test_a_shrink_request_halves_a_calm_window_and_calm_grows_it_back() -> None:
    """The daemon's host-pressure request acts whatever the worker's own RSS says."""
    control = Controller(EventSink())
    recorder = Recorder()
    governor = MemoryGovernor(
        MemoryConfig(budget=BUDGET),
        EventSink(callback=recorder),
        2048,
        lambda: int(0.3 * BUDGET),
        shrink_requested=control.take_shrink,
        start_window=1024,
    )
    assert governor.window_size == 1024  # an OOM retry: half the configured window
    control.request_shrink()
    sizes = run(governor, 1)
    control.request_shrink()
    sizes += run(governor, 1)
    sizes += run(governor, 8)
    assert sizes == [512, 256, 256, 256, 256, 512, 512, 512, 512, 1024]
    changes = recorder.of(GovernorEvent)
    assert [(e.old_size, e.new_size) for e in changes[:2]] == [(1024, 512), (512, 256)]
    assert changes[0].reason == "the daemon asked: host memory pressure"
    assert governor.window_size <= governor.initial_window == 2048


def test_chunk_rows_and_gdal_cache_follow_the_window_and_budget() -> None:
    governor, _, _ = scripted([0.85, 0.85, 0.95])
    assert governor.gdal_cache_bytes() == int(0.10 * BUDGET)
    assert governor.chunk_rows(512) == 512
    governor.after_window()
    assert governor.chunk_rows(512) == 256
    governor.after_window()
    assert governor.chunk_rows(512) == 128
    governor.after_window()
    assert governor.window_size == 256
    assert governor.chunk_rows(512) == 64
    assert governor.chunk_rows(512, floor=100) == 100


@pytest.mark.parametrize("initial", [0, 300, -256])
def test_initial_window_must_be_a_multiple_of_the_minimum(initial: int) -> None:
    with pytest.raises(ValueError, match=r"multiple of memory\.min_window"):
        MemoryGovernor(MemoryConfig(budget=BUDGET), EventSink(), initial)


@settings(max_examples=40, deadline=None)
@given(
    initial_chunks=st.integers(min_value=1, max_value=16),
    fractions=st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=30),
)
def test_any_reading_sequence_keeps_sizes_on_whole_chunks_within_bounds(
    initial_chunks: int, fractions: list[float]
) -> None:
    config = MemoryConfig(budget=BUDGET)
    initial = initial_chunks * config.min_window
    readings = [int(f * BUDGET) for f in fractions]
    feed = iter(readings)
    recorder = Recorder()
    governor = MemoryGovernor(config, EventSink(callback=recorder), initial, lambda: next(feed))
    previous = initial
    changes = 0
    for rss in readings:
        size = governor.after_window()
        assert size % config.min_window == 0
        assert config.min_window <= size <= initial
        if rss >= config.critical * BUDGET:
            assert size == config.min_window
        elif rss >= config.warning * BUDGET:
            assert size <= previous
        elif rss >= config.calm * BUDGET:
            assert size == previous
        changes += size != previous
        previous = size
    assert len(recorder.of(GovernorEvent)) == changes


def test_real_process_rss_drives_the_window_down_and_back_up() -> None:
    """Allocate real memory in this process and watch the governor react to psutil's RSS."""
    baseline = psutil.Process().memory_info().rss
    # At most half the budget at rest; allocations above glibc's mmap threshold
    # (32 MiB at most) so freeing them really returns the pages.
    budget = max(2 * baseline, 256 * 1024**2)
    recorder = Recorder()
    config = MemoryConfig(budget=budget, calm_windows=2)
    governor = MemoryGovernor(config, EventSink(callback=recorder), 1024)
    assert abs(governor.rss() - baseline) < 0.05 * budget

    assert governor.after_window() == 1024

    first = np.ones(int(0.85 * budget - baseline), dtype=np.uint8)  # ones: pages touched
    assert governor.after_window() == 512
    second = np.ones(int(0.10 * budget), dtype=np.uint8)
    assert governor.after_window() == 256
    del first, second

    assert [governor.after_window() for _ in range(2)] == [256, 512]
    assert [governor.after_window() for _ in range(2)] == [512, 1024]
    levels = [e.level for e in recorder.of(GovernorEvent)]
    assert levels == ["warning", "critical", "normal", "normal"]
    peak = max(e.rss for e in recorder.of(MemoryEvent))
    assert peak >= config.critical * budget


# --------------------------------------------------------------------------- a real worker run

#: Runs the worker and reports the kernel's peak RSS of its children (the worker
#: and its catalog probe): sampled readings between windows would miss spikes.
_PEAK_WRAPPER = (
    "import os, resource, subprocess, sys\n"
    "fd = int(os.environ['GEOD_EVENTS_FD'])\n"
    "code = subprocess.call(sys.argv[1:], pass_fds=(fd,))\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
    "sys.exit(code)\n"
)


@dataclass
class WorkerRun:
    returncode: int
    peak: int
    events: list[Event]
    store: Path

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def run_worker(tmp_path: Path, demo: Path, tag: str, budget: int) -> WorkerRun:
    """catalog + resample of the demo layers onto a 1' regional grid, default 2048 windows."""
    config = {
        "name": tag,
        "datasets": [
            {
                "name": "richness",
                "path": str(demo / "richness_05deg.tif"),
                "resampling": "bilinear",
            },
            {"name": "endemism", "path": str(demo / "endemism_5min.tif"), "resampling": "average"},
            {"name": "landcover", "path": str(demo / "landcover_1min.tif"), "resampling": "mode"},
            {"name": "threat", "path": str(demo / "threat_ease.tif"), "resampling": "average"},
        ],
        "grid": {"crs": "EPSG:4326", "resolution": 1 / 60, "bounds": [-20, -40, 40, 20]},
        "memory": {"budget": budget},
        "paths": {"work_dir": f"work_{tag}", "output_dir": f"out_{tag}"},
        "report": False,
    }
    config_path = tmp_path / f"{tag}.yml"
    config_path.write_text(yaml.safe_dump(config))
    events_path = tmp_path / f"{tag}.ndjson"
    fd = os.open(events_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PEAK_WRAPPER, sys.executable, "-m", "pipeline.worker",
             str(config_path), "--stages", "catalog,resample"],
            env={**os.environ, EVENTS_FD_ENV: str(fd), "PYTHONPATH": str(REPO)},
            pass_fds=(fd,), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        os.close(fd)
    events = [decode(line) for line in events_path.read_text().splitlines()]
    return WorkerRun(
        done.returncode, int(done.stdout.split()[-1]), events, tmp_path / f"work_{tag}"
    )


@pytest.mark.skip(
    reason="premise no longer holds since the pipelined resample and the eager export/report "
    "imports: 2048-pixel windows now cost ~10 MiB over the first reading (was 43-52 MiB), so "
    "no budget sits between the two runs; the test must be rebuilt on a larger window cost"
)
def test_run_under_a_tight_budget_shrinks_windows_stays_under_it_and_matches(
    tmp_path: Path,
) -> None:
    """Issue 8: a budget below what default windows need still gives the same layers."""
    demo = tmp_path / "demo"
    generate(demo, "small")
    loose = run_worker(tmp_path, demo, "loose", 4 * GIB)
    assert loose.returncode == 0 and not loose.of(GovernorEvent)
    first = loose.of(MemoryEvent)[0].rss
    # The premise: 2048-pixel windows really cost memory beyond the first reading
    # (measured: 43–52 MiB over ~190 MiB of imports). The budget sits halfway, so
    # default windows overrun it while the governor, which reacts from the first
    # reading on, has room for its smaller windows.
    assert loose.peak - first > 32 * 1024**2
    budget = first + (loose.peak - first) // 2

    tight = run_worker(tmp_path, demo, "tight", budget)

    assert tight.returncode == 0
    changes = [(e.old_size, e.new_size) for e in tight.of(GovernorEvent)]
    assert changes and changes[0][0] == 2048 and changes[0][1] < 2048
    assert min(e.window_size for e in tight.of(MemoryEvent)) <= 512
    assert tight.peak < budget < loose.peak
    for name in ("richness", "endemism", "landcover", "threat"):
        expected = zarr.open_array(loose.store / STORE_NAME / name, mode="r")[:]
        actual = zarr.open_array(tight.store / STORE_NAME / name, mode="r")[:]
        assert np.array_equal(expected, actual, equal_nan=expected.dtype.kind == "f"), name
