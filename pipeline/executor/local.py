"""The local executor: tasks on threads of the run's own worker process.

GDAL, rasterio, Zarr decoding and numpy's BLAS release the GIL, so threads give
real parallelism for the work units; the pool is created per job and closed with
it, so no thread outlives the stage that used it. A :class:`~pipeline.executor.Staged`
task gets reader threads of its own: its reads run ahead on them and its computes
follow on the compute threads, so decoding and computing overlap.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from pipeline.executor import Staged, TaskFuture

R = TypeVar("R")
S = TypeVar("S")
I = TypeVar("I")  # noqa: E741 - the item type


class ThreadPool(Generic[S, I, R]):
    """``fn(shared, item)`` on ``threads`` threads; with 0, inline when submitted."""

    def __init__(
        self,
        fn: Callable[[S, I], R],
        shared: S,
        threads: int,
        cleanup: Callable[[], None] | None,
        prefix: str,
        readers: int = 0,
    ) -> None:
        self._fn, self._shared, self._cleanup = fn, shared, cleanup
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix=prefix) if threads else None
        staged = isinstance(fn, Staged) and self._threads is not None and readers > 0
        self._readers = (
            ThreadPoolExecutor(readers, thread_name_prefix=f"{prefix}-read") if staged else None
        )

    def __enter__(self) -> ThreadPool[S, I, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, item: I) -> TaskFuture[R]:
        if self._readers is not None:
            return self._submit_staged(item)
        if self._threads is not None:
            return self._threads.submit(self._fn, self._shared, item)
        future: Future[R] = Future()
        future.set_result(self._fn(self._shared, item))
        return future

    def _submit_staged(self, item: I) -> Future[R]:
        """Read on a reader thread; when it is done, compute on a compute thread."""
        assert self._readers is not None and self._threads is not None
        staged: Staged[S, I, Any, R] = self._fn  # type: ignore[assignment]
        threads, shared = self._threads, self._shared
        out: Future[R] = Future()

        def then_compute(read: Future[Any]) -> None:
            if read.cancelled():
                out.cancel()
            elif read.exception() is not None:
                out.set_exception(read.exception())
            else:
                try:
                    computed = threads.submit(staged.compute, shared, item, read.result())
                except RuntimeError:  # the pool is closing: nobody waits for this item
                    out.cancel()
                else:
                    computed.add_done_callback(lambda done: _settle(out, done))

        self._readers.submit(staged.read, shared, item).add_done_callback(then_compute)
        return out

    def close(self) -> None:
        """Drop queued tasks, wait for running ones, then run the job's cleanup."""
        if self._readers is not None:
            self._readers.shutdown(wait=True, cancel_futures=True)
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)
        if self._cleanup is not None:
            self._cleanup()


def _settle(out: Future[R], done: Future[R]) -> None:
    """Pass a finished compute's outcome on to the future its submitter holds."""
    if done.cancelled():
        out.cancel()
    elif done.exception() is not None:
        out.set_exception(done.exception())
    else:
        out.set_result(done.result())


class LocalExecutor:
    """Threads in this process; nothing to connect to or shut down."""

    name = "local"

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
        return ThreadPool(fn, shared, threads, cleanup, f"geod-{fn.__name__}", readers)

    def settle(self) -> None:
        """Nothing to wait for: pool threads finish their window and then idle in the pause."""

    def pressure(self) -> tuple[float, str] | None:
        """Tasks run in this process: its RSS is the whole story."""
        return None

    def close(self) -> None:
        """Pools are closed by the stages that opened them."""
