"""Write a file under a temporary name next to its destination, then rename it into place.

Readers of the output directory must never see half a table under its final
name: a worker can be killed at any moment and a disk can fill up mid-write. So
every exported file is written as ``NAME.partial-XXXXXXXX`` in the destination
directory (same filesystem, so the rename is atomic), flushed and fsynced, then
renamed over ``NAME`` and the directory fsynced so the rename itself survives a
crash. Leftover partial files from a killed run are removed by
:func:`clean_partials` at the start of the next export.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
from pathlib import Path

from pipeline.context import RunError
from pipeline.durable import fsync_path

#: Separator between the final name and the random token of a temporary file.
PARTIAL_MARKER = ".partial-"
#: Random hex digits in a temporary name: enough that two writers never collide.
_TOKEN_BYTES = 4


class ExportError(RunError):
    """An export failed; the message is one line naming the file and the reason."""


def describe_os_error(path: Path, exc: OSError) -> str:
    """One line for an OS error while writing ``path`` (disk full gets the free space)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            return f"{path}: disk full while writing"
        return f"{path}: disk full while writing ({free} bytes free in {path.parent})"
    return f"{path}: {exc.strerror or exc}"


def partial_path(final: Path) -> Path:
    """A fresh temporary name for ``final`` in the same directory."""
    return final.with_name(f"{final.name}{PARTIAL_MARKER}{secrets.token_hex(_TOKEN_BYTES)}")


def hold_partial(partial: Path) -> int:
    """Create ``partial`` and hold an exclusive flock on it until the returned fd is closed.

    The lock marks the file as a live writer's: :func:`clean_partials` of another
    run writing the same output never removes it. The kernel drops the lock when
    the writer dies however it dies, which is what makes a leftover a leftover.
    """
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _is_held(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def clean_partials(final: Path) -> list[Path]:
    """Remove leftovers ``final.partial-*`` of killed writers; return what was removed.

    A partial file whose writer is alive (its flock is held) is not a leftover.
    """
    removed = []
    if not final.parent.is_dir():
        return removed
    for leftover in final.parent.glob(f"{final.name}{PARTIAL_MARKER}*"):
        if _is_held(leftover):
            continue
        with contextlib.suppress(FileNotFoundError):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
            removed.append(leftover)
    return removed


def commit(partial: Path, final: Path) -> None:
    """Make ``partial`` durable and atomically visible as ``final``."""
    try:
        fsync_path(partial)
        os.replace(partial, final)
        fsync_path(final.parent)
    except OSError as exc:
        discard(partial)
        raise ExportError(describe_os_error(final, exc)) from None


def size_on_disk(path: Path) -> int | None:
    """Bytes of a file, or of every file under a directory (a Zarr store); None if gone."""
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None


def commit_tree(partial: Path, final: Path) -> None:
    """Make the directory ``partial`` (a Zarr store) durable and visible as ``final``.

    Every file and directory in it is fsynced, then it is renamed into place. A
    directory cannot be renamed over a non-empty one, so an older ``final`` is
    first renamed aside to a partial name and removed afterwards: a crash in
    between leaves no ``final`` at all (never a mixed one), and the next export's
    :func:`clean_partials` removes what is left.
    """
    try:
        for folder, _dirs, files in os.walk(partial):
            for name in files:
                fsync_path(Path(folder) / name)
            fsync_path(Path(folder))
        old = partial_path(final) if final.exists() else None
        if old is not None:
            os.replace(final, old)
        os.replace(partial, final)
        fsync_path(final.parent)
        if old is not None:
            shutil.rmtree(old)
    except OSError as exc:
        discard(partial)
        raise ExportError(describe_os_error(final, exc)) from None


def discard(partial: Path) -> None:
    """Remove a temporary file if it is still there.

    On a read-only filesystem unlinking a file that was never created fails with
    EROFS, not ENOENT; that must not mask the error that made us discard it.
    """
    try:
        if partial.is_dir() and not partial.is_symlink():
            shutil.rmtree(partial)
        else:
            partial.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        if os.path.lexists(partial):
            raise
