"""Facts every layer must agree on, written once: names, codes, levels and states.

The worker (pipeline), the daemon and CLI (supervisor) and the dashboard (tui)
meet at environment variables, exit codes, log levels and run states. Each is
defined here and imported everywhere it is used, so the layers cannot drift
apart (a renamed variable or a new state changes in one place). This module
imports nothing, so any layer may import it.
"""

from __future__ import annotations

from typing import Literal, get_args

# -- environment variables ---------------------------------------------------------

#: Inherited file descriptor a worker writes its NDJSON events to.
EVENTS_FD_ENV = "GEOD_EVENTS_FD"
#: The PostgreSQL URL: the daemon's telemetry, and the database a worker's
#: ``postgres`` export writes to when its config names none. A worker reads it
#: once at start (:mod:`pipeline.worker`); nothing deeper consults the environment.
DATABASE_URL_ENV = "GEOD_DATABASE_URL"
#: Overrides the daemon's state directory.
STATE_DIR_ENV = "GEOD_STATE_DIR"
#: Overrides the daemon's socket path (daemon and clients alike).
SOCKET_ENV = "GEOD_SOCKET"

# -- worker exit codes (the daemon's restart policy keys on them) --------------------

#: Finished, or stopped cleanly at a checkpoint (the last state event says which).
WORKER_EXIT_OK = 0
#: Failed at run time: a retry may help.
WORKER_EXIT_FAILED = 1
#: Invalid config or input: a retry cannot help.
WORKER_EXIT_INPUT = 2

# -- log levels ----------------------------------------------------------------------

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
#: Every level, least severe first (their order is their rank).
LOG_LEVELS: tuple[LogLevel, ...] = get_args(LogLevel)
#: Levels a foreground run prints above its progress bars.
PROBLEM_LEVELS: frozenset[str] = frozenset({"WARNING", "ERROR", "CRITICAL"})


_RANKS = {name: rank for rank, name in enumerate(LOG_LEVELS)}


def level_rank(level: str | None) -> int:
    """Position of ``level`` in :data:`LOG_LEVELS` (case-insensitive); unknown ranks highest."""
    return _RANKS.get(str(level).upper(), len(LOG_LEVELS))


# -- states --------------------------------------------------------------------------

#: What a worker says about itself (``StateEvent.state``).
WorkerState = Literal["running", "paused", "resumed", "stopping", "stopped", "done", "failed"]
#: A run's state as the daemon keeps it (``RunSummary.state``); ``scheduled`` waits for
#: its start time (``geod start --delay/--at``), then is ``queued`` like any other run.
RunState = Literal[
    "scheduled",
    "queued",
    "running",
    "paused",
    "stopping",
    "done",
    "failed",
    "killed",
    "interrupted",
]
RUN_STATES: tuple[RunState, ...] = get_args(RunState)
#: States a run never leaves without a user action.
FINAL_STATES: frozenset[str] = frozenset({"done", "failed", "killed"})
#: States in which a run has (or is getting) a worker process.
ACTIVE_STATES: frozenset[str] = frozenset({"running", "paused", "stopping"})
#: States of a run waiting for its first (or next) worker: the queue.
WAITING_STATES: frozenset[str] = frozenset({"scheduled", "queued"})
#: States a run can be retried from.
RETRYABLE_STATES: frozenset[str] = frozenset({"failed", "killed", "interrupted"})
