"""MemoryGovernor: the shrink/grow policy on scripted RSS readings, then on this real process."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import MemoryConfig
from pipeline.events import Event, EventSink, GovernorEvent, MemoryEvent
from pipeline.memory import MemoryGovernor

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
