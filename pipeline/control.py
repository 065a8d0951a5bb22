"""Cooperative pause/resume/stop for a worker, driven by POSIX signals.

SIGUSR1 asks for a pause, SIGUSR2 for a resume, SIGTERM/SIGINT for a stop. The
handlers only set flags; the pipeline acts on them at window boundaries
(:meth:`Controller.checkpoint`), after the window's chunks are durable, so a
pause or stop never leaves a half-written chunk behind. The acknowledgement is
a :class:`~pipeline.events.StateEvent`, which the daemon waits for before it
falls back to SIGSTOP.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from pipeline.events import EventSink, StateEvent


class StopRequested(Exception):
    """Raised at a window boundary once a stop was asked for; the run is checkpointed."""


class Controller:
    """Flags set by signal handlers (or by code, for the foreground CLI and tests)."""

    def __init__(self, events: EventSink) -> None:
        self._events = events
        self._pause = threading.Event()
        self._resume = threading.Event()
        self._stop = threading.Event()

    # -- requests (signal-handler safe: they only set flags) ----------------------

    def request_pause(self) -> None:
        self._resume.clear()
        self._pause.set()

    def request_resume(self) -> None:
        self._pause.clear()
        self._resume.set()

    def request_stop(self) -> None:
        self._stop.set()
        self._resume.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def pause_requested(self) -> bool:
        return self._pause.is_set()

    def install_signal_handlers(self) -> None:
        """SIGUSR1 pause, SIGUSR2 resume, SIGTERM/SIGINT stop (main thread only)."""

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if signum == signal.SIGUSR1:
                self.request_pause()
            elif signum == signal.SIGUSR2:
                self.request_resume()
            else:
                self.request_stop()

        for signum in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, on_signal)

    # -- the boundary -------------------------------------------------------------

    def checkpoint(self) -> None:
        """Call between windows, once their output is durable.

        Blocks while paused (after acknowledging), raises :class:`StopRequested`
        when a stop was asked for, returns at once otherwise.
        """
        if self._stop.is_set():
            raise StopRequested()
        if not self._pause.is_set():
            return
        self._events.emit(StateEvent(state="paused", reason="paused at a window boundary"))
        while self._pause.is_set() and not self._stop.is_set():
            self._resume.wait(timeout=0.5)
        if self._stop.is_set():
            raise StopRequested()
        self._events.emit(StateEvent(state="resumed"))
