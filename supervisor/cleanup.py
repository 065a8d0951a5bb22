"""Clean-up of finished runs: their layer stores and work files go, outputs and history stay.

A finished run (done, failed, killed) keeps ``work/`` — the layer store, its
checkpoints and the worker's own ``events.ndjson`` — until it is cleaned, by
``geod clean`` or by the daemon's daily ``retention`` pass. Nothing else
prunes that history. What stays: the run directory's state file, its event
history (``geod logs``, ``geod report``), its worker log, the outputs in
``paths.output_dir`` and telemetry. A run that may still need its work files
(queued, running, paused, stopping, interrupted) is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.contract import FINAL_STATES
from supervisor.protocol import CleanedRun, CleanParams, ErrorCode, ProtocolError
from supervisor.runs import Run

log = logging.getLogger("geod.daemon.clean")


def tree_size(path: Path) -> int:
    """Bytes allocated under ``path`` (files counted once, symlinks not followed)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [path]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    if (info.st_dev, info.st_ino) in seen:
                        continue
                    seen.add((info.st_dev, info.st_ino))
                    total += info.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
    return total


def run_disk_used(run: Run) -> int:
    """Bytes the run directory holds (work files, logs, history)."""
    return tree_size(run.run_dir)


def _select(runs: list[Run], params: CleanParams, now: float) -> list[Run]:
    by_id = {run.id: run for run in runs}
    chosen: dict[str, Run] = {}
    for run_id in params.runs:
        if run_id not in by_id:
            raise ProtocolError(ErrorCode.UNKNOWN_RUN, f"no run {run_id!r}")
        chosen[run_id] = by_id[run_id]
    for run in runs:
        state, finished = run.summary.state, run.summary.finished
        if params.done and state == "done":
            chosen[run.id] = run
        older = params.older_than
        if older is not None and state in FINAL_STATES and finished and finished < now - older:
            chosen[run.id] = run
    for run in chosen.values():
        if run.summary.state not in FINAL_STATES:
            raise ProtocolError(
                ErrorCode.BAD_STATE,
                f"cannot clean run {run.id}: it is {run.summary.state} "
                "(only done, failed or killed runs are cleaned)",
            )
    return list(chosen.values())


def _clean_one(run: Run, dry_run: bool) -> CleanedRun:
    """Measure and (unless ``dry_run``) remove the run's work directory."""
    work = run.work_dir
    if not work.exists():
        return CleanedRun(run=run.id, freed=0)
    freed = tree_size(work)
    if not dry_run:
        shutil.rmtree(work)
    return CleanedRun(run=run.id, freed=freed, paths=[str(work)])


class Cleaner:
    """``runs.clean`` and the retention pass, on the daemon's runs."""

    def __init__(self, runs: Callable[[], list[Run]], publish: Callable[[Run], None]) -> None:
        self._runs = runs
        self._publish = publish

    async def clean(self, params: CleanParams) -> list[CleanedRun]:
        """Clean the selected runs; refuses the whole request if one may still need its files."""
        chosen = _select(self._runs(), params, time.time())
        cleaned = []
        for run in chosen:
            try:
                result = await asyncio.to_thread(_clean_one, run, params.dry_run)
            except OSError as exc:
                raise ProtocolError(
                    ErrorCode.INTERNAL_ERROR,
                    f"cannot clean run {run.id}: {exc.strerror or exc} ({exc.filename})",
                ) from None
            if not params.dry_run and result.paths:
                log.info("run %s: cleaned %s (%d bytes)", run.id, run.work_dir, result.freed)
                run.summary.disk_used = await asyncio.to_thread(run_disk_used, run)
                self._publish(run)
            cleaned.append(result)
        return cleaned

    async def retention(self, older_than: float) -> list[CleanedRun]:
        """The daily pass: every finished run that ended more than ``older_than`` s ago."""
        cleaned = await self.clean(CleanParams(older_than=older_than))
        freed = sum(item.freed for item in cleaned)
        if any(item.paths for item in cleaned):
            log.info("retention: cleaned %d run(s), %d bytes freed", len(cleaned), freed)
        return cleaned
