"""Telling an OOM kill from any other SIGKILL of a worker.

A worker that dies of SIGKILL the daemon did not send was killed by someone
else; it was the kernel's OOM killer if the cgroup's ``oom_kill`` counter
(cgroup v2 ``memory.events``, v1 ``memory.oom_control``) grew while the worker
ran, or if the kernel log (``/dev/kmsg``) has an OOM record naming its pid
("Killed process 1234", "oom-kill:…,pid=1234,…"). Either source may be missing
(containers, no permission): then a SIGKILL stays a plain failure.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path

from supervisor.settings import OomSettings

_OOM_KILL = re.compile(r"^oom_kill\s+(\d+)$", re.MULTILINE)
#: Largest kernel log record read at once (the kernel's own limit is 1 KiB of text + header).
_KMSG_RECORD = 8192
_CGROUP_ROOT = Path("/sys/fs/cgroup")


def own_memory_events() -> Path | None:
    """This process's cgroup file counting OOM kills (v2 first, then v1), if any."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _id, controllers, path = line.split(":", 2)
            if controllers == "":
                candidate = _CGROUP_ROOT / path.lstrip("/") / "memory.events"
            elif "memory" in controllers.split(","):
                candidate = _CGROUP_ROOT / "memory" / path.lstrip("/") / "memory.oom_control"
            else:
                continue
            if candidate.is_file():
                return candidate
    return None


def read_oom_kills(path: Path | None) -> int | None:
    """The ``oom_kill`` counter of a cgroup file, or None if it cannot be read."""
    if path is None:
        return None
    with contextlib.suppress(OSError):
        match = _OOM_KILL.search(path.read_text())
        return int(match.group(1)) if match else None
    return None


def kmsg_names(path: Path, pid: int) -> bool:
    """Does the kernel log hold an OOM record naming ``pid``? (Read without blocking.)

    ``/dev/kmsg`` returns one record per read; a plain file (a saved log) returns
    chunks, so the end of each chunk is kept to find a record cut in two.
    """
    wanted = (f"Killed process {pid} ".encode(), f",pid={pid},".encode())
    overlap = max(len(token) for token in wanted)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    tail = b""
    try:
        while True:
            try:
                record = os.read(fd, _KMSG_RECORD)
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records overwritten while reading: go on
                    continue
                return False  # EAGAIN: the end; anything else: unreadable
            if not record:
                return False
            text = tail + record
            if any(token in text for token in wanted):
                return True
            tail = text[-overlap:]
    finally:
        os.close(fd)


class OomWatch:
    """The OOM sources the settings name (the daemon's own cgroup by default)."""

    def __init__(self, settings: OomSettings) -> None:
        self._events = settings.memory_events or own_memory_events()
        self._kmsg = settings.kmsg

    def baseline(self) -> int | None:
        """The cgroup's OOM kill count now (taken when a worker starts)."""
        return read_oom_kills(self._events)

    def evidence(self, pid: int, baseline: int | None) -> str | None:
        """Why the SIGKILL of worker ``pid`` was the OOM killer's, or None if no source says so."""
        now = read_oom_kills(self._events)
        if now is not None and baseline is not None and now > baseline:
            return f"{self._events}: oom_kill {baseline} → {now}"
        if kmsg_names(self._kmsg, pid):
            return f"{self._kmsg}: the kernel's OOM record names pid {pid}"
        return None
