"""The Dask pool batches items into tasks, bounds what is in flight, and survives lost workers.

A real LocalCluster of two worker processes (one thread each), driven in this
process through :class:`~pipeline.executor.dask.DaskExecutor` the way stages
drive it: submit items, take each item's result in order. The task functions
live in this module (spawned workers import it by the parent's ``sys.path``).
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
from distributed import Future

from pipeline.config import PipelineConfig
from pipeline.events import EventSink
from pipeline.executor.dask import (
    HELD_SLOTS,
    INLINE_SHARED_BYTES,
    WORKER_MALLOC_ENVIRON,
    DaskExecutor,
    DaskPool,
    ItemFuture,
)

#: The tests' cluster: two worker processes of one thread each.
WORKERS = 2
#: Per-item sleep of the slow task: 4 of them fill TASK_SECONDS.
SLOW_ITEM = 0.05
TASK_SECONDS = 0.2
TASK_ITEMS = 16
#: Seconds between a gated task's looks at its gate file.
GATE_POLL = 0.01
#: Bound for anything that must not hang (a forced flush, a recomputed shared object).
PATIENCE = 60.0


def _plus_square(shared: dict[str, Any], item: int) -> int:
    """A quick item (microseconds), like a small window on a fast machine."""
    return shared["offset"] + item * item


def _slow(shared: dict[str, int], item: int) -> int:
    """An item of SLOW_ITEM seconds."""
    time.sleep(SLOW_ITEM)
    return shared["offset"] + item


def _gated(shared: dict[str, str], item: int) -> int:
    """An item that finishes only once the test creates its gate file (``<gate>/<item>``)."""
    gate = os.path.join(shared["gate"], str(item))
    deadline = time.monotonic() + PATIENCE
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(GATE_POLL)
    return item


def _open_gates(directory: str, items: range | list[int]) -> None:
    for item in items:
        with open(os.path.join(directory, str(item)), "w"):
            pass


def _imported(module: str) -> bool:
    return module in sys.modules


def _all_imported(executor: DaskExecutor, module: str) -> bool:
    """Whether every worker has imported ``module`` (waiting ``PATIENCE`` at most)."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        if all(executor.client.run(_imported, module).values()):
            return True
        time.sleep(GATE_POLL)
    return False


def _config(**dask: Any) -> PipelineConfig:
    local = {"n_workers": WORKERS, "threads_per_worker": 1, "memory_limit": "1GiB"}
    section = {"local_cluster": local, "task_seconds": TASK_SECONDS, "task_items": TASK_ITEMS}
    return PipelineConfig.model_validate(
        {
            "datasets": [{"name": "unused", "path": "/nonexistent.tif"}],
            "executor": "dask",
            "dask": section | dask,
        }
    )


@pytest.fixture(scope="module")
def executor() -> Iterator[DaskExecutor]:
    opened = DaskExecutor.connect(_config(), EventSink())
    try:
        yield opened
    finally:
        opened.close()


def _drain(pool: DaskPool[Any, int, int], items: list[int], depth: int) -> list[int]:
    """What the stages do: keep ``depth`` items submitted, take results in order."""
    queue: deque[ItemFuture[int]] = deque()
    results = []
    for item in items:
        queue.append(pool.submit(item))
        running = sum(not batch.future.done() for batch in pool._open)
        assert running <= pool._slots and len(pool._open) <= HELD_SLOTS * pool._slots
        while len(queue) > depth:
            results.append(queue.popleft().result())
    while queue:
        results.append(queue.popleft().result())
    return results


def test_quick_items_are_batched_up_to_task_items(executor: DaskExecutor) -> None:
    items = list(range(400))
    depth = executor.parallelism(1)
    slots = WORKERS * 2
    assert depth == HELD_SLOTS * slots * TASK_ITEMS, "full batches for every held slot"
    with executor.pool(_plus_square, {"offset": 7}, 1) as pool:
        assert not isinstance(pool._shared, Future), "a small shared object rides in each task"
        assert _drain(pool, items, depth) == [7 + i * i for i in items]
        assert pool.batch == TASK_ITEMS, "microsecond items grow the batch to its cap"
        assert pool.tasks <= len(items) // 8, f"{pool.tasks} tasks for {len(items)} items"


def test_batch_shrinks_to_task_seconds(executor: DaskExecutor) -> None:
    items = list(range(40))
    with executor.pool(_slow, {"offset": 1}, 1) as pool:
        futures = [pool.submit(item) for item in items]
        assert [future.result() for future in futures] == [1 + i for i in items]
        assert pool.batch == round(TASK_SECONDS / SLOW_ITEM), "batch = task_seconds / per item"
    with executor.pool(_slow, {"offset": 2}, 1) as pool:
        assert pool.batch == round(TASK_SECONDS / SLOW_ITEM), "the next pool starts measured"


def test_slots_bound_tasks_and_free_when_their_task_is_done(
    executor: DaskExecutor, tmp_path: Any
) -> None:
    gates = str(tmp_path)
    with executor.pool(_gated, {"gate": gates}, 1) as pool:
        slots = pool._slots
        assert slots == WORKERS * 2, "one task per worker thread plus one queued per worker"
        items = list(range(3 * slots))
        futures = [pool.submit(item) for item in items]
        # Everything submitted at once, nothing done: `slots` tasks go out, the rest waits.
        assert pool.tasks == slots and len(pool._waiting) == len(items) - slots
        # The first item stays blocked; the other tasks finish. Waiting for the first,
        # the caller refills the slots they freed instead of idling behind it.
        got: list[int] = []
        waiter = threading.Thread(target=lambda: got.append(futures[0].result()), daemon=True)
        waiter.start()
        _open_gates(gates, range(1, slots))
        deadline = time.monotonic() + PATIENCE
        while pool.tasks == slots and time.monotonic() < deadline:
            time.sleep(GATE_POLL)
        # Which tasks can finish depends on where Dask put them (one may queue behind the
        # blocked one); at least one does, and its slot takes the next item.
        assert pool.tasks > slots, "a finished task's slot took the next item"
        assert got == [], "the first item's result is still awaited"
        with pool._lock:
            running = sum(not batch.future.done() for batch in pool._open)
            assert running <= slots and len(pool._open) <= HELD_SLOTS * slots
        _open_gates(gates, items)
        waiter.join(PATIENCE)
        assert got == [0]
        assert [future.result() for future in futures] == items


def test_waiting_on_an_unbatched_item_submits_its_batch(executor: DaskExecutor) -> None:
    with executor.pool(_plus_square, {"offset": 0}, 1) as pool:
        pool.batch = TASK_ITEMS  # as after quick items: three items do not fill a batch
        futures = [pool.submit(item) for item in (2, 3, 4)]
        assert pool.tasks == 0 and not futures[1].done()
        got: list[int] = []
        waiter = threading.Thread(target=lambda: got.append(futures[1].result()), daemon=True)
        waiter.start()
        waiter.join(PATIENCE)
        assert got == [9], "the waited item's batch was submitted, not left to fill"
        assert pool.tasks == 1, "the items waiting before it went in the same task"
        assert [f.result() for f in futures] == [4, 9, 16]


def test_closing_cancels_waiting_items(executor: DaskExecutor) -> None:
    with executor.pool(_slow, {"offset": 0}, 1) as pool:
        futures = [pool.submit(item) for item in range(20)]
    waiting = futures[-1]
    assert waiting.batch is None
    with pytest.raises(concurrent.futures.CancelledError):
        waiting.result()


def test_shared_object_is_recomputed_when_every_worker_is_killed() -> None:
    """Scattered data dies with its workers; the shared object's task is rerun instead."""
    executor = DaskExecutor.connect(_config(), EventSink())
    try:
        items = list(range(200))
        large = b"x" * (INLINE_SHARED_BYTES + 1)
        with executor.pool(_plus_square, {"offset": 3, "ballast": large}, 1) as pool:
            assert isinstance(pool._shared, Future), "a large shared object is a task"
            assert _drain(pool, items[:20], executor.parallelism(1)) == [
                3 + i * i for i in items[:20]
            ]
            victims = executor.client.run(os.getpid)  # {worker address: its process id}
            assert len(victims) == WORKERS
            for pid in victims.values():
                os.kill(pid, signal.SIGKILL)
            started = time.monotonic()
            rest = _drain(pool, items[20:], executor.parallelism(1))
            assert rest == [3 + i * i for i in items[20:]]
            assert time.monotonic() - started < PATIENCE
    finally:
        executor.close()


def test_preload_imports_task_modules_on_every_worker_and_on_joining_ones() -> None:
    module = "pipeline.analysis.gwpca"  # nothing these tests run on a worker imports it
    executor = DaskExecutor.connect(_config(), EventSink())
    try:
        assert not any(executor.client.run(_imported, module).values())
        executor.preload([module])
        assert _all_imported(executor, module), "each worker imported it, with no task run"
        assert executor._cluster is not None
        executor._cluster.scale(WORKERS + 1)
        executor.client.wait_for_workers(WORKERS + 1, timeout=PATIENCE)
        assert _all_imported(executor, module), "a worker that joined later imported it too"
    finally:
        executor.close()


def _malloc_environ() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in WORKER_MALLOC_ENVIRON}


def test_local_cluster_workers_keep_freed_windows_on_the_heap(executor: DaskExecutor) -> None:
    """The workers' processes start with geod's malloc thresholds, not the nanny's 64 KiB trim."""
    expected = {name: str(value) for name, value in WORKER_MALLOC_ENVIRON.items()}
    seen = executor.client.run(_malloc_environ)
    assert len(seen) == WORKERS and all(env == expected for env in seen.values()), seen
