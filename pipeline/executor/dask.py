"""The Dask executor: work units as tasks on a Dask distributed cluster, steered by the run.

The run's worker process is the Dask *client*. It connects to
``dask.scheduler_address`` (an existing ``dask scheduler`` with its ``dask
worker``\\ s) or starts a LocalCluster of ``dask.local_cluster`` worker processes
(children of the run's worker, in its process group, closed with the run). Each
job's shared object travels inside its tasks, or, when large, is the result of
one task that every item task depends on (recomputed if the workers holding it
die); consecutive items are batched into tasks of about ``dask.task_seconds`` of
work (:class:`DaskPool`). Results come
back to the run's worker, which writes, checkpoints and reports them in order
(:mod:`pipeline.executor`), so the daemon steers a Dask run with the same
signals as a local one:

* pause: the stage stops taking results at the next boundary, so nothing new is
  submitted; :meth:`DaskExecutor.settle` waits until none of the run's tasks is
  computing, and only then is the pause acknowledged;
* stop (kill): the pools cancel their futures; :meth:`DaskExecutor.close`
  closes the client and shuts the LocalCluster down (no worker process is left);
* a lost Dask worker: the scheduler reruns its tasks elsewhere (up to
  ``distributed.scheduler.allowed-failures``); a task that *raised* is
  resubmitted ``dask.retries`` times. The departure is a warning log record.

The memory governor on a cluster: the busiest worker's memory as a fraction of
its Dask memory limit counts as the run's pressure (:meth:`DaskExecutor.pressure`),
so a worker near its limit shrinks the windows, merge parts and GWPCA chunks as
the run's own RSS near its budget would.

Telemetry: every ``telemetry.memory_interval`` the scheduler's view of each
worker (process memory, memory limit, status) becomes a
:class:`~pipeline.events.MemoryEvent` labelled with the worker's address; a
worker Dask paused for memory is a warning log record (its unpausing an info
one). Log records of the ``geod`` loggers inside tasks are forwarded to the
run's worker (``Client.forward_logging``) and become LogEvents whose
``extra.worker`` is the Dask worker's address.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import logging
import pickle
import signal
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import dask
import psutil
from distributed import Client, Future, LocalCluster, wait
from distributed.diagnostics.plugin import WorkerPlugin

from pipeline.config import DaskConfig, PipelineConfig
from pipeline.events import EventSink, MemoryEvent
from pipeline.executor import ExecutorError, resolved
from pipeline.memory import format_bytes

log = logging.getLogger("geod.dask")

R = TypeVar("R")
S = TypeVar("S")
I = TypeVar("I")  # noqa: E741 - the item type

#: Logger hierarchy forwarded from tasks to the run's worker.
FORWARDED_LOGGER = "geod"
#: ``MemoryEvent.operation`` of the per-Dask-worker samples.
DASK_WORKER_SAMPLE = "dask-worker"
#: Milliseconds per second, for the pool's summary line.
MS = 1000.0
#: Seconds between looks at a batch's task while waiting for it, should the callback that
#: reports its completion never come (a client closing under it).
DONE_POLL_SECONDS = 1.0
#: Batches a pool keeps, running or done with results not yet taken, per task slot: a
#: slot whose task is done takes the next batch, and results wait for the caller.
HELD_SLOTS = 2
#: Pickled size up to which a pool's shared object travels inside each task rather than
#: as a task of its own (see DaskPool): a dataset's job is ~3 KiB, GWPCA's tree ~30 MiB.
INLINE_SHARED_BYTES = 1 << 20
#: Windows a Dask worker's thread holds at once: one computing, one written behind it.
WINDOWS_PER_THREAD = 2
#: glibc's malloc settings for a LocalCluster's workers, over the nanny's
#: ``MALLOC_TRIM_THRESHOLD_=65536``. Setting any threshold turns glibc's adaptive mmap
#: threshold off, so with Dask's alone every array over 128 KiB (a 256-pixel float32
#: window is 256 KiB) was a fresh mmap whose pages were faulted in and zeroed, then
#: unmapped: ~20 % more CPU per window (A/B, 1 worker: 6.61 -> 5.36 s). Now arrays up to
#: 32 MiB come from the heap and up to 64 MiB freed at its top is kept for the next
#: window; a worker's peak RSS on the demo stayed within 5 MiB of Dask's setting.
WORKER_MALLOC_ENVIRON = {"MALLOC_MMAP_THRESHOLD_": 32 << 20, "MALLOC_TRIM_THRESHOLD_": 64 << 20}
#: Dask's status of a worker that stopped starting tasks for memory.
PAUSED_STATUS = "paused"
#: Dask's own ``distributed.worker.memory.target`` default: the fraction of its limit
#: a worker of an existing cluster starts spilling at (a LocalCluster gets geod's).
DASK_DEFAULT_TARGET = 0.6


class _LogLevel(WorkerPlugin):
    """Lets INFO records of the ``geod`` loggers reach the forwarding handler on every worker.

    A worker's loggers default to WARNING; a plugin (rather than a one-off
    ``Client.run``) also reaches workers that join or restart later.
    """

    name = "geod-log-level"

    def setup(self, worker: Any) -> None:
        logging.getLogger(FORWARDED_LOGGER).setLevel(logging.INFO)


class _Preload(WorkerPlugin):
    """Imports the run's task modules on each worker in a background thread as it joins.

    Otherwise a worker imports them when it unpickles its first task (the
    resample stage's: rasterio, zarr, scipy; ~0.5 s on a worker that has Dask
    loaded), inside the stage, while the run waits on that task. Imported while
    the run's worker still opens its sources, they are ready (or half-way, the
    task then waits on Python's import lock for the rest) when the first task
    comes. A plugin rather than ``Client.run`` so a worker that joins or
    restarts later (a lost worker's replacement) preloads too.
    """

    name = "geod-preload"

    def __init__(self, modules: tuple[str, ...]) -> None:
        self.modules = modules

    def setup(self, worker: Any) -> None:
        threading.Thread(
            target=_import_all, args=(self.modules,), name="geod-preload", daemon=True
        ).start()


def _import_all(modules: tuple[str, ...]) -> None:
    """Import each module; one that fails is left to the task that needs it to report."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            log.debug("preloading %s failed: %s", module, exc)


class _Futures:
    """Futures still referenced by a stage (held weakly: a consumed one drops out by itself)."""

    def __init__(self) -> None:
        self._futures: weakref.WeakSet[Future] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, future: Future) -> None:
        with self._lock:
            self._futures.add(future)

    def unfinished(self) -> list[Future]:
        with self._lock:
            return [future for future in self._futures if not future.done()]


@dataclass(frozen=True)
class _Items(Generic[S, I, R]):
    """One task's function and items, in an object Dask does not look inside.

    Dask scans a task's list and tuple arguments for keys and futures; the items
    (windows, ``(index, part, …)`` tuples) are plain data, so they travel wrapped.
    """

    fn: Callable[[S, I], R]
    items: tuple[I, ...]


def _shared_value(shared: S) -> S:
    """A job's shared object as the result of a task (see :class:`DaskPool`)."""
    return shared


def _run_batch(shared: S, batch: _Items[S, I, R]) -> tuple[list[R], float]:
    """``fn(shared, item)`` for each item in order, and the seconds they took on the worker.

    An item's result may be a :func:`~pipeline.executor.hand_off` future: the next
    item computes while it finishes, and the task returns once all have.
    """
    started = time.perf_counter()
    results = [batch.fn(shared, item) for item in batch.items]
    return [resolved(result) for result in results], time.perf_counter() - started


class _Batch(Generic[R]):
    """A submitted task of several items; it holds its slot until each item's result is taken."""

    def __init__(self, future: Future, size: int) -> None:
        self.future, self.size = future, size
        self.taken = 0
        self.outcome: tuple[list[R], float] | None = None


class ItemFuture(Generic[R]):
    """One item's result inside a batched task: what :meth:`DaskPool.submit` returns.

    Until its batch is submitted the item waits in the pool; asking for its
    result submits it at once (with the items waiting before it), so a caller
    that drains in order never waits on a batch that is still filling.
    """

    def __init__(self, pool: DaskPool[Any, Any, R]) -> None:
        self._pool = pool
        self.batch: _Batch[R] | None = None
        self.index = 0
        self.cancelled = False
        #: Its result was taken (counted towards freeing its batch's slot once).
        self.taken = False

    def done(self) -> bool:
        return self.batch is not None and self.batch.future.done()

    def result(self) -> R:
        return self._pool.result(self)


class DaskPool(Generic[S, I, R]):
    """Tasks of ``fn(shared, item)`` over batches of consecutive items of one job.

    Batching: a task computes up to ``batch`` consecutive items, ``batch``
    adapting to ``dask.task_seconds`` of measured work (from 1 up to
    ``dask.task_items``), because scheduling a task costs ~10 ms and a window
    ~1 ms. Each item keeps its own future (:class:`ItemFuture`) and results
    are taken in item order, as with the local executor.

    Bounded: at most ``threads + 1`` tasks per worker compute or wait on the
    cluster (a slot is freed when its task is done, whatever the order), and
    at most :data:`HELD_SLOTS` times that many batches are kept until their
    results are taken, so the run's worker holds a bounded number of batches
    of results; submitted items beyond that wait here (as plain items) until
    room frees, or until the caller asks for one of them. Waiting items are
    submitted in full batches when room frees while the caller takes or waits
    for a result, or when it waits for one of them; never on a timer, so a
    paused run (its stage blocked at a checkpoint) starts no task.

    A small shared object (a dataset's job, a merge reader: a few KiB pickled)
    travels inside each task. A large one (GWPCA's observations and KD-tree) is
    the result of a task of its own, not scattered data: the scheduler keeps
    the task and recomputes the object on another worker when the workers
    holding it die (scattered data would be lost with them). Small ones are not
    made a dependency because Dask runs a task where its dependencies are: every
    batch of a new job would queue on the one worker holding its object until
    work stealing moved it (the other worker idle ~0.3 s at each dataset).
    """

    def __init__(
        self,
        executor: DaskExecutor,
        fn: Callable[[S, I], R],
        shared: S,
        cleanup: Callable[[], None] | None,
    ) -> None:
        self._executor, self._fn, self._cleanup = executor, fn, cleanup
        self._client = executor.client
        self._name = getattr(fn, "__name__", "task")
        #: What each task gets as its first argument: the object, or the task computing it.
        self._shared: S | Future = shared
        if len(pickle.dumps(shared, protocol=pickle.HIGHEST_PROTOCOL)) > INLINE_SHARED_BYTES:
            self._shared = self._client.submit(
                _shared_value,
                shared,
                key=f"geod-shared-{self._name}-{uuid.uuid4().hex}",
                pure=False,
            )
        self._live = _Futures()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._waiting: deque[tuple[I, ItemFuture[R]]] = deque()
        self._open: deque[_Batch[R]] = deque()
        self._slots = executor.task_slots()
        self._max_items = executor.task_items
        self._target = executor.task_seconds
        #: Items finished and their seconds on workers, for the per-item time.
        self._measured_items = 0
        self._measured_seconds = 0.0
        self.batch = executor.batch_hint(self._name)
        #: Tasks submitted (for tests and the benchmark).
        self.tasks = 0

    def __enter__(self) -> DaskPool[S, I, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, item: I) -> ItemFuture[R]:
        """Queue ``item``; a full batch is submitted when a slot is free."""
        future: ItemFuture[R] = ItemFuture(self)
        with self._lock:
            self._waiting.append((item, future))
            self._dispatch(force_upto=None)
        return future

    def result(self, future: ItemFuture[R]) -> R:
        """The item's result; submits its batch first if it is still waiting."""
        with self._lock:
            if future.cancelled:
                raise concurrent.futures.CancelledError("its pool closed before it was submitted")
            if future.batch is None:
                self._dispatch(force_upto=future)
        batch = future.batch
        assert batch is not None
        try:
            if batch.outcome is None:
                self._await(batch)
                outcome = batch.future.result()
                with self._lock:
                    if batch.outcome is None:
                        batch.outcome = outcome
                        self._measure(batch.size, outcome[1])
            results = batch.outcome[0]  # type: ignore[index]
            return results[future.index]
        finally:
            with self._lock:
                if not future.taken:
                    future.taken = True
                    batch.taken += 1
                if batch.taken >= batch.size and batch in self._open:
                    self._open.remove(batch)
                self._dispatch(force_upto=None)

    def _await(self, batch: _Batch[R]) -> None:
        """Block until ``batch``'s task is done, refilling the slots other tasks free meanwhile.

        Results are taken in item order, but tasks finish in any order: a worker
        that finished a later batch gets the next one now, instead of idling until
        the caller has worked through the slower batch before it.
        """
        with self._changed:
            while not batch.future.done():
                self._dispatch(force_upto=None)
                self._changed.wait(DONE_POLL_SECONDS)

    def _task_done(self, _future: Future) -> None:
        """Wakes :meth:`_await` (on Dask's callback thread): a slot may be free."""
        with self._changed:
            self._changed.notify_all()

    def _measure(self, items: int, seconds: float) -> None:
        """Grow or shrink the batch to ``task_seconds`` of the per-item time measured so far."""
        self._measured_items += items
        self._measured_seconds += seconds
        per_item = self._measured_seconds / self._measured_items
        wanted = round(self._target / per_item) if per_item > 0 else self._max_items
        self.batch = max(1, min(self._max_items, wanted))
        self._executor.batch_hints[self._name] = self.batch

    def _dispatch(self, force_upto: ItemFuture[R] | None) -> None:
        """Submit waiting items: full batches into free slots; all up to ``force_upto`` at once."""
        while self._waiting:
            forced = force_upto is not None and force_upto.batch is None
            running = sum(not batch.future.done() for batch in self._open)
            free = running < self._slots and len(self._open) < HELD_SLOTS * self._slots
            full = len(self._waiting) >= self.batch and free
            if not (forced or full):
                return
            size = min(self.batch, len(self._waiting))
            taken = [self._waiting.popleft() for _ in range(size)]
            self._submit_batch(taken)

    def _submit_batch(self, taken: list[tuple[I, ItemFuture[R]]]) -> None:
        items = tuple(item for item, _ in taken)
        dask_future = self._client.submit(
            _run_batch,
            self._shared,
            _Items(self._fn, items),
            key=f"geod-{self._name}-{uuid.uuid4().hex}",
            pure=False,
            retries=self._executor.retries,
        )
        dask_future.add_done_callback(self._task_done)
        batch: _Batch[R] = _Batch(dask_future, len(taken))
        for index, (_, future) in enumerate(taken):
            future.batch, future.index = batch, index
        self._open.append(batch)
        self.tasks += 1
        self._live.add(dask_future)
        self._executor.live.add(dask_future)

    def close(self) -> None:
        """Cancel unfinished tasks and waiting items, drop the shared object, run the cleanup.

        Logs how the items were batched (``extra``: items, tasks, batch,
        per_item_ms), so a run's log shows what the per-task cost was spread over.
        """
        if self._measured_items:
            per_item_ms = MS * self._measured_seconds / self._measured_items
            log.info(
                "%s: %d item(s) in %d Dask task(s), batch %d, %.2f ms per item on the workers",
                self._name,
                self._measured_items,
                self.tasks,
                self.batch,
                per_item_ms,
                extra={
                    "items": self._measured_items,
                    "tasks": self.tasks,
                    "batch": self.batch,
                    "per_item_ms": round(per_item_ms, 3),
                },
            )
        with self._lock:
            for _, future in self._waiting:
                future.cancelled = True
            self._waiting.clear()
            self._open.clear()
        with contextlib.suppress(Exception):  # a closing or lost cluster has nothing to cancel
            self._client.cancel(self._live.unfinished(), force=True)
        if isinstance(self._shared, Future):
            with contextlib.suppress(Exception):
                self._shared.release()
        if self._cleanup is not None:
            with contextlib.suppress(Exception):
                self._client.run(self._cleanup, on_error="ignore")


class DaskExecutor:
    """A connected Dask client (and the LocalCluster it started, if any)."""

    name = "dask"
    remote = True

    def __init__(
        self,
        client: Client,
        cluster: LocalCluster | None,
        config: PipelineConfig,
        events: EventSink,
    ) -> None:
        self.client, self._cluster, self._events = client, cluster, events
        dask_config = _dask_config(config)
        self.retries = dask_config.retries
        self.task_items = dask_config.task_items
        self.task_seconds = dask_config.task_seconds
        self.live = _Futures()
        #: The batch size each task function's pools last settled on (see batch_hint).
        self.batch_hints: dict[str, int] = {}
        self._levels = dask_config.worker_memory.fractions(config.memory) if cluster else None
        self._interval = config.telemetry.memory_interval
        self._known: dict[str, str] = {}
        #: Each worker's memory / memory limit at the last reading (for the governor).
        self._pressure: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="geod-dask-monitor", daemon=True)
        client.register_plugin(_LogLevel())
        client.forward_logging(FORWARDED_LOGGER, level=logging.INFO)
        self._poll()
        self._monitor.start()

    @classmethod
    def connect(cls, config: PipelineConfig, events: EventSink) -> DaskExecutor:
        """Connect to the configured scheduler or start the LocalCluster; one-line errors."""
        dask_config = _dask_config(config)
        timeout = dask_config.connect_timeout
        # Dask's own INFO chatter (nannies, comms) would drown the run's log; problems still show.
        logging.getLogger("distributed").setLevel(logging.WARNING)
        if dask_config.scheduler_address is not None:
            address = dask_config.scheduler_address
            try:
                client = Client(address, timeout=timeout, set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise ExecutorError(
                    f"dask.scheduler_address: no Dask scheduler answered at {address} within "
                    f"{timeout:g} s (dask.connect_timeout): {str(exc).splitlines()[0]}"
                ) from None
            try:
                client.wait_for_workers(1, timeout=timeout)
            except (OSError, TimeoutError):
                client.close()
                raise ExecutorError(
                    f"dask.scheduler_address: the scheduler at {address} has no worker "
                    f"(none joined within {timeout:g} s)"
                ) from None
            log.info("executor dask: connected to %s", address)
            return cls._wired(client, None, config, events)
        cluster = _start_local_cluster(config, dask_config)
        try:
            client = Client(cluster, timeout=timeout, set_as_default=False)
        except BaseException:
            cluster.close()
            raise
        return cls._wired(client, cluster, config, events)

    @classmethod
    def _wired(
        cls, client: Client, cluster: LocalCluster | None, config: PipelineConfig, events: EventSink
    ) -> DaskExecutor:
        """The executor, or nothing left running if setting it up fails."""
        try:
            return cls(client, cluster, config, events)
        except BaseException:
            client.close()
            if cluster is not None:
                cluster.close()
            raise

    # -- the Executor protocol ----------------------------------------------------------

    def parallelism(self, local_threads: int) -> int:
        """Items a stage may hand the cluster ahead: enough full batches for every pool slot.

        Stages size their queue of submitted items by this. A pool computes
        :meth:`task_slots` batches at once and keeps :data:`HELD_SLOTS` times as
        many until their results are taken in order, so a worker that finished
        early finds another batch while the caller still waits for a slow one
        before it. Memory stays bounded by the pool's batches, not by this number:
        items beyond them wait in the pool as plain items.
        """
        return HELD_SLOTS * self.task_slots() * self.task_items

    def task_slots(self) -> int:
        """Tasks a pool computes at once: one per worker thread plus one queued per worker."""
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        return max(1, sum(int(w.get("nthreads", 1)) + 1 for w in workers.values()))

    def batch_hint(self, name: str) -> int:
        """The batch a new pool of ``name`` starts with: what the last one measured.

        A stage opens a pool per dataset, the next before the previous one's last
        tasks are done; a pool starting from one item per task would send a few
        tiny tasks and then wait to measure them while the workers run dry.
        """
        return self.batch_hints.get(name, 1)

    def pool(
        self,
        fn: Callable[[S, I], R],
        shared: S,
        threads: int,
        cleanup: Callable[[], None] | None = None,
        readers: int = 0,
    ) -> DaskPool[S, I, R]:
        """A task reads and computes in one go on its worker (``readers`` is local only)."""
        return DaskPool(self, fn, shared, cleanup)

    def preload(self, modules: Sequence[str]) -> None:
        """Every worker, and any that joins later, imports ``modules`` in the background."""
        self.client.register_plugin(_Preload(tuple(modules)))

    def settle(self) -> None:
        """Wait for every task of this run that is still computing (results are kept)."""
        pending = self.live.unfinished()
        if pending:
            log.info("pausing: waiting for %d Dask task(s) in flight", len(pending))
            with self.client.as_current():  # wait() finds its client there (none is global)
                wait(pending)

    def pressure(self) -> tuple[float, str] | None:
        """The busiest worker at the last reading: memory / memory limit, and its address."""
        with self._lock:
            readings = dict(self._pressure)
        if not readings:
            return None
        address = max(readings, key=readings.__getitem__)
        return readings[address], f"Dask worker {address}"

    def window_room(self) -> tuple[float, str] | None:
        """Bytes one window's task may hold on the tightest worker, and its address.

        A worker holds two windows per thread: the one it computes and the one
        its task still writes behind it (:func:`~pipeline.executor.hand_off`;
        the results fetched are checksums and counts, and a task batches only
        as many windows as take ``dask.task_seconds``, so big windows go one
        per task); they share its memory limit below Dask's ``target``
        fraction, where it would start spilling. Workers without a limit do
        not count.
        """
        target = self._levels["target"] if self._levels else DASK_DEFAULT_TARGET
        rooms = {
            address: int(info["memory_limit"])
            * target
            / (WINDOWS_PER_THREAD * int(info.get("nthreads", 1)))
            for address, info in self.client.scheduler_info(n_workers=-1)["workers"].items()
            if info.get("memory_limit")
        }
        if not rooms:
            return None
        address = min(rooms, key=rooms.__getitem__)
        return rooms[address], f"Dask worker {address}"

    def close(self) -> None:
        """Stop the monitor, cancel what is left, close the client and any LocalCluster."""
        self._stop.set()
        if self._monitor.is_alive():
            self._monitor.join()
        with contextlib.suppress(Exception):
            self.client.cancel(self.live.unfinished(), force=True)
        with contextlib.suppress(Exception):
            self.client.close()
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close()

    # -- telemetry --------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._poll()
            except Exception as exc:  # a closing client: the next poll or close() settles it
                log.debug("could not read the Dask scheduler: %s", exc)

    def _poll(self) -> None:
        """One reading of every worker: memory samples, joins, departures and pauses."""
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        with self._lock:
            self._pressure = {
                address: int(info["metrics"]["memory"]) / int(info["memory_limit"])
                for address, info in workers.items()
                if info.get("memory_limit")
            }
        for address in set(self._known) - set(workers):
            log.warning(
                "Dask worker %s left the cluster; the scheduler reruns its tasks on the others",
                address,
                extra={"worker": address},
            )
            del self._known[address]
        for address, info in workers.items():
            status = str(info.get("status", ""))
            previous = self._known.get(address)
            if previous is None:
                log.info(
                    "Dask worker %s: %s thread(s), memory limit %s",
                    address,
                    info.get("nthreads"),
                    format_bytes(int(info.get("memory_limit") or 0)),
                    extra={"worker": address},
                )
            if status == PAUSED_STATUS and previous != PAUSED_STATUS:
                log.warning(
                    "Dask worker %s paused for memory (%s of %s): it starts no task until "
                    "it is below distributed.worker.memory.pause",
                    address,
                    format_bytes(int(info["metrics"]["memory"])),
                    format_bytes(int(info.get("memory_limit") or 0)),
                    extra={"worker": address},
                )
            if previous == PAUSED_STATUS and status != PAUSED_STATUS:
                log.info(
                    "Dask worker %s is %s again (%s of %s): it starts tasks",
                    address,
                    status,
                    format_bytes(int(info["metrics"]["memory"])),
                    format_bytes(int(info.get("memory_limit") or 0)),
                    extra={"worker": address},
                )
            self._known[address] = status
            limit = info.get("memory_limit") or None
            self._events.emit(
                MemoryEvent(
                    rss=int(info["metrics"]["memory"]),
                    budget=int(limit) if limit else None,
                    warning=self._levels["spill"] if self._levels else None,
                    critical=self._levels["pause"] if self._levels else None,
                    operation=DASK_WORKER_SAMPLE,
                    worker=address,
                )
            )


def _dask_config(config: PipelineConfig) -> DaskConfig:
    if config.dask is None:  # the config's own check makes this unreachable
        raise ExecutorError("executor: dask needs a dask: section")
    return config.dask


@contextlib.contextmanager
def _sigint_ignored_by_children() -> Iterator[None]:
    """Worker processes started in here ignore SIGINT (an ignored signal survives exec).

    Ctrl-C in a terminal signals the whole foreground process group: the run's
    worker stops at a checkpoint and closes the cluster, while Dask workers that
    took SIGINT themselves would die mid-task with a traceback each. Only from
    the main thread (where signal handlers live); the run's handler is restored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _start_local_cluster(config: PipelineConfig, dask_config: DaskConfig) -> LocalCluster:
    """Worker processes with the geod-derived memory fractions (see DaskWorkerMemory)."""
    local = dask_config.local_cluster
    assert local is not None
    limit = local.memory_limit
    if limit is None:
        limit = config.memory.budget_bytes() // local.n_workers
    elif isinstance(limit, float) and limit <= 1.0:
        limit = int(limit * psutil.virtual_memory().total)
    fractions = dask_config.worker_memory.fractions(config.memory)
    settings: dict[str, object] = {
        f"distributed.worker.memory.{key}": value for key, value in fractions.items()
    }
    spawn_environ = dask.config.get("distributed.nanny.pre-spawn-environ")
    settings["distributed.nanny.pre-spawn-environ"] = spawn_environ | WORKER_MALLOC_ENVIRON
    with dask.config.set(settings), _sigint_ignored_by_children():
        cluster = LocalCluster(
            n_workers=local.n_workers,
            threads_per_worker=local.threads_per_worker,
            processes=True,
            memory_limit=int(limit),
            dashboard_address=None,
        )
    log.info(
        "executor dask: LocalCluster of %d worker(s) × %d thread(s), %s each "
        "(memory target/spill/pause/terminate %s)",
        local.n_workers,
        local.threads_per_worker,
        format_bytes(int(limit)),
        "/".join(f"{value:.2f}" for value in fractions.values()),
    )
    return cluster
