"""Crash recovery: reconcile the runs a previous daemon left behind, once, at start.

A daemon that died (SIGKILL, power loss) leaves state files saying "running",
perhaps a worker still running in its own process group, and telemetry rows
still in the dead writer's memory. Before the scheduler starts anything, this
module parks such runs as ``interrupted`` (or ``killed`` if a kill was under
way), stops leftover workers (the scheduler holds those runs back until they
are gone), replays the history of unsettled runs into telemetry, and queues
again the runs whose restart policy says so.
"""

from __future__ import annotations

import asyncio
import logging
import time

import psutil

from pipeline.contract import ACTIVE_STATES
from supervisor.process import find_leftover_workers, terminate_leftover
from supervisor.runs import Run
from supervisor.scheduler import Scheduler
from supervisor.sink import TelemetrySink

log = logging.getLogger("geod.daemon.recovery")

#: States a previous daemon may have left with events telemetry had not stored yet.
UNSETTLED_STATES = ACTIVE_STATES | {"queued"}


class Recovery:
    """Reconciles persisted runs with reality; the scheduler's ``held`` runs wait for it."""

    def __init__(self, scheduler: Scheduler, telemetry: TelemetrySink | None) -> None:
        self.scheduler = scheduler
        self.telemetry = telemetry

    def recover(self) -> None:
        """Reconcile runs persisted by a previous daemon (called once at start)."""
        runs = self.scheduler.runs()
        leftovers = find_leftover_workers({run.id: str(run.config_file) for run in runs})
        for run in runs:
            summary = run.summary
            if summary.state in UNSETTLED_STATES:
                self._replay_telemetry(run)
            summary.pid = None
            summary.paused_hard = False
            if summary.state in ("running", "stopping"):
                stopping = summary.state == "stopping"
                summary.state = "killed" if stopping else "interrupted"
                summary.error = None if stopping else "the daemon stopped while it was running"
                summary.finished = time.time()
            if run.id in leftovers:
                self.scheduler.held.add(run.id)
                self.scheduler.spawn_task(self._reap_leftover(run, leftovers[run.id]))
                continue
            self._after_recovery(run)

    def _replay_telemetry(self, run: Run) -> None:
        """Hand telemetry the run's whole history again after a restart.

        The writer holds up to a flush interval of events in memory, so a daemon
        that was SIGKILLed lost those rows although every event is in the history
        file. Rows are keyed by (run, seq): re-recording stored events changes
        nothing and the missing ones fill the gap. Only runs a previous daemon left
        unsettled are replayed, so a restart costs nothing for finished runs.
        """
        if self.telemetry is None:
            return
        for event in run.read_history():
            try:
                self.telemetry.record_event(event)
            except Exception:
                log.exception("telemetry replay of run %s failed", run.id)
                return

    async def _reap_leftover(self, run: Run, process: psutil.Process) -> None:
        try:
            await asyncio.to_thread(terminate_leftover, process, self.scheduler.settings.kill_grace)
        finally:
            self.scheduler.held.discard(run.id)
        self.scheduler.say(
            run, "WARNING", f"stopped worker {process.pid} left running by a previous daemon"
        )
        self._after_recovery(run)
        self.scheduler.schedule()

    def _after_recovery(self, run: Run) -> None:
        if run.summary.state == "interrupted" and run.restart_policy().policy == "on-failure":
            run.summary.state = "queued"
            run.summary.retry_at = None
            self.scheduler.say(
                run, "INFO", "resuming from its checkpoint (interrupted by a daemon stop)"
            )
        self.scheduler.publish(run)
