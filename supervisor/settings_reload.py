"""Live reload of ``geod.yml``: an edit is picked up like SIGHUP, debounced.

A watchdog observer watches the settings file's folder (editors replace a file
by renaming a new one over it, which a watch on the file itself would miss)
and every change to the file restarts a timer of ``reload_debounce`` seconds
on the event loop; when it fires, the daemon reloads exactly as on SIGHUP. The
observer thread only schedules that timer, so the socket loop never waits on
the file system. A folder that does not exist is not watched (SIGHUP still
works once the file is created).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.inotify import InotifyObserver

log = logging.getLogger("geod.daemon")

#: Event types after which the file may hold new content.
_CHANGES = frozenset({"created", "modified", "closed", "moved", "deleted"})


class SettingsFileWatch(FileSystemEventHandler):
    """Calls ``reload`` (on the loop) once edits of ``path`` have been quiet for ``delay``."""

    def __init__(self, path: Path, delay: Callable[[], float], reload: Callable[[], None]) -> None:
        self.path = str(path.absolute())
        self._delay = delay
        self._reload = reload
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._observer: InotifyObserver | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            log.info("settings folder %s does not exist; edits are not watched", folder)
            return
        self._observer = InotifyObserver()
        self._observer.schedule(self, folder, recursive=False)
        self._observer.start()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._observer is not None:
            self._observer.stop()
            await asyncio.to_thread(self._observer.join)

    def on_any_event(self, event: FileSystemEvent) -> None:
        """In the observer thread: hand the event to the loop, nothing more."""
        if event.event_type not in _CHANGES or event.is_directory:
            return
        paths = {os.fsdecode(event.src_path), os.fsdecode(event.dest_path)}
        if self.path in paths and self._loop is not None:
            self._loop.call_soon_threadsafe(self._restart_timer)

    def _restart_timer(self) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._delay(), self._fire)

    def _fire(self) -> None:
        self._timer = None
        if os.path.exists(self.path):
            self._reload()
        else:
            log.warning("settings file %s was removed; the current settings stay", self.path)
