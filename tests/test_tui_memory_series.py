"""The memory panel's series: the run's own memory or one of its Dask workers (``M``).

A run on a Dask executor also sends each worker's memory (``MemoryEvent.worker``).
Those samples must never mix into the run's own series, and the panel must be able
to show any one worker against its own limit, named in the panel's title.
"""

from __future__ import annotations

from pipeline.events import MemoryEvent
from pipeline.executor.dask import DASK_WORKER_SAMPLE
from tests import tui_recording as rec
from tests.tui_support import loaded_state, pilot_test, until
from tui.app import GeodApp
from tui.state import DashboardState

_MIB = 1024 * 1024
WORKERS = ("tcp://127.0.0.1:39001", "tcp://127.0.0.1:39002")
#: Worker limit (its budget in the panel) and Dask's spill / pause fractions.
LIMIT = 1024 * _MIB
SPILL, PAUSE = 0.7, 0.8


def _worker_samples(worker: str, base_mib: int, count: int = 10) -> list[MemoryEvent]:
    return [
        MemoryEvent(
            run=rec.RUN,
            time=rec.T0 + 2 * index,
            rss=(base_mib + index) * _MIB,
            budget=LIMIT,
            warning=SPILL,
            critical=PAUSE,
            operation=DASK_WORKER_SAMPLE,
            worker=worker,
        )
        for index in range(count)
    ]


def _state_with_workers() -> DashboardState:
    state = loaded_state()
    for worker, base in zip(WORKERS, (100, 300), strict=True):
        for event in _worker_samples(worker, base):
            state.apply_event(event)
    return state


def test_worker_samples_keep_to_their_own_series() -> None:
    plain = loaded_state().runs[rec.RUN]
    view = _state_with_workers().runs[rec.RUN]
    assert list(view.memory) == list(plain.memory)
    assert list(view.worker_memory) == list(plain.worker_memory)
    assert sorted(view.workers) == sorted(WORKERS)
    first = view.workers[WORKERS[0]]
    assert [sample.rss for sample in first.samples] == [(100 + i) * _MIB for i in range(10)]
    assert (first.levels.budget, first.levels.warning, first.levels.critical) == (
        LIMIT,
        SPILL,
        PAUSE,
    )


def test_a_resync_does_not_repeat_worker_samples() -> None:
    state = _state_with_workers()
    state.merge_memory(rec.RUN, _worker_samples(WORKERS[0], 100, count=12))
    samples = state.runs[rec.RUN].workers[WORKERS[0]].samples
    assert [sample.time for sample in samples] == [rec.T0 + 2 * i for i in range(12)]


@pilot_test
async def test_m_cycles_the_memory_panel_through_the_workers_and_back() -> None:
    app = GeodApp(state=_state_with_workers(), connect=False)
    async with app.run_test(size=(120, 40)) as pilot:
        chart = app.memory_chart
        await until(pilot, lambda: str(chart.border_title).startswith("run · RSS "))
        own = str(chart.border_title)
        await pilot.press("M")
        await until(pilot, lambda: "worker 127.0.0.1:39001" in str(chart.border_title))
        # The worker's last sample against its own limit: 109 MiB of 1 GiB.
        assert str(chart.border_title) == (
            "worker 127.0.0.1:39001 · RSS 109.0 MiB · peak 109.0 MiB · budget 1.0 GiB (11 %)"
        )
        assert "window px" not in str(chart.border_subtitle), "a worker has no window size"
        await pilot.press("M")
        await until(pilot, lambda: "worker 127.0.0.1:39002" in str(chart.border_title))
        assert "RSS 309.0 MiB" in str(chart.border_title)
        await pilot.press("M")
        await until(pilot, lambda: str(chart.border_title) == own)


@pilot_test
async def test_m_without_workers_says_so_and_keeps_the_title() -> None:
    app = GeodApp(state=loaded_state(), connect=False)
    async with app.run_test(size=(120, 40)) as pilot:
        chart = app.memory_chart
        await until(pilot, lambda: str(chart.border_title).startswith("RSS "))
        title = str(chart.border_title)
        await pilot.press("M")
        await until(
            pilot, lambda: any("no Dask workers" in str(n.message) for n in app._notifications)
        )
        assert str(chart.border_title) == title
