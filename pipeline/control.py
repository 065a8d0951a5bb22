"""Cooperative pause/resume/stop for a worker, driven by POSIX signals.

SIGUSR1 asks for a pause, SIGUSR2 for a resume, SIGTERM/SIGINT for a stop, and
:data:`SHRINK_SIGNAL` for smaller windows (the daemon's answer to host memory
pressure, taken by the memory governor at its next window). The handlers only
set flags; the pipeline acts on them at window boundaries
(:meth:`Controller.checkpoint`), after the window's chunks are durable, so a
pause or stop never leaves a half-written chunk behind. The acknowledgement is
a :class:`~pipeline.events.StateEvent`, which the daemon waits for before it
falls back to SIGSTOP.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType

from pipeline.events import EventSink, StateEvent


class StopRequested(Exception):
    """Raised at a window boundary once a stop was asked for; the run is checkpointed."""


#: The daemon asks a worker to halve its window size with this signal (host memory
#: pressure). A real-time signal: unused by Python, GDAL and the C library.
SHRINK_SIGNAL = signal.SIGRTMIN

#: While paused, how often the worker looks at its flags again: bounds resume latency.
PAUSE_POLL_SECONDS = 0.05


class Controller:
    """Flags set by signal handlers (or by code, for the foreground CLI and tests).

    The flags are plain booleans on purpose: a Python signal handler runs on the
    main thread between bytecodes, possibly while that thread is inside
    ``threading.Event.wait`` holding the event's internal lock, so a handler
    that called ``Event.set()`` could deadlock the worker. Assigning a bool
    cannot; the paused loop polls instead (``PAUSE_POLL_SECONDS``).
    """

    def __init__(self, events: EventSink) -> None:
        self._events = events
        self._pause = False
        self._stop = False
        self._shrink = False
        #: Called before a pause is acknowledged: the run's executor waits there until
        #: none of its tasks is computing (a no-op for the local executor).
        self.settle: Callable[[], None] = lambda: None

    # -- requests (signal-handler safe: they only assign flags) -------------------

    def request_pause(self) -> None:
        self._pause = True

    def request_resume(self) -> None:
        self._pause = False

    def request_stop(self) -> None:
        self._stop = True

    def request_shrink(self) -> None:
        self._shrink = True

    def take_shrink(self) -> bool:
        """Was a shrink asked for since the last call? (The governor consumes it.)"""
        asked, self._shrink = self._shrink, False
        return asked

    @property
    def stop_requested(self) -> bool:
        return self._stop

    @property
    def pause_requested(self) -> bool:
        return self._pause

    def install_signal_handlers(self) -> None:
        """SIGUSR1 pause, SIGUSR2 resume, SIGTERM/SIGINT stop, SHRINK_SIGNAL shrink (main
        thread only)."""

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if signum == signal.SIGUSR1:
                self.request_pause()
            elif signum == signal.SIGUSR2:
                self.request_resume()
            elif signum == SHRINK_SIGNAL:
                self.request_shrink()
            else:
                self.request_stop()

        signals = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, SHRINK_SIGNAL)
        for signum in signals:
            signal.signal(signum, on_signal)

    # -- the boundary -------------------------------------------------------------

    def checkpoint(self) -> None:
        """Call between windows, once their output is durable.

        Blocks while paused (after acknowledging), raises :class:`StopRequested`
        when a stop was asked for, returns at once otherwise.
        """
        if self._stop:
            raise StopRequested()
        if not self._pause:
            return
        self.settle()
        self._events.emit(StateEvent(state="paused", reason="paused at a window boundary"))
        while self._pause and not self._stop:
            time.sleep(PAUSE_POLL_SECONDS)
        if self._stop:
            raise StopRequested()
        self._events.emit(StateEvent(state="resumed"))
