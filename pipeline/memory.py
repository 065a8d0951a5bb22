"""Adaptive memory governor: shrink the window size under memory pressure, grow it back slowly.

Resampling and merging work in windows (or row chunks) whose size drives the
worker's memory. Rather than guessing a safe size up front, the worker asks the
governor after every window: it samples the process's own RSS and compares it
with the budget (``memory.budget``):

* at or above ``warning`` × budget it halves the window, but not below
  ``reduced_window`` (halving further rarely helps and costs throughput);
* at or above ``critical`` × budget it drops straight to ``min_window`` and runs
  ``gc.collect()`` (the next window must be the cheapest possible);
* after ``calm_windows`` consecutive calm readings (below ``calm`` × budget,
  70 % by default) it doubles the window, up to the size the run started with.
  Between ``calm`` and ``warning`` the size holds and the count restarts. The
  gap and the run of calm readings are the hysteresis: growing back from just
  under the warning level would push the next window straight over it, and the
  size would flap (measured on a demo resample at a tight budget: 18 size
  changes with growth allowed right below 80 %, 2 with the 70 % calm level).

Every size is a multiple of ``min_window`` so windows always cover whole store
chunks. Readings come after windows, so they cannot stop a window that is too
big from the start (the first window of a dataset whose source is far finer
than the last one's). Before each dataset the resample stage calls
:meth:`MemoryGovernor.fit` with its estimate of the bytes a window holds per
output cell: the largest size whose estimate fits below the warning level over
the current RSS becomes the ceiling for that dataset (the window shrinks to it
at once; calm readings grow it back no further).

Each reading is a :class:`~pipeline.events.MemoryEvent`; each change is a
:class:`~pipeline.events.GovernorEvent` plus one log record on the
``geod.memory`` logger ("window 2048 → 1024: RSS 3.3 GiB ≥ 80 % of 4 GiB").
The log record goes through Python logging only (never a hand-built LogEvent):
the worker installs the handler that turns records into LogEvents, so there is
exactly one path and no duplicate lines.

Stages that do not work in square windows (merge row chunks) scale their own
base size with :meth:`MemoryGovernor.chunk_rows`, which applies the same
pressure ratio (current window / initial window).

The daemon may also ask for smaller windows when the *host* runs short of memory
(other processes, other runs): ``shrink_requested`` (the controller's flag, set
by :data:`pipeline.control.SHRINK_SIGNAL`) halves the window at the next reading
whatever this worker's own RSS says, down to ``min_window``; calm readings grow
it back as usual. A worker retried after an OOM kill starts at ``start_window``
(half its last size) and may grow back to the configured size from there.

RSS only: USS would be the better measure but costs a full ``/proc/PID/smaps``
walk, too slow between every window; the daemon samples USS for the whole
process tree on its own schedule.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import psutil

from pipeline.config import MemoryConfig
from pipeline.events import EventSink, GovernorEvent, MemoryEvent

log = logging.getLogger("geod.memory")

Level = Literal["normal", "warning", "critical"]

_GIB = 1024**3
_MIB = 1024**2


def format_bytes(value: int) -> str:
    """Human size for log lines: GiB from one GiB up, MiB below."""
    if value >= _GIB:
        return f"{value / _GIB:.1f} GiB"
    return f"{value / _MIB:.0f} MiB"


def own_rss() -> int:
    """This process's resident set size, in bytes."""
    # A fresh Process each time: one cached at import would keep the parent's
    # pid in a forked child.
    return psutil.Process().memory_info().rss


def release_freed_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc only).

    After a stage, glibc keeps the pages of freed windows (measured: 40 of a
    resample's 160 MiB RSS); RSS then overstates what the process holds, and
    whatever is sized from the room left in the budget next (the report's maps)
    would be sized too small. Elsewhere than glibc this only collects garbage.
    """
    gc.collect()
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def _system_available() -> int:
    return psutil.virtual_memory().available


@dataclass(frozen=True)
class WindowLimit:
    """Bytes that some windows of a dataset may hold somewhere, for :meth:`MemoryGovernor.fit`.

    ``per_cell``: what those windows hold per output cell of the window size (a
    full queue of them, or a Dask worker's); ``where`` and ``allowance`` name
    them in the log line (``… of fine's 2048-pixel windows would be queued ahead
    of the writer; their share is 64 MiB``).
    """

    per_cell: float
    limit: float
    where: str
    allowance: str


class MemoryGovernor:
    """Decides the window size between windows from the worker's own RSS.

    ``rss_reader`` is injectable so the policy can be driven by a scripted
    sequence of readings in tests; production uses psutil on this process.
    """

    def __init__(
        self,
        config: MemoryConfig,
        events: EventSink,
        initial_window: int,
        rss_reader: Callable[[], int] | None = None,
        shrink_requested: Callable[[], bool] | None = None,
        start_window: int | None = None,
    ) -> None:
        for what, size in (("initial", initial_window), ("start", start_window)):
            if size is not None and (size <= 0 or size % config.min_window):
                raise ValueError(
                    f"{what} window {size} is not a positive multiple of "
                    f"memory.min_window ({config.min_window})"
                )
        self._config = config
        self._events = events
        self._read_rss = rss_reader or own_rss
        self._shrink_requested = shrink_requested or (lambda: False)
        self.initial_window = initial_window
        self.window_size = min(start_window or initial_window, initial_window)
        self._ceiling = initial_window
        self.budget = config.budget_bytes()
        self._calm = 0
        self._lock = threading.Lock()
        #: Memory pressure elsewhere, as (fraction of its own limit, what): on a Dask
        #: cluster the busiest worker's (see :meth:`after_window`). None: only this RSS.
        self.external: Callable[[], tuple[float, str] | None] | None = None

    # -- readings -----------------------------------------------------------------

    def rss(self) -> int:
        """Current resident set size of this worker, in bytes."""
        return self._read_rss()

    def level(self, rss: int) -> Level:
        """Pressure level of an RSS reading against the budget."""
        if rss >= self._config.critical * self.budget:
            return "critical"
        if rss >= self._config.warning * self.budget:
            return "warning"
        return "normal"

    def gdal_cache_bytes(self) -> int:
        """GDAL block-cache cap: its share of the budget (GDAL's default is 5 % of RAM)."""
        return int(self._config.gdal_cache_fraction * self.budget)

    @property
    def scale(self) -> float:
        """Current pressure ratio: window size / initial window size (1.0 = no pressure)."""
        return self.window_size / self.initial_window

    def chunk_rows(self, base: int, floor: int = 1) -> int:
        """``base`` scaled by :attr:`scale`, for stages that size work in rows (merge).

        Under pressure a 512-row merge chunk halves whenever the window halves,
        and never drops below ``floor``.
        """
        return max(floor, int(base * self.scale))

    # -- policy -------------------------------------------------------------------

    def after_window(self, stage: str | None = None) -> int:
        """Sample RSS, adapt the window size, report; returns the size for the next window."""
        rss = self.rss()
        load, what = rss, f"RSS {format_bytes(rss)}"
        elsewhere = self.external() if self.external is not None else None
        if elsewhere is not None and elsewhere[0] * self.budget > rss:
            # The windows run on Dask workers: a worker near its own limit shrinks
            # them just as this process near its budget would.
            load = int(elsewhere[0] * self.budget)
            share = _percent(elsewhere[0])
            what = f"{elsewhere[1]} at {share} of its limit (as {format_bytes(load)})"
        level = self.level(load)
        with self._lock:  # analysis batches may report from several threads
            old = self.window_size
            new, reason = self._decide(load, level, what)
            self.window_size = new
        self._events.emit(
            MemoryEvent(
                rss=rss,
                system_available=_system_available(),
                window_size=new,
                budget=self.budget,
                warning=self._config.warning,
                critical=self._config.critical,
                stage=stage,
            )
        )
        if new != old:
            self._events.emit(
                GovernorEvent(
                    old_size=old,
                    new_size=new,
                    rss=rss,
                    budget=self.budget,
                    level=level,
                    reason=reason,
                )
            )
            log_level = logging.INFO if new > old else logging.WARNING
            log.log(log_level, "window %d → %d: %s", old, new, reason)
        return new

    def fit(
        self,
        bytes_per_cell: float,
        what: str,
        reserved: float = 0.0,
        limits: Sequence[WindowLimit] = (),
    ) -> int:
        """Cap the window for ``what`` at the largest size whose estimated cost fits; returns it.

        ``bytes_per_cell`` is the stage's estimate of what its windows hold per
        output cell (source pixels read, warp buffers, windows in flight).
        ``reserved``: bytes of work already in flight that the RSS may not show
        yet (the previous dataset's last windows, still being read and warped).
        ``limits``: shares the windows must fit as well (the queue ahead of the
        writer, a Dask worker's memory), so a source with more pixels per cell
        gets smaller windows, not a deeper footprint: peak RSS stays flat as
        inputs grow. The cap holds until the next call: calm readings grow the
        window up to it, not past it. Never below ``min_window`` (the smallest
        window always runs).
        """
        config = self._config
        rss = self.rss()
        room = config.warning * self.budget - rss - reserved

        def over(size: int) -> list[WindowLimit]:
            return [limit for limit in limits if size * size * limit.per_cell > limit.limit]

        size = self.initial_window
        while size > config.min_window and (size * size * bytes_per_cell > room or over(size)):
            size = max(config.min_window, size // 2 // config.min_window * config.min_window)
        with self._lock:
            old = self.window_size
            self._ceiling = size
            self.window_size = min(old, size)
        if self.window_size != old:
            reasons = []
            if old * old * bytes_per_cell > room:
                reasons.append(
                    f"a {old}-pixel window of {what} would hold about "
                    f"{format_bytes(int(old * old * bytes_per_cell))}; "
                    f"{format_bytes(max(0, int(room)))} left below {_percent(config.warning)} "
                    f"of {format_bytes(self.budget)}"
                )
            reasons.extend(
                f"{format_bytes(int(old * old * limit.per_cell))} of {what}'s {old}-pixel "
                f"windows would be {limit.where}; {limit.allowance} is "
                f"{format_bytes(int(limit.limit))}"
                for limit in over(old)
            )
            reason = "; and ".join(reasons)
            self._events.emit(
                GovernorEvent(
                    old_size=old,
                    new_size=self.window_size,
                    rss=rss,
                    budget=self.budget,
                    level=self.level(rss),
                    reason=reason,
                )
            )
            log.warning("window %d → %d: %s", old, self.window_size, reason)
        return self.window_size

    def clear_ceiling(self) -> None:
        """Drop the cap :meth:`fit` set (its stage is over): calm readings may grow past it."""
        with self._lock:
            self._ceiling = self.initial_window

    def _decide(self, rss: int, level: Level, used: str) -> tuple[int, str]:
        """Next window size and the human reason for a change ("" when unchanged).

        ``rss`` is the load compared with the budget, ``used`` how the reason names it.
        """
        config = self._config
        budget = format_bytes(self.budget)
        if self._shrink_requested():
            self._calm = 0
            halved = self.window_size // 2 // config.min_window * config.min_window
            return max(halved, config.min_window), "the daemon asked: host memory pressure"
        if level == "critical":
            self._calm = 0
            gc.collect()
            reason = f"{used} ≥ {_percent(config.critical)} of {budget}; ran GC"
            return config.min_window, reason
        if level == "warning":
            self._calm = 0
            halved = self.window_size // 2 // config.min_window * config.min_window
            # Never grow here: a window already below the floor (after a critical
            # drop) stays where it is.
            new = min(self.window_size, max(halved, config.reduced_window))
            return new, f"{used} ≥ {_percent(config.warning)} of {budget}"
        if rss >= config.calm * self.budget:
            self._calm = 0
            return self.window_size, ""
        self._calm += 1
        if self._calm >= config.calm_windows and self.window_size < self._ceiling:
            self._calm = 0
            reason = (
                f"{used} < {_percent(config.calm)} of {budget} for {config.calm_windows} windows"
            )
            return min(self.window_size * 2, self._ceiling), reason
        return self.window_size, ""


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.0f} %"
