"""Start a real ``python -m pipeline.worker`` and collect its events (test helper)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.events import EVENTS_FD_ENV, Event, decode


class WorkerProcess:
    """A worker subprocess whose event stream is read on a background thread."""

    def __init__(self, config: Path, *args: str) -> None:
        read_fd, write_fd = os.pipe()
        env = dict(os.environ, **{EVENTS_FD_ENV: str(write_fd)})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.worker", str(config), *args],
            env=env,
            pass_fds=(write_fd,),
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(write_fd)
        self.events: list[Event] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(read_fd,), daemon=True)
        self._reader.start()

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as stream:
            for line in stream:
                event = decode(line)
                with self._changed:
                    self.events.append(event)
                    self._changed.notify_all()

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 60.0) -> Event:
        """Block until an event matching ``predicate`` arrives; return it."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (
                    self.process.poll() is not None and not self._reader.is_alive()
                ):
                    raise AssertionError(
                        f"no matching event within {timeout}s; last: {self.events[-3:]}"
                    )
                self._changed.wait(min(remaining, 0.2))

    def finish(self, timeout: float = 300.0) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def kill(self) -> None:
        """SIGKILL the worker if it still runs (test teardown: never leak a paused worker)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def of_type(self, kind: type) -> list:
        with self._changed:
            return [e for e in self.events if isinstance(e, kind)]
