"""MemoryGovernor: the shrink/grow policy on scripted RSS readings, then on this real process."""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import rasterio
import yaml
import zarr
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from pipeline.config import MemoryConfig
from pipeline.control import Controller
from pipeline.events import (
    EVENTS_FD_ENV,
    CheckpointEvent,
    Event,
    EventSink,
    GovernorEvent,
    MemoryEvent,
    decode,
)
from pipeline.memory import MemoryGovernor, WindowLimit
from pipeline.report.plots import QUICKLOOK_CELLS, quicklook_cells
from pipeline.runner import STORE_NAME
from tests.test_resample import assert_parity

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


def test_a_dask_worker_near_its_limit_shrinks_the_windows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On a cluster the busiest worker's share of its own limit counts like this RSS."""
    governor, recorder, _ = scripted([0.3, 0.3, 0.3])
    shares = iter([0.5, 0.85, None])
    governor.external = lambda: (
        None if (share := next(shares)) is None else (share, "Dask worker tcp://10.0.0.2:4242")
    )
    with caplog.at_level(logging.INFO, logger="geod.memory"):
        assert run(governor, 3) == [2048, 1024, 1024]
    records = [r.getMessage() for r in caplog.records if r.name == "geod.memory"]
    assert records == [
        "window 2048 → 1024: Dask worker tcp://10.0.0.2:4242 at 85 % of its limit "
        "(as 870 MiB) ≥ 80 % of 1.0 GiB"
    ]
    # The samples stay the run's own RSS: the worker's memory has its own series.
    assert [m.rss for m in recorder.of(MemoryEvent)] == [int(0.3 * BUDGET)] * 3


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


def test_fit_caps_the_window_by_estimated_cost_until_cleared() -> None:
    """Room below warning is 0.8 − 0.5 = 0.3 GiB: 40 B/cell fits 2048 (160 MiB), 100 does not."""
    governor, recorder, _ = scripted([0.5] * 22)

    assert governor.fit(40, "cheap") == 2048
    assert not recorder.of(GovernorEvent)
    assert governor.fit(100, "fine") == 1024  # 2048² × 100 B = 400 MiB > 307 MiB
    change = recorder.of(GovernorEvent)[-1]
    assert (change.old_size, change.new_size) == (2048, 1024)
    assert change.reason.startswith("a 2048-pixel window of fine would hold about 400 MiB")
    assert governor.fit(10_000, "huge") == 256  # never below min_window
    # Calm readings grow back to the cap, not past it.
    assert governor.fit(100, "fine") == 256 and governor.window_size == 256
    assert run(governor, 8) == [256, 256, 256, 512, 512, 512, 512, 1024]
    assert run(governor, 4) == [1024] * 4
    governor.clear_ceiling()  # calm all along: grows at the next reading
    assert run(governor, 2) == [2048, 2048]


def test_fit_keeps_a_full_queue_of_windows_within_its_share() -> None:
    """Room for both, but 2048² × 30 B = 120 MiB queued is over a 64 MiB share: 1024."""
    governor, recorder, _ = scripted([0.5] * 4)

    def queue(per_cell: float) -> list[WindowLimit]:
        return [WindowLimit(per_cell, 64 * 1024**2, "queued ahead of the writer", "their share")]

    assert governor.fit(40, "coarse", limits=queue(7.0)) == 2048  # 28 MiB queued
    assert not recorder.of(GovernorEvent)
    assert governor.fit(40, "fine", limits=queue(30.0)) == 1024  # 30 MiB queued
    change = recorder.of(GovernorEvent)[-1]
    assert (change.old_size, change.new_size) == (2048, 1024)
    assert change.reason == (
        "120 MiB of fine's 2048-pixel windows would be queued ahead of the writer; "
        "their share is 64 MiB"
    )


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

    held = hold_rss_at(governor, (config.warning + config.critical) / 2)
    assert governor.after_window() == 512
    held += hold_rss_at(governor, config.critical + 0.05)
    assert governor.after_window() == 256
    del held

    assert [governor.after_window() for _ in range(2)] == [256, 512]
    assert [governor.after_window() for _ in range(2)] == [512, 1024]
    levels = [e.level for e in recorder.of(GovernorEvent)]
    assert levels == ["warning", "critical", "normal", "normal"]
    peak = max(e.rss for e in recorder.of(MemoryEvent))
    assert peak >= config.critical * budget


def hold_rss_at(governor: MemoryGovernor, fraction: float) -> list[np.ndarray]:
    """Touch fresh pages until the governor reads at least ``fraction`` of its budget.

    Topped up in steps rather than computed once: other threads of the test process
    (pools left by earlier tests) may return pages between the reading and the check.
    """
    held = []
    step = int(0.02 * governor.budget)
    while (missing := int(fraction * governor.budget) - governor.rss()) > 0:
        held.append(np.ones(max(missing, step), dtype=np.uint8))  # ones: pages touched
    return held


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
    work: Path
    output: Path

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    def readings(self, dataset: str) -> list[MemoryEvent]:
        return [e for e in self.of(MemoryEvent) if e.stage == f"resample/{dataset}"]


def write_source(path: Path, res: float, dtype: str) -> None:
    """A layer over the test grid's 40° × 30°, a quarter pixel off it (a real warp).

    Written band by band; quantised values so deflate is quick.
    """
    width, height = round(40 / res), round(30 / res)
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": dtype,
        "crs": "EPSG:4326", "transform": Affine(res, 0, res / 4, 0, -res, 30.0),
        "nodata": -9999.0, "tiled": True, "blockxsize": 512, "blockysize": 512,
        "compress": "deflate", "zlevel": 1,
    }  # fmt: skip
    cols = np.arange(width)
    with rasterio.open(path, "w", **profile) as dst:
        for row0 in range(0, height, 512):
            rows = np.arange(row0, min(height, row0 + 512))[:, None]
            band = np.round(np.sin(cols / 97) * np.cos(rows / 61) * 100) + rows * 0.25
            band[rows[:, 0] % 301 < 7] = -9999.0
            dst.write(band, 1, window=Window(0, row0, width, band.shape[0]))


#: How much more than the rest of the run the fine layer's default windows must hold
#: for the tight-budget test's arithmetic to mean anything.
PREMISE_BYTES = 48 * 1024**2
#: The layers of :func:`run_worker`: name and method (each reads ``<name>.tif``). The fine
#: one is cubic, which GDAL warps: average would be computed by separable weights, whose
#: windows hold far less between windows than GDAL's warp buffers and block cache.
LAYERS = {"coarse": "bilinear", "fine": "cubic"}


def run_worker(
    tmp_path: Path, tag: str, budget: int, layers: tuple[str, ...] = tuple(LAYERS)
) -> WorkerRun:
    """catalog + resample (+ the report) of a coarse and a fine layer onto a 1′ grid.

    The coarse one (0.1° float32) is cheap. The fine one (30″ float64) is twice
    as fine as the grid: a 2048-pixel window reads 4096 × 3600 source pixels
    (110 MiB), so its window cost dominates the run.
    """
    config = {
        "name": tag,
        "datasets": [
            {"name": name, "path": str(tmp_path / f"{name}.tif"), "resampling": LAYERS[name]}
            for name in layers
        ],
        "grid": {"crs": "EPSG:4326", "resolution": 1 / 60, "bounds": [0, 0, 40, 30]},
        "memory": {"budget": budget},
        "paths": {"work_dir": f"work_{tag}", "output_dir": f"out_{tag}"},
        "report": True,
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
        done.returncode,
        int(done.stdout.split()[-1]),
        events,
        tmp_path / f"work_{tag}",
        tmp_path / f"out_{tag}",
    )


def map_strides(run: WorkerRun) -> list[int]:
    """The stride each layer's quick-look map was read at, from the run's report."""
    page = (run.output / "report.html").read_text()
    return [int(s) for s in re.findall(r"<figcaption>[^<]*every (\d+)th cell shown", page)]


def test_run_under_a_tight_budget_fits_windows_and_report_and_matches(tmp_path: Path) -> None:
    """A budget the default windows would overrun: smaller windows, same layers, under it.

    The kernel's peak RSS of the worker covers everything: imports, every
    window, and the end-of-run report with its maps.
    """
    write_source(tmp_path / "coarse.tif", 0.1, "float32")
    write_source(tmp_path / "fine.tif", 1 / 120, "float64")
    # Loose: a full queue of the fine layer's 2048-pixel windows fits the queue's
    # share of it (3 × 48 B × 2048² = 576 MiB of 1 GiB).
    loose = run_worker(tmp_path, "loose", 16 * GIB)
    assert loose.returncode == 0 and not loose.of(GovernorEvent)
    # The fine layer's windows are in flight from the stage's start (one queue of
    # windows across datasets): readings between the coarse layer's windows see
    # them too. What the worker holds without them comes from a run without it.
    without_fine = run_worker(tmp_path, "coarse-only", 16 * GIB, ("coarse",))
    assert without_fine.returncode == 0
    before = max(e.rss for e in without_fine.readings("coarse"))
    default_windows = max(e.rss for e in loose.readings("fine"))
    # The premise: the fine layer's default 2048-pixel windows cost far more than
    # the worker holds without them (measured alone: ~290 MiB over ~195 MiB). After
    # most of the suite has run, the same readings came out at 149 over 131 MiB: then
    # no budget separates the two, and there is nothing for the governor to fit.
    if default_windows - before <= PREMISE_BYTES:
        pytest.skip(
            f"the fine layer's windows read {default_windows - before:,} bytes over the rest "
            f"(≤ {PREMISE_BYTES:,}): no budget separates them on this machine state"
        )
    # A budget whose warning level those windows would cross (by 6 %), with room
    # left for the report's drawing stack and small maps after the resample.
    warning = MemoryConfig(budget=GIB).warning
    budget = int(default_windows / (warning + 0.05))

    tight = run_worker(tmp_path, "tight", budget)

    assert tight.returncode == 0
    # Fitted before the fine layer's first window, not after it overran (the coarse
    # layer's windows may have been fitted to the queue's share before it).
    fits = [e for e in tight.of(GovernorEvent) if "window of fine would hold" in e.reason
            or "of fine's" in e.reason]  # fmt: skip
    assert fits and fits[0].new_size <= 1024
    first_fine = next(
        i for i, e in enumerate(tight.events)
        if isinstance(e, CheckpointEvent) and e.dataset == "fine"
    )  # fmt: skip
    assert tight.events.index(fits[0]) < first_fine
    assert all(e.window_size <= 1024 for e in tight.readings("fine"))
    assert tight.peak < budget
    # The report was drawn within the budget: maps never finer than the loose run's,
    # not left out. (Fitted to the queue's share, the windows leave the report about
    # the headroom of the loose run; how the stride follows the headroom is pinned
    # down by test_quick_look_side_follows_the_headroom_left.)
    strides, loose_strides = map_strides(tight), map_strides(loose)
    assert len(strides) == len(loose_strides) == 2
    assert all(s >= ls for s, ls in zip(strides, loose_strides, strict=True))
    for name in ("coarse", "fine"):
        expected = zarr.open_array(loose.work / STORE_NAME / name, mode="r")[:]
        actual = zarr.open_array(tight.work / STORE_NAME / name, mode="r")[:]
        # Other windows, other float64 summation order of `average` at GDAL chunk
        # edges (measured: 2e-13 of a 1073 range): the parity bound, not bits.
        assert_parity(actual, expected, math.nan)


def test_quick_look_side_follows_the_headroom_left() -> None:
    """The report reads its maps at the largest side the budget's headroom pays for."""
    mib = 1024**2
    assert quicklook_cells(200 * mib) == QUICKLOOK_CELLS  # capped
    assert quicklook_cells(100 * mib) == math.isqrt(84 * mib // 256)  # 16 MiB fixed + 256 B/cell
    assert quicklook_cells(100 * mib) < QUICKLOOK_CELLS
    assert quicklook_cells(16 * mib + 63 * 63 * 256) == 0, "too small a map is left out"
    assert quicklook_cells(0) == 0
