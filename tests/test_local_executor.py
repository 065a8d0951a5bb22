"""Pools of several jobs sharing one set of threads (the resample stage's datasets).

Real threads throughout: tasks block on events to pin down what is queued,
running or read when a pool closes.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError

import pytest

from pipeline.executor import Staged, job_pools
from pipeline.executor.local import LocalExecutor

#: Seconds any one handoff between threads may take before the test fails.
HANDOFF_TIMEOUT = 10.0


class Job:
    """One job's shared object: records which items it read and computed, and where."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.read: list[int] = []
        self.computed: list[int] = []
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.reading = threading.Event()
        self.cleaned = False

    def cleanup(self) -> None:
        self.cleaned = True


def _read(job: Job, item: int) -> int:
    job.reading.set()
    assert job.gate.wait(HANDOFF_TIMEOUT), "the test never opened the gate"
    job.read.append(item)
    return item * 10


def _compute(job: Job, item: int, read: int) -> str:
    job.computed.append(item)
    job.threads.add(threading.current_thread().name)
    return f"{job.name}{read + 1}"


def _whole(job: Job, item: int) -> str:
    return _compute(job, item, _read(job, item))


STAGED = Staged(_read, _compute)


def _outcome(future: object) -> str:
    try:
        return future.result(timeout=HANDOFF_TIMEOUT)  # type: ignore[attr-defined]
    except CancelledError:
        return "cancelled"


def test_pools_of_two_jobs_share_the_threads_and_keep_their_own_results() -> None:
    first, second = Job("a"), Job("b")
    lanes = LocalExecutor().lanes(STAGED, threads=2, readers=1)
    with lanes, lanes.pool(STAGED, first) as one, lanes.pool(STAGED, second) as two:
        futures = [one.submit(i) for i in range(4)] + [two.submit(i) for i in range(4)]
        results = [_outcome(future) for future in futures]
    assert results == ["a1", "a11", "a21", "a31", "b1", "b11", "b21", "b31"]
    assert first.threads | second.threads <= {f"geod-_compute_{n}" for n in range(2)}


def test_closing_one_pool_cancels_only_its_own_queued_tasks() -> None:
    first, second = Job("a"), Job("b")
    second.gate.clear()  # b's first task holds the only compute thread
    with LocalExecutor().lanes(_whole, threads=1) as lanes:
        two = lanes.pool(_whole, second, second.cleanup)
        blocking = two.submit(0)
        assert second.reading.wait(HANDOFF_TIMEOUT)
        one = lanes.pool(_whole, first, first.cleanup)
        queued = [one.submit(i) for i in range(3)]
        after = two.submit(1)
        one.close()  # a's tasks are all queued behind b's: none runs
        assert first.cleaned and not second.cleaned
        second.gate.set()
        assert [_outcome(f) for f in (blocking, after)] == ["b1", "b11"]
        two.close()
    assert [_outcome(f) for f in queued] == ["cancelled"] * 3
    assert first.computed == [] and second.computed == [0, 1] and second.cleaned


def test_a_read_finishing_after_its_pool_closed_launches_no_compute() -> None:
    job = Job("a")
    job.gate.clear()
    with LocalExecutor().lanes(STAGED, threads=1, readers=1) as lanes:
        pool = lanes.pool(STAGED, job, job.cleanup)
        future = pool.submit(7)
        assert job.reading.wait(HANDOFF_TIMEOUT), "the read is running"
        closing = threading.Thread(target=pool.close)
        closing.start()
        for _ in range(1000):  # close waits for the running read; let it get there
            if pool.closed:
                break
            threading.Event().wait(HANDOFF_TIMEOUT / 1000)
        assert pool.closed
        job.gate.set()
        closing.join(HANDOFF_TIMEOUT)
        assert not closing.is_alive()
        assert job.cleaned, "cleanup ran once the running read was done"
        # A task submitted on the lanes now runs at once: no compute of the closed pool
        # is queued ahead of it.
        other = Job("b")
        assert lanes.pool(STAGED, other).submit(1).result(timeout=HANDOFF_TIMEOUT) == "b11"
    assert job.read == [7] and job.computed == []
    assert _outcome(future) == "cancelled"


def test_a_closed_pool_cancels_what_is_submitted_to_it() -> None:
    job = Job("a")
    with LocalExecutor().lanes(STAGED, threads=1, readers=1) as lanes:
        pool = lanes.pool(STAGED, job)
        pool.close()
        assert _outcome(pool.submit(1)) == "cancelled"
    assert job.read == [] and job.computed == []


def test_a_failing_task_fails_its_own_item_only() -> None:
    def broken(job: Job, item: int) -> str:
        raise ValueError(f"{job.name}{item} cannot be computed")

    first, second = Job("a"), Job("b")
    lanes = LocalExecutor().lanes(broken, threads=2)
    with lanes, lanes.pool(broken, first) as one, lanes.pool(_whole, second) as two:
        bad, good = one.submit(1), two.submit(2)
        with pytest.raises(ValueError, match="a1 cannot be computed"):
            bad.result(timeout=HANDOFF_TIMEOUT)
        assert good.result(timeout=HANDOFF_TIMEOUT) == "b21"


def test_without_threads_a_shared_pool_computes_inline() -> None:
    job = Job("a")
    with LocalExecutor().lanes(STAGED, threads=0, readers=1) as lanes:
        future = lanes.pool(STAGED, job).submit(3)
        assert future.done() and future.result() == "a31"
    assert job.threads == {threading.current_thread().name}


class _PoolsOnly:
    """An executor without ``lanes`` (as the Dask one): every job gets its own pool."""

    name = "pools-only"

    def __init__(self) -> None:
        self.local = LocalExecutor()
        self.opened = 0

    def pool(self, fn, shared, threads, cleanup=None, readers=0):  # type: ignore[no-untyped-def]
        self.opened += 1
        return self.local.pool(fn, shared, threads, cleanup, readers)


def test_job_pools_open_a_pool_per_job_where_the_executor_has_no_lanes() -> None:
    executor, first, second = _PoolsOnly(), Job("a"), Job("b")
    with job_pools(executor, STAGED, threads=1, readers=1) as pools:  # type: ignore[arg-type]
        with pools.pool(STAGED, first, first.cleanup) as one:
            assert one.submit(1).result(timeout=HANDOFF_TIMEOUT) == "a11"
        with pools.pool(STAGED, second) as two:
            assert two.submit(2).result(timeout=HANDOFF_TIMEOUT) == "b21"
    assert executor.opened == 2 and first.cleaned


def test_job_pools_share_the_local_threads() -> None:
    first, second = Job("a"), Job("b")
    with (
        job_pools(LocalExecutor(), STAGED, threads=1, readers=1) as pools,
        pools.pool(STAGED, first) as one,
        pools.pool(STAGED, second) as two,
    ):
        assert one.submit(1).result(timeout=HANDOFF_TIMEOUT) == "a11"
        assert two.submit(2).result(timeout=HANDOFF_TIMEOUT) == "b21"
    assert first.threads == second.threads == {"geod-_compute_0"}
