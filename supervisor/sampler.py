"""Memory of a worker's whole process tree, read from /proc (through psutil where cheap).

The worker reports its own RSS between windows, but a stage may spawn helpers
(GDAL, Dask, a grandchild) and a stuck worker reports nothing, so the daemon
measures the tree itself. RSS is cheap (``/proc/PID/statm``). USS (memory that
would be freed if the process exited) needs the kernel to walk the page tables
(``smaps``: ~10 ms of daemon CPU per 500 MB of worker), so the caller asks for
it only every ``uss_interval``; it may also be denied for another user's
process, and RSS alone is then reported rather than failing the sample.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import psutil

from pipeline.events import MemoryEvent

#: ``operation`` of the MemoryEvents the daemon makes (the worker's own have others).
SAMPLE_OPERATION = "sample"


def descendants(pid: int) -> list[int]:
    """``pid``'s children, recursively, from /proc/PID/task/*/children.

    psutil's ``children(recursive=True)`` scans every process on the machine
    (~2 ms); the kernel's per-task children lists cost a few reads.
    """
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        tasks = Path(f"/proc/{parent}/task")
        try:
            listing = list(tasks.iterdir())
        except OSError:
            continue
        for task in listing:
            with contextlib.suppress(OSError, ValueError):
                children = [int(c) for c in (task / "children").read_text().split()]
                found.extend(children)
                pending.extend(children)
    return found


def sample_tree(pid: int, stage: str | None = None, with_uss: bool = True) -> MemoryEvent | None:
    """RSS (and USS if ``with_uss``) summed over ``pid`` and its descendants; None if gone."""
    if not psutil.pid_exists(pid):
        return None
    rss = 0
    uss: int | None = 0 if with_uss else None
    for member in [pid, *descendants(pid)]:
        try:
            process = psutil.Process(member)
            if uss is not None:
                try:
                    info = process.memory_full_info()
                    rss += info.rss
                    uss += info.uss
                    continue
                except psutil.AccessDenied:
                    uss = None
            rss += process.memory_info().rss
        except psutil.Error:  # exited between listing and reading: it holds no memory now
            continue
    return MemoryEvent(
        rss=rss,
        uss=uss,
        system_available=psutil.virtual_memory().available,
        stage=stage,
        operation=SAMPLE_OPERATION,
    )
