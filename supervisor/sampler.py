"""Memory of a worker's whole process tree, read with psutil.

The worker reports its own RSS between windows, but a stage may spawn helpers
(GDAL, Dask, a grandchild) and a stuck worker reports nothing, so the daemon
measures the tree itself. USS (memory that would be freed if the process
exited) needs ``/proc/PID/smaps``, which may be denied for another user's
process; RSS alone is then reported rather than failing the sample.
"""

from __future__ import annotations

import psutil

from pipeline.events import MemoryEvent

#: ``operation`` of the MemoryEvents the daemon makes (the worker's own have others).
SAMPLE_OPERATION = "sample"


def sample_tree(pid: int, stage: str | None = None) -> MemoryEvent | None:
    """RSS and USS summed over ``pid`` and its descendants; None if ``pid`` is gone."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    rss = 0
    uss: int | None = 0
    for process in processes:
        try:
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
