"""The daemon's watched folders: a watchdog observer thread feeding the event loop.

The observer (inotify, with unmatched renames reported as moves, so a file
renamed in from another folder is known to be complete) runs in its own
thread and only appends to a queue; the event loop drains it and keeps each
rule's bookkeeping (:mod:`supervisor.watch_folder`). Inspections run one batch
at a time in one more thread, with the catalog's inspection child
(:class:`pipeline.inspector.Inspector`: a run's catalog checks, GDAL in a child
process), so neither GDAL nor a slow disk ever holds the loop that answers the
socket, and the daemon never loads rasterio. Every ``tick`` the loop asks each folder
which files have settled, notices a watched folder that disappeared (logged;
its files gone) or came back (watched again and rescanned), submits the runs of
``submit`` rules and writes the rules' state files.

Runs of a ``submit`` rule: files taken together wait until nothing else of the
rule is settling (at most ``settle_seconds`` after the first of them), then one
run of the rule's config is submitted; while the rule's previous run is still
queued no second one is, and the files wait for the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import ObservedWatch
from watchdog.observers.inotify import InotifyObserver

from pipeline.config import CatalogConfig, ConfigError, DatasetConfig
from pipeline.contract import WAITING_STATES
from pipeline.events import SourceEvent
from pipeline.globs import dataset_name
from pipeline.inspector import Inspector, Problem
from supervisor.protocol import ProtocolError, SubmitParams, WatchedSource
from supervisor.watch_folder import FolderWatch, Probe, stat_key
from supervisor.watch_rules import WatchRule
from supervisor.watch_state import StateFile

if TYPE_CHECKING:
    from supervisor.scheduler import Scheduler

log = logging.getLogger("geod.daemon.watch")

#: Bounds of the settle tick: a quarter of the shortest settle_seconds within these.
MIN_TICK = 0.05
MAX_TICK = 1.0
#: Files inspected per hop to the inspection thread (results come back per batch).
PROBE_BATCH = 64
#: watchdog event types that say nothing about a file's content.
_IGNORED = frozenset({"opened", "closed_no_write"})


class _Bridge(FileSystemEventHandler):
    """Observer thread → event loop: queue the event, wake the loop once per burst."""

    def __init__(self, watcher: Watcher, rule: str) -> None:
        self._watcher = watcher
        self._rule = rule

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _IGNORED:
            return
        self._watcher.enqueue(self._rule, event)


class Watcher:
    """Every watch rule of the daemon's settings; reconfigured on a settings reload."""

    def __init__(
        self,
        scheduler: Scheduler,
        state_dir: Path,
        record: Callable[[SourceEvent], None] | None,
    ) -> None:
        self.scheduler = scheduler
        self.state_dir = state_dir
        self._record_event = record
        self.folders: dict[str, FolderWatch] = {}
        self._watches: dict[str, ObservedWatch] = {}
        self._observer: InotifyObserver | None = None
        self._queue: deque[tuple[str, FileSystemEvent]] = deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._probe_pool = ThreadPoolExecutor(1, thread_name_prefix="geod-watch-probe")
        self._inspector: Inspector | None = None
        self._probes: set[asyncio.Future[list[Probe]]] = set()
        #: Monotonic time the first file of the current submit batch was taken, per rule.
        self._batch_since: dict[str, float] = {}
        #: Rules whose run is being submitted right now (one at a time per rule).
        self._submitting: set[str] = set()

    # -- configuration --------------------------------------------------------------------

    def configure(self, rules: list[WatchRule]) -> None:
        """Start watching ``rules``; rules that changed or went away stop being watched."""
        self._loop = asyncio.get_running_loop()
        wanted = {rule.key: rule for rule in rules}
        for key, folder in list(self.folders.items()):
            if wanted.get(key) != folder.rule:
                self._unwatch(key)
                self._save(folder)
                del self.folders[key]
                log.info("watch %s: no longer watching %s", key, folder.rule.dir)
        for key, rule in wanted.items():
            if key not in self.folders:
                self.folders[key] = FolderWatch(rule, self.state_dir, self._record)
        if self.folders and self._observer is None:
            self._observer = InotifyObserver(generate_full_events=True)
            self._observer.start()
        if self.folders and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._tick()

    async def close(self) -> None:
        """Stop the observer and the tick; write every rule's state."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._observer is not None:
            self._observer.stop()
            await asyncio.to_thread(self._observer.join)
        for folder in self.folders.values():
            self._save(folder)
        await asyncio.to_thread(self._probe_pool.shutdown)
        if self._inspector is not None:
            self._inspector.__exit__(None, None, None)

    # -- what clients see --------------------------------------------------------------------

    def sources(self, rule: str | None = None) -> list[WatchedSource]:
        """Every file the rules have recorded (or only ``rule``'s), by rule and path."""
        found = []
        for key, folder in sorted(self.folders.items()):
            if rule is None or key == rule:
                found.extend(sorted(folder.state.files.values(), key=lambda f: f.path))
        if rule is None:
            return found
        if rule not in self.folders:
            # A rule removed from the settings still has its record on disk.
            path = StateFile(self.state_dir, rule).path
            if path.exists():
                state = StateFile(self.state_dir, rule).load()
                found = sorted(state.files.values(), key=lambda f: f.path)
        return found

    def summary(self) -> list[str]:
        return [folder.summary() for _key, folder in sorted(self.folders.items())]

    # -- observer thread side ----------------------------------------------------------------

    def enqueue(self, rule: str, event: FileSystemEvent) -> None:
        """Called in the observer thread: never blocks on the loop."""
        with self._lock:
            self._queue.append((rule, event))
            if self._wake_pending or self._loop is None:
                return
            self._wake_pending = True
        self._loop.call_soon_threadsafe(self._drain)

    # -- loop side -----------------------------------------------------------------------------

    def _drain(self) -> None:
        with self._lock:
            events = list(self._queue)
            self._queue.clear()
            self._wake_pending = False
        for rule, event in events:
            folder = self.folders.get(rule)
            if folder is not None:
                self._apply(folder, event)
        if events:
            self._start_probes(renamed_only=True)  # the tick takes the settled ones

    def _apply(self, folder: FolderWatch, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path)
        kind = event.event_type
        if event.is_directory:
            if kind in ("deleted", "moved") and src == str(folder.rule.dir):
                self._folder_lost(folder)
            return
        if kind == "moved":
            folder.removed(src)
            folder.changed(dest, renamed=True)
        elif kind == "deleted":
            folder.removed(src)
        else:  # created, modified, closed (written and closed), attrib
            folder.changed(src)

    def _folder_lost(self, folder: FolderWatch) -> None:
        if folder.key not in self._watches:
            return
        log.error(
            "watch %s: watched folder %s is gone; watching resumes when it reappears",
            folder.key,
            folder.rule.dir,
        )
        self._unwatch(folder.key)
        folder.folder_gone()

    def _unwatch(self, key: str) -> None:
        watch = self._watches.pop(key, None)
        if watch is not None and self._observer is not None:
            with contextlib.suppress(KeyError, OSError):
                self._observer.unschedule(watch)

    def _ensure_watched(self, folder: FolderWatch) -> None:
        """Watch a folder that is there and not yet watched; notice one that is gone."""
        watching = folder.key in self._watches
        if not folder.rule.dir.is_dir():
            if watching:
                self._folder_lost(folder)
            elif not folder.missing:
                folder.missing = True
                log.error(
                    "watch %s: watched folder %s does not exist; watching starts when it appears",
                    folder.key,
                    folder.rule.dir,
                )
            return
        if watching:
            return
        assert self._observer is not None
        try:
            self._watches[folder.key] = self._observer.schedule(
                _Bridge(self, folder.key), str(folder.rule.dir), recursive=folder.rule.recursive
            )
        except OSError as exc:
            log.error("watch %s: cannot watch %s: %s", folder.key, folder.rule.dir, exc)
            return
        folder.missing = False
        log.info(
            "watch %s: watching %s for %s (%s)",
            folder.key,
            folder.rule.dir,
            folder.rule.pattern,
            folder.rule.on_new,
        )
        folder.scan()

    def _tick_interval(self) -> float:
        shortest = min((f.rule.settle_seconds for f in self.folders.values()), default=MAX_TICK)
        return min(MAX_TICK, max(MIN_TICK, shortest / 4))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._tick_interval())
            self._tick()
            for folder in self.folders.values():
                if folder.dirty:
                    folder.dirty = False
                    text = StateFile.encode(folder.state)
                    try:
                        await asyncio.to_thread(folder.state_file.write, text)
                    except OSError as exc:
                        log.error("watch %s: cannot save its state: %s", folder.key, exc)

    def _tick(self) -> None:
        for folder in list(self.folders.values()):
            self._ensure_watched(folder)
        self._start_probes()
        for folder in self.folders.values():
            if folder.rule.on_new == "submit":
                self._submit_if_due(folder)

    def _start_probes(self, renamed_only: bool = False) -> None:
        now = time.monotonic()
        for folder in self.folders.values():
            due = folder.due(now, renamed_only)
            for start in range(0, len(due), PROBE_BATCH):
                self._probe(folder, due[start : start + PROBE_BATCH])

    def _probe(self, folder: FolderWatch, paths: list[str]) -> None:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._probe_pool, self._inspect, paths)
        self._probes.add(future)

        def done(result: asyncio.Future[list[Probe]]) -> None:
            self._probes.discard(result)
            if result.cancelled():
                return
            if result.exception() is not None:
                log.error("watch %s: inspection failed: %s", folder.key, result.exception())
                folder.probing.difference_update(paths)
                return
            now = time.monotonic()
            for probe in result.result():
                taken = folder.inspected(probe, now)
                if taken is not None and folder.rule.on_new == "submit":
                    folder.state.waiting.append(taken.path)
                    self._batch_since.setdefault(folder.key, now)
            if folder.rule.on_new == "submit":
                self._submit_if_due(folder)  # now, not at the next tick

        future.add_done_callback(done)

    def _inspect(self, paths: list[str]) -> list[Probe]:
        """In the inspection thread: the catalog's header checks of each file."""
        if self._inspector is None:
            self._inspector = Inspector(CatalogConfig())
        results = []
        for path in paths:
            before = stat_key(path)
            if before is None:
                continue
            dataset = DatasetConfig(name=dataset_name(os.path.basename(path)), path=path)
            found = self._inspector.facts(dataset)
            after = stat_key(path) or before
            if isinstance(found, Problem):
                results.append(Probe(path, *after, None, found.reason))
                continue
            facts: dict[str, Any] = {
                "crs": found["crs_name"],
                "width": found["width"],
                "height": found["height"],
                "dtype": found["dtype"],
            }
            # Changed while being read: the facts may be of a partial file; settle again.
            results.append(Probe(path, *after, facts if after == before else None, None))
        return results

    def _record(self, event: SourceEvent) -> None:
        if self._record_event is not None:
            try:
                self._record_event(event)
            except Exception:
                log.exception("telemetry: recording a watched file failed")

    # -- submit rules ----------------------------------------------------------------------

    def _submit_if_due(self, folder: FolderWatch) -> None:
        state = folder.state
        if not state.waiting or folder.key in self._submitting:
            return
        since = self._batch_since.setdefault(folder.key, time.monotonic())
        settling = bool(folder.pending) or bool(folder.probing)
        if settling and time.monotonic() - since < folder.rule.settle_seconds:
            return  # more of the same arrival are still settling: one run for all of them
        if state.last_run is not None:
            previous = self.scheduler.registry.get(state.last_run)
            if previous is not None and previous.summary.state in WAITING_STATES:
                return  # that run has not started; the files wait for the next one
        files = list(state.waiting)
        state.waiting.clear()
        self._batch_since.pop(folder.key, None)
        folder.dirty = True
        self._submitting.add(folder.key)
        self.scheduler.spawn_task(self._submit(folder, files))

    async def _submit(self, folder: FolderWatch, files: list[str]) -> None:
        config = folder.rule.config
        assert config is not None
        try:
            summary = await self.scheduler.submit(SubmitParams(config_path=str(config)))
        except (ProtocolError, ConfigError) as exc:
            message = getattr(exc, "message", str(exc))
            log.error("watch %s: run of %s not submitted: %s", folder.key, config, message)
            return
        finally:
            self._submitting.discard(folder.key)
        folder.state.last_run = summary.id
        for path in files:
            known = folder.state.files.get(path)
            if known is not None:
                known.run = summary.id
        folder.dirty = True
        log.info(
            "watch %s: submitted run %s of %s for %d new file(s)",
            folder.key,
            summary.id,
            config,
            len(files),
        )

    @staticmethod
    def _save(folder: FolderWatch) -> None:
        try:
            folder.state_file.write(StateFile.encode(folder.state))
        except OSError as exc:
            log.error("watch %s: cannot save its state: %s", folder.key, exc)
