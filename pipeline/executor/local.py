"""The local executor: tasks on threads of the run's own worker process.

GDAL, rasterio, Zarr decoding and numpy's BLAS release the GIL, so threads give
real parallelism for the work units; no thread outlives the stage that used it.
A :class:`~pipeline.executor.Staged` task gets reader threads: its reads run
ahead on them and its computes follow on the compute threads, so decoding and
computing overlap.

A pool normally owns its threads and is closed with its job. A stage that runs
several jobs back to back (the resample stage: one job per dataset) opens
:class:`ThreadLanes` once instead and a pool per job on them, so the next job's
first items read and compute while the previous job's last ones finish, and
no pool's threads sit idle at a job's tail. Each pool then tracks its own
tasks: closing it cancels only those, and a read that finishes after its pool
closed launches no compute.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Generic, TypeVar

from pipeline.executor import Staged, TaskFuture

R = TypeVar("R")
S = TypeVar("S")
I = TypeVar("I")  # noqa: E741 - the item type


class ThreadLanes:
    """Compute threads (and reader threads) that any number of pools submit to.

    ``threads`` 0: there are none, and pools compute inline when submitted.
    ``readers`` 0: a :class:`Staged` task reads and computes in one go on a
    compute thread. Closing the lanes drops whatever is still queued on them.
    """

    def __init__(self, threads: int, readers: int, prefix: str) -> None:
        self.compute = ThreadPoolExecutor(threads, thread_name_prefix=prefix) if threads else None
        self.read = (
            ThreadPoolExecutor(readers, thread_name_prefix=f"{prefix}-read")
            if threads and readers
            else None
        )

    def __enter__(self) -> ThreadLanes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pool(
        self,
        fn: Callable[[S, I], R],
        shared: S,
        cleanup: Callable[[], None] | None = None,
    ) -> ThreadPool[S, I, R]:
        """A pool of one job on these lanes; closing it leaves the lanes open."""
        return ThreadPool(fn, shared, cleanup, self, owns_lanes=False)

    def close(self) -> None:
        """Drop queued tasks, wait for running ones."""
        if self.read is not None:
            self.read.shutdown(wait=True, cancel_futures=True)
        if self.compute is not None:
            self.compute.shutdown(wait=True, cancel_futures=True)


class ThreadPool(Generic[S, I, R]):
    """``fn(shared, item)`` on the threads of ``lanes``; with none, inline when submitted.

    The pool remembers its unfinished tasks (reads and computes) so that
    :meth:`close` can cancel exactly those and wait for the ones already
    running before its cleanup closes what they use; other pools' tasks on the
    same lanes carry on.
    """

    def __init__(
        self,
        fn: Callable[[S, I], R],
        shared: S,
        cleanup: Callable[[], None] | None,
        lanes: ThreadLanes,
        owns_lanes: bool = True,
    ) -> None:
        self._fn, self._shared, self._cleanup = fn, shared, cleanup
        self._lanes, self._owns_lanes = lanes, owns_lanes
        self._staged = isinstance(fn, Staged) and lanes.read is not None
        self._lock = threading.Lock()
        self._closed = False
        self._tasks: set[Future[Any]] = set()

    def __enter__(self) -> ThreadPool[S, I, R]:
        return self

    @property
    def closed(self) -> bool:
        """Closing or closed: submits are cancelled, finished reads launch no compute."""
        return self._closed

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _track(self, submit: Callable[[], Future[Any]]) -> Future[Any] | None:
        """Submit under the lock unless the pool is closed; remember the task until it ends."""
        with self._lock:
            if self._closed:
                return None
            task = submit()
            self._tasks.add(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: Future[Any]) -> None:
        with self._lock:
            self._tasks.discard(task)

    def submit(self, item: I) -> TaskFuture[R]:
        compute = self._lanes.compute
        if compute is None:
            future: Future[R] = Future()
            future.set_result(self._fn(self._shared, item))
            return future
        if self._staged:
            return self._submit_staged(item)
        out: Future[R] = Future()
        task = self._track(lambda: compute.submit(self._fn, self._shared, item))
        if task is None:
            out.cancel()
        else:
            task.add_done_callback(lambda done: _settle(out, done))
        return out

    def _submit_staged(self, item: I) -> Future[R]:
        """Read on a reader thread; when it is done, compute on a compute thread."""
        reader, compute = self._lanes.read, self._lanes.compute
        assert reader is not None and compute is not None
        staged: Staged[S, I, Any, R] = self._fn  # type: ignore[assignment]
        shared = self._shared
        out: Future[R] = Future()

        def then_compute(read: Future[Any]) -> None:
            if read.cancelled():
                out.cancel()
            elif read.exception() is not None:
                out.set_exception(read.exception())
            else:
                try:
                    task = self._track(
                        lambda: compute.submit(staged.compute, shared, item, read.result())
                    )
                except RuntimeError:  # the lanes are closing: nobody waits for this item
                    task = None
                if task is None:  # this pool (or the lanes) closed while the item was read
                    out.cancel()
                else:
                    task.add_done_callback(lambda done: _settle(out, done))

        read = self._track(lambda: reader.submit(staged.read, shared, item))
        if read is None:
            out.cancel()
        else:
            read.add_done_callback(then_compute)
        return out

    def close(self) -> None:
        """Cancel this pool's queued tasks, wait for its running ones, then run the cleanup."""
        with self._lock:
            self._closed = True
            tasks = list(self._tasks)
        # A cancelled task counts as done for ``wait`` only once a worker has dequeued
        # it; wait for the ones that could not be cancelled (running or finished).
        wait([task for task in tasks if not task.cancel()])
        if self._owns_lanes:
            self._lanes.close()
        if self._cleanup is not None:
            self._cleanup()


def _settle(out: Future[R], done: Future[R]) -> None:
    """Pass a finished task's outcome on to the future its submitter holds."""
    if done.cancelled():
        out.cancel()
    elif done.exception() is not None:
        out.set_exception(done.exception())
    else:
        out.set_result(done.result())


class LocalExecutor:
    """Threads in this process; nothing to connect to or shut down."""

    name = "local"
    remote = False

    def parallelism(self, local_threads: int) -> int:
        return local_threads

    def pool(
        self,
        fn: Callable[[S, I], R],
        shared: S,
        threads: int,
        cleanup: Callable[[], None] | None = None,
        readers: int = 0,
    ) -> ThreadPool[S, I, R]:
        lanes = ThreadLanes(threads, readers if isinstance(fn, Staged) else 0, _prefix(fn))
        return ThreadPool(fn, shared, cleanup, lanes)

    def lanes(self, fn: Callable[..., object], threads: int, readers: int = 0) -> ThreadLanes:
        """Threads shared by the pools of several jobs of ``fn`` (see the module docstring)."""
        return ThreadLanes(threads, readers if isinstance(fn, Staged) else 0, _prefix(fn))

    def preload(self, modules: Sequence[str]) -> None:
        """Nothing to do: tasks run in this process, and each stage imports its own modules."""

    def settle(self) -> None:
        """Nothing to wait for: pool threads finish their window and then idle in the pause."""

    def pressure(self) -> tuple[float, str] | None:
        """Tasks run in this process: its RSS is the whole story."""
        return None

    def window_room(self) -> tuple[float, str] | None:
        """Tasks run in this process: the run's budget sizes their windows."""
        return None

    def close(self) -> None:
        """Pools are closed by the stages that opened them."""


def _prefix(fn: Callable[..., object]) -> str:
    """Thread name prefix: which function the threads run (shows in logs and py-spy)."""
    return f"geod-{getattr(fn, '__name__', 'task')}"
