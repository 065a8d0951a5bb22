"""The daemon's watch over the host: memory pressure, free disk space, retention.

Memory: every ``pressure.interval`` seconds the host is read (:mod:`supervisor.
host_pressure`). On the first reading under pressure every running worker is
asked to shrink its windows (:data:`pipeline.control.SHRINK_SIGNAL`); while the
pressure lasts, each further reading pauses one more run, the lowest-priority
one (:func:`supervisor.memory_broker.lowest_priority`), at its next checkpoint.
After ``pressure.calm_checks`` calm readings in a row the runs paused for
memory resume, one per such stretch (highest priority first), and the queue
moves again. Nothing starts while the host is under pressure. Every step is a
warning in the daemon log and in the run's own log stream.

Disk: every ``disk.interval`` seconds each active run's work and output
directories are checked; a run pauses (it does not fail) when either has less
free space than ``disk.min_free`` and resumes when space is back; a queued run
does not start on such a disk (an admission check of the queue), and the same
timer lets it start once space is back. The pass also refreshes each active
run's ``disk_used``.

Runs the guard paused carry ``paused_by`` (persisted), so they are resumed by
it even after a daemon restart; a user's ``geod resume`` clears the mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pipeline.config import parse_size
from pipeline.memory import format_bytes
from supervisor.cleanup import Cleaner, run_disk_used
from supervisor.host_pressure import pressure_reason, read_pressure
from supervisor.memory_broker import lowest_priority, priority
from supervisor.protocol import Selection
from supervisor.runs import Run
from supervisor.settings import DiskSettings, size_bytes

if TYPE_CHECKING:
    from supervisor.scheduler import Scheduler

log = logging.getLogger("geod.daemon.host")

Cause = Literal["memory", "disk"]
#: How a queued run held back by low disk space says so.
DISK_WAIT = "waiting for disk space:"


def free_space(directory: Path, settings: DiskSettings) -> tuple[int, int]:
    """(free bytes, filesystem size) where ``directory`` is or would be created.

    ``disk.probe_file``, while it exists, stands in for the free space (drills, tests).
    """
    probe = settings.probe_file
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    stat = os.statvfs(existing)
    size = stat.f_blocks * stat.f_frsize
    if probe is not None:
        with contextlib.suppress(OSError, ValueError):
            return size_bytes(parse_size(probe.read_text()), size), size
    return stat.f_bavail * stat.f_frsize, size


def low_disk(run: Run, settings: DiskSettings) -> str | None:
    """Which of the run's directories is short of space (one phrase), or None."""
    config = run.config
    directories = [run.work_dir] + ([config.paths.output_dir] if config is not None else [])
    for directory in directories:
        try:
            free, size = free_space(directory, settings)
        except OSError:
            continue
        floor = size_bytes(settings.min_free, size)
        if free < floor:
            return (
                f"{format_bytes(free)} free in {directory}, "
                f"below disk.min_free {format_bytes(floor)}"
            )
    return None


def _disk_checks(runs: list[Run], settings: DiskSettings) -> list[tuple[Run, str | None, int]]:
    """(run, why its disk is short or None, bytes its directory holds) per run (blocking)."""
    return [(run, low_disk(run, settings), run_disk_used(run)) for run in runs]


class HostGuard:
    """Timers of the daemon that pause and resume runs for the host's sake."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.cleaner = Cleaner(scheduler.runs, scheduler.publish)
        self._shrunk = False
        self._calm = 0
        scheduler.admission_checks.append(self._disk_admission)

    def _disk_admission(self, run: Run) -> str | None:
        """A queued run does not start on a disk it would be paused for at once."""
        low = low_disk(run, self.scheduler.settings.disk)
        return None if low is None else f"{DISK_WAIT} {low}"

    def start(self) -> None:
        for loop in (self._measure_all, self._watch_memory, self._watch_disk, self._retention):
            self.scheduler.spawn_task(loop())

    async def _measure_all(self) -> None:
        """``disk_used`` of every run once at start (later: on exit, clean, disk checks)."""
        for run in self.scheduler.runs():
            used = await asyncio.to_thread(run_disk_used, run)
            if used != run.summary.disk_used:
                run.summary.disk_used = used
                self.scheduler.publish(run, save=False)

    # -- memory ------------------------------------------------------------------------

    async def _watch_memory(self) -> None:
        while True:
            settings = self.scheduler.settings.pressure
            reading = await asyncio.to_thread(read_pressure, settings)
            if not self.scheduler.shutting_down:
                self.memory_reading(pressure_reason(reading, settings))
            await asyncio.sleep(settings.interval)

    def memory_reading(self, reason: str | None) -> None:
        """Act on one reading: shrink, then pause one run per reading; resume when calm."""
        scheduler = self.scheduler
        broker = scheduler.broker
        if reason is not None:
            self._calm = 0
            if broker.pressure is None:
                log.warning("host memory pressure: %s", reason)
            broker.pressure = reason
            running = self._running()
            if not self._shrunk:
                self._shrunk = True
                for run in running:
                    scheduler.say(
                        run, "WARNING", f"host memory pressure ({reason}): shrinking windows"
                    )
                    scheduler.shrink(run)
                return
            victim = lowest_priority(running)
            if victim is not None:
                self._pause(victim, "memory", f"paused for host memory pressure: {reason}")
            return
        paused = self._paused_by("memory")  # (after a restart: pressure unknown, runs paused)
        if broker.pressure is None and not paused:
            return
        self._calm += 1
        if self._calm < scheduler.settings.pressure.calm_checks:
            return
        self._calm = 0
        if paused:
            first = max(paused, key=lambda run: (priority(run), -(run.summary.submitted or 0)))
            self._resume(first, "host memory pressure is over")
            if len(paused) > 1:
                return
        if broker.pressure is not None:
            log.warning("host memory pressure is over (was: %s)", broker.pressure)
        broker.pressure = None
        self._shrunk = False
        scheduler.schedule()

    # -- disk --------------------------------------------------------------------------

    async def _watch_disk(self) -> None:
        while True:
            settings = self.scheduler.settings.disk
            runs = [
                run
                for run in self.scheduler.runs()
                if run.id in self.scheduler.workers or run.summary.paused_by == "disk"
            ]
            checks = await asyncio.to_thread(_disk_checks, runs, settings)
            if not self.scheduler.shutting_down:
                for run, low, used in checks:
                    run.summary.disk_used = used
                    self.disk_reading(run, low)
                if any(
                    run.summary.state == "queued"
                    and (run.summary.wait_reason or "").startswith(DISK_WAIT)
                    for run in self.scheduler.runs()
                ):
                    self.scheduler.schedule()  # (asks the disk again for those runs)
            await asyncio.sleep(settings.interval)

    def disk_reading(self, run: Run, low: str | None) -> None:
        summary = self.scheduler.get(run.id).summary
        if low is not None and summary.state == "running":
            self._pause(run, "disk", f"paused for disk space: {low}")
        elif low is None and summary.state == "paused" and summary.paused_by == "disk":
            self._resume(run, "disk space is back")
        elif low is not None and summary.paused_by == "disk":
            reason = f"paused for disk space: {low}"
            if summary.wait_reason != reason:  # the free space figure moved
                summary.wait_reason = reason
                self.scheduler.publish(run, save=False)

    # -- retention ---------------------------------------------------------------------

    async def _retention(self) -> None:
        while True:
            settings = self.scheduler.settings
            if settings.retention is not None and not self.scheduler.shutting_down:
                try:
                    await self.cleaner.retention(settings.retention)
                except Exception:  # a bad run directory must not end the timer
                    log.exception("retention pass failed")
            await asyncio.sleep(settings.retention_interval)

    # -- helpers -----------------------------------------------------------------------

    def _running(self) -> list[Run]:
        scheduler = self.scheduler
        return [
            run
            for run in scheduler.runs()
            if run.summary.state == "running"
            and run.id in scheduler.workers
            and run.summary.paused_by is None  # (a pause already asked for, not yet acked)
        ]

    def _paused_by(self, cause: Cause) -> list[Run]:
        return [
            run
            for run in self.scheduler.runs()
            if run.summary.state == "paused" and run.summary.paused_by == cause
        ]

    def _pause(self, run: Run, cause: Cause, reason: str) -> None:
        self.scheduler.say(run, "WARNING", reason)
        self.scheduler.pause(Selection(run=run.id))
        run.summary.paused_by = cause
        run.summary.wait_reason = reason
        self.scheduler.publish(run)

    def _resume(self, run: Run, why: str) -> None:
        self.scheduler.say(run, "INFO", f"resuming: {why}")
        self.scheduler.resume(Selection(run=run.id))
