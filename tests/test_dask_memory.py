"""A Dask worker paused by Dask for memory is a warning log record naming the worker;
its unpausing an info record.

A real LocalCluster whose ``dask.worker_memory.pause`` fraction is below what an
idle worker process already uses: Dask's memory monitor pauses each worker
within moments (a paused worker starts no task), and geod's poll of the
scheduler turns the pause into a ``geod.dask`` warning with the worker's
address in the message and in ``extra.worker``, and into the governor's pressure.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline import load_config, open_store
from pipeline.config import PipelineConfig
from pipeline.events import EventSink, GovernorEvent, MemoryEvent
from pipeline.executor.dask import DASK_WORKER_SAMPLE, DaskExecutor
from tests.dask_support import DASK, LAYERS, quick_config, run_worker

#: Every worker's memory limit; an idle worker process uses ~100 MiB, far above PAUSE of it.
LIMIT = "1GiB"
#: Fractions of LIMIT: an idle worker is over ``pause`` and far under ``terminate``.
TARGET, SPILL, PAUSE = 0.02, 0.03, 0.04
#: Seconds between geod's readings of the scheduler.
INTERVAL = 0.2
#: Bound for Dask's memory monitor and geod's poll to see the pause.
PATIENCE = 30.0
#: A pause fraction no idle worker reaches (below the terminate default 0.95).
UNPAUSE = 0.9


def _raise_pause_fraction(dask_worker: Any) -> None:
    """On the worker: pause only at UNPAUSE of its limit, so Dask's monitor unpauses it."""
    dask_worker.memory_manager.memory_pause_fraction = UNPAUSE


def test_a_worker_paused_for_memory_is_a_warning_naming_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = PipelineConfig.model_validate(
        {
            "datasets": [{"name": "unused", "path": "/nonexistent.tif"}],
            "telemetry": {"memory_interval": INTERVAL},
            "executor": "dask",
            "dask": {
                "local_cluster": {"n_workers": 1, "threads_per_worker": 1, "memory_limit": LIMIT},
                "worker_memory": {"target": TARGET, "spill": SPILL, "pause": PAUSE},
            },
        }
    )
    samples: list[MemoryEvent] = []
    sink = EventSink(callback=lambda e: samples.append(e) if isinstance(e, MemoryEvent) else None)
    caplog.set_level(logging.INFO, logger="geod.dask")
    executor = DaskExecutor.connect(config, sink)
    try:
        (address,) = executor.client.scheduler_info(n_workers=-1)["workers"]
        deadline = time.monotonic() + PATIENCE
        paused: list[logging.LogRecord] = []
        while not paused and time.monotonic() < deadline:
            time.sleep(INTERVAL)
            paused = [r for r in caplog.records if "paused for memory" in r.getMessage()]
        assert paused, "no warning while the worker is paused for memory"
        (record,) = paused
        assert record.levelno == logging.WARNING
        assert address in record.getMessage() and record.__dict__["worker"] == address
        pressure = executor.pressure()
        assert pressure is not None and pressure[0] > PAUSE and address in pressure[1]
        mine = [s for s in samples if s.worker == address]
        assert mine and all(s.operation == DASK_WORKER_SAMPLE for s in mine)
        assert mine[-1].critical == PAUSE, "the sample carries the pause level as critical"
        # Above the worker's memory again: Dask unpauses it, and the log says so.
        executor.client.run(_raise_pause_fraction)
        deadline = time.monotonic() + PATIENCE
        resumed: list[logging.LogRecord] = []
        while not resumed and time.monotonic() < deadline:
            time.sleep(INTERVAL)
            resumed = [r for r in caplog.records if "running again" in r.getMessage()]
        assert resumed and resumed[0].__dict__["worker"] == address
    finally:
        executor.close()


def test_windows_are_fitted_to_the_dask_workers_memory(demo_dir: Path, tmp_path: Path) -> None:
    """A worker's share of its limit below Dask's target holds a 1024-pixel window of no
    layer: the windows are cut to fit it before the first one runs, and the run is whole.

    1 GiB × target 0.01 over a window computing and one written behind: ~5 MiB per task, while a
    1024-pixel window of the demo layers holds ~9 MiB (its float32 outputs twice).
    """
    config = quick_config(
        tmp_path,
        demo_dir,
        **{
            **DASK,
            "dask": {
                "local_cluster": {"n_workers": 2, "threads_per_worker": 1, "memory_limit": "1GiB"},
                "worker_memory": {"target": 0.01},
            },
            "resampling": {"window_size": 1024, "threads": 1},
            "analysis": {"methods": []},
        },
    )
    run = run_worker(config)
    assert run.code == 0, run.stderr[-2000:]
    fits = [e for e in run.events if isinstance(e, GovernorEvent)]
    assert fits, "the windows were never fitted to the workers"
    first = fits[0]
    assert first.old_size == 1024 and first.new_size <= 512
    assert re.search(
        r"would be on Dask worker tcp://[\d.]+:\d+ at once; one task's share is \d+ MiB",
        first.reason,
    ), first.reason
    checkpoints = run.checkpoints()
    assert {c.dataset for c in checkpoints} >= set(LAYERS)
    assert all(c.width <= 512 and c.height <= 512 for c in checkpoints)
    assert run.events.index(first) < run.events.index(checkpoints[0])
    store = open_store(load_config(config))
    for layer in LAYERS:
        assert store.verify(layer) == store.total_chunks()
