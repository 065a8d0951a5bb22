"""Durable file operations: what "written" means for checkpoints, outputs and logs.

A rename is atomic but not durable until the directory is fsynced, and a file's
bytes are not durable until the file is; every checkpoint, state file and
published output goes through :func:`write_atomic` so a crash never shows a
half-made file. Append-only line files (a run's event history, the telemetry
spool) can end in a torn line after a crash; :func:`cut_torn_tail` is their one
repair. The pipeline, the daemon and telemetry all use these, and nothing else
writes such files another way.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory fsync makes renames in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync, rename, fsync the directory.

    A reader (or a crash) sees the old file or the new one, whole.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


#: Bytes read at a time while scanning back for the last whole line.
TAIL_SCAN_BYTES = 64 * 1024


def cut_torn_tail(path: Path) -> bool:
    """Cut a half-written last line (a writer killed mid-append); True if one was cut.

    The file then ends after its last newline, so the next append starts a fresh
    line and readers see only whole records. A missing or empty file is left alone.
    """
    if not path.exists():
        return False
    with open(path, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return False
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return False
        end = size
        while end > 0:
            start = max(0, end - TAIL_SCAN_BYTES)
            handle.seek(start)
            newline = handle.read(end - start).rfind(b"\n")
            if newline >= 0:
                handle.truncate(start + newline + 1)
                return True
            end = start
        handle.truncate(0)
        return True
