"""Where a run's parallel work units run: this process's threads, or a Dask cluster.

Stages never branch on the executor. They hand it a module-level function, one
*shared* object (a resampling job, a merge reader, the GWPCA observations and
their KD-tree) and items (windows, merge parts, batches of points); the
executor returns futures, and the stage consumes the results **in item order on
its own thread**, where it writes, checkpoints and reports progress exactly as
before. So the layer store, its completion manifest, the export files and the
analysis part files are written by the run's worker alone, whichever executor
computed the values, and a run can switch executors between attempts.

``executor: local`` (the default) never imports Dask; ``executor: dask``
connects to ``dask.scheduler_address`` or starts a LocalCluster
(:mod:`pipeline.executor.dask`). The shared object travels to a cluster with
each task (a large one as a task of its own, so the scheduler can recompute it
when the workers holding it die), the items in batches with each task; both
must pickle, so they carry paths and GDAL names, never open datasets.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.context import RunContext
    from pipeline.events import EventSink

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
S = TypeVar("S")
I = TypeVar("I")  # noqa: E741 - the item type, read as "item"
P = TypeVar("P")


class Staged(Generic[S, I, P, R]):
    """A task in two steps: ``read`` (I/O: fetch and decode its input) then ``compute``.

    Called as one function it does both, which is what a cluster task and an
    inline pool do. A local pool opened with ``readers`` runs the reads on reader
    threads ahead of the compute threads, so decoding the next item's input
    overlaps computing this one's even with one compute thread. Module-level
    functions only, so it pickles by reference.
    """

    def __init__(self, read: Callable[[S, I], P], compute: Callable[[S, I, P], R]) -> None:
        self.read, self.compute = read, compute
        self.__name__ = compute.__name__

    def __call__(self, shared: S, item: I) -> R:
        return self.compute(shared, item, self.read(shared, item))


#: Per thread: its hand-off thread and the hand-off it still runs (see hand_off).
_handoff = threading.local()


def hand_off(fn: Callable[..., R], *args: object) -> concurrent.futures.Future[R]:
    """Run ``fn(*args)`` on this thread's own helper thread, once its previous hand-off ends.

    For a task's last step that mostly waits (a window's chunk writes and
    fsyncs on a Dask worker): the task's thread goes on with its batch's next
    item meanwhile, as a local run's writer thread lets its compute threads go
    on. One hand-off in flight per thread bounds what the thread holds to one
    more item. A task function returns the future as its result; the Dask pool
    resolves it before its task returns (:func:`resolved`), so a task is done
    only once its hand-offs are, and a failed one fails the task.
    """
    helper = getattr(_handoff, "helper", None)
    if helper is None:
        name = f"geod-hand-off-{threading.current_thread().name}"
        helper = _handoff.helper = concurrent.futures.ThreadPoolExecutor(1, name)
    previous = getattr(_handoff, "pending", None)
    if previous is not None:  # its error belongs to the task it was returned by
        concurrent.futures.wait([previous])
    pending: concurrent.futures.Future[R] = helper.submit(fn, *args)
    _handoff.pending = pending
    return pending


def resolved(result: R | concurrent.futures.Future[R]) -> R:
    """A task function's result, waiting for it if the function handed it off."""
    return result.result() if isinstance(result, concurrent.futures.Future) else result


class ExecutorError(RuntimeError):
    """The cluster cannot be reached or used; already one line for the user."""


class TaskFuture(Protocol[R_co]):
    """What a submitted task gives back (a ``concurrent.futures`` or Dask future)."""

    def result(self) -> R_co: ...

    def done(self) -> bool: ...


class TaskPool(Protocol[I, R]):
    """Submits ``fn(shared, item)`` tasks of one job; closing it cancels unfinished ones."""

    def submit(self, item: I) -> TaskFuture[R]: ...

    def __enter__(self) -> TaskPool[I, R]: ...

    def __exit__(self, *exc: object) -> None: ...


class Executor(Protocol):
    """A run's executor: opened once by the worker, closed when the run ends."""

    name: str
    #: Tasks run in other processes, maybe on other hosts (sharing the run's work
    #: directory): they write their own results to the store where a stage allows.
    remote: bool

    def parallelism(self, local_threads: int) -> int:
        """Tasks that compute at once: ``local_threads`` here, the cluster's threads on Dask."""
        ...

    def pool(
        self,
        fn: Callable[[S, I], R],
        shared: S,
        threads: int,
        cleanup: Callable[[], None] | None = None,
        readers: int = 0,
    ) -> AbstractContextManager[TaskPool[I, R]]:
        """A pool computing ``fn(shared, item)``; ``threads`` is the local pool's size
        (0: compute inline on submit). ``cleanup`` runs wherever tasks ran, on close.
        ``readers``: threads running a :class:`Staged` task's reads ahead (local only)."""
        ...

    def preload(self, modules: Sequence[str]) -> None:
        """Import ``modules`` (the run's task functions) where tasks run, before the first
        task needs them, without waiting for it."""
        ...

    def settle(self) -> None:
        """Block until none of this run's tasks is computing (before a pause is acknowledged)."""
        ...

    def pressure(self) -> tuple[float, str] | None:
        """The busiest remote worker's memory as a fraction of its limit, and its name;
        None when tasks share this process's memory (the governor reads that itself)."""
        ...

    def window_room(self) -> tuple[float, str] | None:
        """Bytes one window's task may hold on the tightest remote worker, and its name;
        None when tasks run in this process (the run's own budget sizes them)."""
        ...

    def close(self) -> None:
        """Cancel what is left and release the cluster (a LocalCluster is shut down)."""
        ...


def ordered(
    executor: Executor,
    fn: Callable[[S, I], R],
    shared: S,
    items: Iterable[I],
    ahead: int,
) -> Iterator[tuple[I, R]]:
    """``(item, fn(shared, item))`` in item order, computed ahead of the consumer.

    Locally ``ahead`` items are computed on helper threads while the consumer
    handles the current one (0: inline); on a cluster as many as it has threads.
    Closing the iterator early (a stop) cancels what is still queued.
    """
    depth = executor.parallelism(ahead)
    with executor.pool(fn, shared, ahead) as pool:
        queue: deque[tuple[I, TaskFuture[R]]] = deque()
        for item in items:
            queue.append((item, pool.submit(item)))
            while len(queue) > depth:
                done, future = queue.popleft()
                yield done, future.result()
        while queue:
            done, future = queue.popleft()
            yield done, future.result()


class JobPools(Protocol):
    """Opens the pools of jobs of one function that run back to back (:func:`job_pools`)."""

    def pool(
        self, fn: Callable[[S, I], R], shared: S, cleanup: Callable[[], None] | None = None
    ) -> AbstractContextManager[TaskPool[I, R]]: ...


class _PoolPerJob:
    """Each job gets the executor's own pool (a cluster's workers are shared anyway)."""

    def __init__(self, executor: Executor, threads: int, readers: int) -> None:
        self._executor, self._threads, self._readers = executor, threads, readers

    def pool(
        self, fn: Callable[[S, I], R], shared: S, cleanup: Callable[[], None] | None = None
    ) -> AbstractContextManager[TaskPool[I, R]]:
        return self._executor.pool(fn, shared, self._threads, cleanup, self._readers)


@contextmanager
def job_pools(
    executor: Executor, fn: Callable[..., object], threads: int, readers: int = 0
) -> Iterator[JobPools]:
    """Pools for jobs of ``fn`` whose tasks overlap, on threads they share where they can.

    A stage running one job after another (a dataset each) keeps the next job's
    first tasks queued behind the previous job's last ones; with threads of
    their own each job's pool would idle at its tail and pay its start-up. An
    executor with ``lanes`` (the local one) opens its threads once for all the
    jobs; any other gets a pool per job from :meth:`Executor.pool` as before
    (a Dask cluster's workers are shared by its pools already). Each job's pool
    is still closed on its own, cancelling only that job's tasks.
    """
    lanes = getattr(executor, "lanes", None)
    if lanes is None:
        yield _PoolPerJob(executor, threads, readers)
        return
    with lanes(fn, threads, readers) as shared:
        yield shared


def open_executor(config: PipelineConfig, events: EventSink) -> Executor:
    """The run's executor; Dask is imported only for ``executor: dask``."""
    if config.executor == "dask":
        from pipeline.executor.dask import DaskExecutor

        return DaskExecutor.connect(config, events)
    from pipeline.executor.local import LocalExecutor

    return LocalExecutor()


@contextmanager
def run_executor(ctx: RunContext) -> Iterator[Executor]:
    """The run's executor wired into ``ctx`` (stages, pause, governor), closed on the way out."""
    executor = open_executor(ctx.config, ctx.events)
    ctx.executor = executor
    ctx.control.settle = executor.settle
    ctx.governor.external = executor.pressure
    try:
        yield executor
    finally:
        executor.close()
