"""One watched folder's bookkeeping: which files are settling, taken, failed or gone.

Runs on the daemon's event loop and never touches GDAL: :mod:`supervisor.watcher`
feeds it file-system events, asks it every tick which files are due for
inspection, and hands back the inspection results. A file is *due* when its
size and mtime have not changed for ``settle_seconds`` (or at once when it was
renamed into the folder: a rename is atomic, the content is complete). An
inspection that finds an incomplete or unreadable raster is retried after
another settle period, ``attempts`` times in all, then reported. A file whose
size or mtime changed during its inspection is simply settling again, so a
partly copied GeoTIFF is never taken.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.events import SourceEvent
from pipeline.globs import dataset_name
from supervisor.protocol import WatchedSource
from supervisor.watch_rules import WatchRule
from supervisor.watch_state import RuleState, StateFile

log = logging.getLogger("geod.daemon.watch")

#: A telemetry stream id of a rule: ``watch:RULE`` (run ids never hold a colon).
STREAM_PREFIX = "watch:"
#: What an inspection found: header facts, or the reason the file is not usable yet.
Facts = dict[str, object]


@dataclass
class Pending:
    """A file waiting for its writes to settle."""

    size: int
    mtime_ns: int
    #: Monotonic time since which size and mtime have been what they are.
    since: float
    #: Renamed in: due at once.
    immediate: bool = False
    attempts: int = 0
    not_before: float = 0.0
    last_error: str | None = None


@dataclass(frozen=True)
class Probe:
    """The result of inspecting one file, with the stat it was inspected at."""

    path: str
    size: int
    mtime_ns: int
    facts: Facts | None
    error: str | None


def stat_key(path: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of a regular file, or None if it is not one (gone, a folder)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.path.isfile(path):
        return None
    return st.st_size, st.st_mtime_ns


class FolderWatch:
    """The state machine of one :class:`WatchRule`."""

    def __init__(
        self, rule: WatchRule, state_dir: Path, record: Callable[[SourceEvent], None]
    ) -> None:
        self.rule = rule
        self.key = rule.key
        self._record = record
        self.state_file = StateFile(state_dir, self.key)
        self.state: RuleState = self.state_file.load()
        self.pending: dict[str, Pending] = {}
        self.probing: set[str] = set()
        #: The folder is not there (logged once; watched again when it reappears).
        self.missing = False
        self.dirty = False

    # -- which paths belong to the rule ----------------------------------------------------

    def matches(self, path: str) -> bool:
        """A file of this rule: the pattern on its name, in the folder (or below if recursive).

        Hidden files (a copy's ``.name.tif.part``) never match.
        """
        if not path:
            return False
        parent, name = os.path.split(path)
        if name.startswith(".") or not fnmatch.fnmatchcase(name, self.rule.pattern):
            return False
        folder = str(self.rule.dir)
        if self.rule.recursive:
            return parent == folder or parent.startswith(folder + os.sep)
        return parent == folder

    # -- file-system events ----------------------------------------------------------------

    def changed(self, path: str, renamed: bool = False) -> None:
        """A file was written (or renamed) into the folder: it settles before it is taken."""
        if not self.matches(path):
            return
        key = stat_key(path)
        if key is None:
            return
        known = self.state.files.get(path)
        taken_as = None if known is None else (known.size, known.mtime_ns)
        if not renamed and known is not None and known.status != "gone" and taken_as == key:
            return  # touched (chmod, a reader's close), not rewritten: nothing new to take
        now = time.monotonic()
        entry = self.pending.get(path)
        if entry is None or (entry.size, entry.mtime_ns) != key or renamed:
            self.pending[path] = Pending(*key, since=now, immediate=renamed)

    def removed(self, path: str) -> None:
        """A file was deleted or moved out: recorded as gone if it had been taken."""
        if not self.matches(path):
            return
        self.pending.pop(path, None)
        known = self.state.files.get(path)
        if known is None or known.status == "gone":
            return
        self._emit(
            WatchedSource(
                rule=self.key,
                path=path,
                dataset=known.dataset,
                status="gone",
                change="gone",
                taken=time.time(),
            )
        )

    def scan(self) -> None:
        """Compare the folder with what was taken before: new and changed files settle,
        files that were taken and are no longer there are gone."""
        folder = self.rule.dir
        found: set[str] = set()
        walker = os.walk(folder) if self.rule.recursive else [(str(folder), [], _names(folder))]
        for parent, _dirs, names in walker:
            for name in names:
                path = os.path.join(parent, name)
                if not self.matches(path):
                    continue
                key = stat_key(path)
                if key is None:
                    continue
                found.add(path)
                known = self.state.files.get(path)
                taken_as = None if known is None else (known.size, known.mtime_ns)
                if known is not None and known.status != "gone" and taken_as == key:
                    continue
                # Unchanged since its mtime: it has been settling for that long already.
                age = max(0.0, time.time() - key[1] / 1e9)
                self.pending[path] = Pending(*key, since=time.monotonic() - age)
        for path, known in list(self.state.files.items()):
            if known.status != "gone" and path not in found:
                self.removed(path)

    def folder_gone(self) -> None:
        """The watched folder itself disappeared: every file in it is gone."""
        self.missing = True
        for path in list(self.state.files):
            self.removed(path)
        self.pending.clear()

    # -- settling --------------------------------------------------------------------------

    def due(self, now: float, renamed_only: bool = False) -> list[str]:
        """Files to inspect now: settled (or renamed in), not already being inspected.

        ``renamed_only`` looks at renamed files alone: what a burst of events can
        make due at once, without a stat of every settling file per burst.
        """
        ready = []
        for path, entry in list(self.pending.items()):
            if path in self.probing or now < entry.not_before:
                continue
            if renamed_only and not entry.immediate:
                continue
            key = stat_key(path)
            if key is None:
                del self.pending[path]
                continue
            if key != (entry.size, entry.mtime_ns):
                entry.size, entry.mtime_ns = key
                entry.since, entry.immediate = now, False
                continue
            if entry.immediate or now - entry.since >= self.rule.settle_seconds:
                ready.append(path)
        self.probing.update(ready)
        return ready

    def inspected(self, probe: Probe, now: float) -> WatchedSource | None:
        """Take the file, retry it later, or report it; returns the file if it was taken."""
        self.probing.discard(probe.path)
        entry = self.pending.get(probe.path)
        if entry is None:
            return None  # deleted meanwhile
        if (probe.size, probe.mtime_ns) != (entry.size, entry.mtime_ns):
            entry.size, entry.mtime_ns, entry.since = probe.size, probe.mtime_ns, now
            entry.immediate = False
            return None  # written to during the inspection: still settling
        if probe.facts is None:
            entry.attempts += 1
            entry.last_error = probe.error
            entry.immediate = False
            if entry.attempts < self.rule.attempts:
                entry.not_before = now + self.rule.settle_seconds
                log.info(
                    "watch %s: %s not a complete raster yet (%s); trying again in %g s",
                    self.key,
                    probe.path,
                    probe.error,
                    self.rule.settle_seconds,
                )
                return None
            log.error(
                "watch %s: %s still not a usable raster after %d attempts: %s",
                self.key,
                probe.path,
                entry.attempts,
                probe.error,
            )
        del self.pending[probe.path]
        known = self.state.files.get(probe.path)
        change: Literal["new", "replaced"] = (
            "replaced" if known is not None and known.status != "gone" else "new"
        )
        facts = probe.facts or {}
        taken = WatchedSource(
            rule=self.key,
            path=probe.path,
            dataset=dataset_name(os.path.basename(probe.path)),
            status="ok" if probe.facts is not None else "error",
            change=change,
            size=probe.size,
            mtime_ns=probe.mtime_ns,
            taken=time.time(),
            crs=_str(facts.get("crs")),
            width=_int(facts.get("width")),
            height=_int(facts.get("height")),
            dtype=_str(facts.get("dtype")),
            error=probe.error,
        )
        self._emit(taken)
        return taken if taken.status == "ok" else None

    def _emit(self, watched: WatchedSource) -> None:
        self.state.seq += 1
        self.state.files[watched.path] = watched
        self.dirty = True
        self._record(
            SourceEvent(
                run=STREAM_PREFIX + self.key,
                seq=self.state.seq,
                dataset=watched.dataset,
                path=watched.path,
                status=watched.status,
                change=watched.change,
                size=watched.size,
                mtime=None if watched.mtime_ns is None else watched.mtime_ns / 1e9,
                crs=watched.crs,
                width=watched.width,
                height=watched.height,
                dtype=watched.dtype,
                error=watched.error,
            )
        )

    def summary(self) -> str:
        """One line for ``geod status``."""
        files = self.state.files.values()
        taken = sum(1 for f in files if f.status == "ok")
        errors = sum(1 for f in files if f.status == "error")
        where = "folder missing" if self.missing else "watching"
        text = f"{self.key}: {where} {self.rule.dir} ({self.rule.on_new}; {taken} taken"
        if errors:
            text += f", {errors} unusable"
        return text + f", {len(self.pending)} settling)"


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) else None
