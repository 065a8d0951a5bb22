"""The local executor: tasks on threads of the run's own worker process.

GDAL, rasterio, Zarr decoding and numpy's BLAS release the GIL, so threads give
real parallelism for the work units; the pool is created per job and closed with
it, so no thread outlives the stage that used it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

from pipeline.executor import TaskFuture

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
    ) -> None:
        self._fn, self._shared, self._cleanup = fn, shared, cleanup
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix=prefix) if threads else None

    def __enter__(self) -> ThreadPool[S, I, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, item: I) -> TaskFuture[R]:
        if self._threads is not None:
            return self._threads.submit(self._fn, self._shared, item)
        future: Future[R] = Future()
        future.set_result(self._fn(self._shared, item))
        return future

    def close(self) -> None:
        """Drop queued tasks, wait for running ones, then run the job's cleanup."""
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)
        if self._cleanup is not None:
            self._cleanup()


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
    ) -> ThreadPool[S, I, R]:
        return ThreadPool(fn, shared, threads, cleanup, f"geod-{fn.__name__}")

    def settle(self) -> None:
        """Nothing to wait for: pool threads finish their window and then idle in the pause."""

    def pressure(self) -> tuple[float, str] | None:
        """Tasks run in this process: its RSS is the whole story."""
        return None

    def close(self) -> None:
        """Pools are closed by the stages that opened them."""
