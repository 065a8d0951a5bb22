"""The queue's rules: which waiting run starts next, and what a run still waits for.

The scheduler (:mod:`supervisor.scheduler`) owns workers and states; this
module only answers questions about the queue, so the rules read in one place
and other admission checks (a host memory budget) plug in beside them:

- order: higher ``priority`` first, ties in submission order (as pueue does);
- time: a ``scheduled`` run waits for its ``start_at`` (``--delay``/``--at``),
  a queued retry for its backoff (``retry_at``);
- dependencies: a run submitted ``--after`` others starts once all of them
  ended ``done``; one that ended ``failed`` or ``killed`` (or vanished) fails
  it, with a one-line reason naming that run;
- concurrency: ``geod parallel N`` overrides the settings' ``concurrency``
  and the override is persisted in ``STATE_DIR/queue.json`` (atomically, so
  a SIGKILLed daemon keeps it); a changed ``concurrency`` in the settings file
  (SIGHUP) drops the override again: the newest decision wins.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.durable import write_atomic
from supervisor.protocol import RunSummary
from supervisor.runs import Run

log = logging.getLogger("geod.daemon.queue")

QUEUE_STATE_NAME = "queue.json"

#: An extra admission rule: why ``run`` must not start now, or None if it may.
AdmissionCheck = Callable[[Run], str | None]


def start_order(runs: Iterable[Run]) -> list[Run]:
    """Queued runs in the order they should start: priority, then submission."""
    queued = [run for run in runs if run.summary.state == "queued"]
    return sorted(queued, key=_order_key)


def _order_key(run: Run) -> tuple[int, float, int, str]:
    summary = run.summary
    # Run ids sort by length first: r10000 comes after r9999.
    return (-summary.priority, summary.submitted or 0.0, len(run.id), run.id)


def waiting_state(summary: RunSummary, now: float) -> Literal["scheduled", "queued"]:
    """``scheduled`` while the run's start time lies ahead, else ``queued``."""
    if summary.start_at is not None and summary.start_at > now:
        return "scheduled"
    return "queued"


def next_wake(runs: Iterable[Run], now: float) -> float | None:
    """The earliest future start time or retry time: when the queue must be looked at again."""
    moments = []
    for run in runs:
        summary = run.summary
        if summary.state == "scheduled" and summary.start_at is not None:
            moments.append(summary.start_at)
        elif summary.state == "queued" and summary.retry_at is not None:
            moments.append(summary.retry_at)
    future = [moment for moment in moments if moment > now]
    return min(future, default=None)


@dataclass(frozen=True)
class Dependencies:
    """What a run's ``--after`` list says now: start, wait (why), or fail (why)."""

    waiting: str | None = None
    failed: str | None = None


#: Dependency states that fail the dependent: it can never run as asked.
_BROKEN = frozenset({"failed", "killed"})


def dependencies(run: Run, lookup: Callable[[str], Run | None]) -> Dependencies:
    """Check ``run.summary.after``; the first broken dependency decides, else the first pending."""
    pending: list[str] = []
    for run_id in run.summary.after:
        other = lookup(run_id)
        if other is None:
            return Dependencies(failed=f"dependency {run_id} no longer exists")
        state = other.summary.state
        if state in _BROKEN:
            return Dependencies(failed=f"dependency {run_id} ended {state}")
        if state != "done":
            pending.append(f"{run_id} ({state})")
    if pending:
        return Dependencies(waiting=f"waiting for {', '.join(pending)}")
    return Dependencies()


class QueueState:
    """The queue's own persisted settings (today: the ``geod parallel`` override)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / QUEUE_STATE_NAME
        self.concurrency: int | None = None
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("%s unreadable (%s); using the settings' concurrency", self.path, exc)
            return
        value = data.get("concurrency") if isinstance(data, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            self.concurrency = value
            log.info("concurrency %d (set with geod parallel)", value)

    def set_concurrency(self, value: int | None) -> None:
        """Persist the override (None: back to the settings' value)."""
        self.concurrency = value
        write_atomic(self.path, json.dumps({"concurrency": value}).encode())

    def effective(self, configured: int) -> int:
        return self.concurrency if self.concurrency is not None else configured
