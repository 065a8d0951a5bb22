"""The host memory broker: running workers share ``host_memory`` by their predicted peaks.

Each run gets a predicted peak when it is submitted (kept in its summary, so it
survives a daemon restart), best source first:

1. telemetry: the peak RSS (``geod.v_memory_by_stage``) of the latest finished
   run with the same config fingerprint, else of one with the same inputs
   (datasets and grid: the same data sizes);
2. the run's own ``memory.budget``, the most its memory governor aims to use.

A queued run starts only if its peak fits in what the running ones leave of the
host budget; a running run holds ``max(predicted peak, current RSS)``, so a
run that outgrows its prediction is counted at its real size. A run whose peak
exceeds the whole budget still starts when nothing else runs (else it would
wait for ever), with a warning. While the host is under memory pressure nothing
starts. The first queued run that does not fit blocks the ones behind it, so a
big run is never starved by a stream of small ones.

The run the host guard pauses under pressure is the lowest-priority running one
(``priority``, higher = more important, as the queue orders runs), the newest
submission among equals: the one whose pause costs least.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pipeline.config import PipelineConfig
from pipeline.memory import format_bytes
from supervisor.runs import Run

log = logging.getLogger("geod.daemon.memory")

#: (config fingerprint, data fingerprint) → (peak bytes, id of the run it was measured on).
PeakLookup = Callable[[str, str], tuple[int, str] | None]
#: How a run that does not fit says so (the runs behind it in the queue wait for it).
NEEDS = "waiting for memory: needs"
#: Longest a submission waits for the telemetry lookup before the budget is used instead.
LOOKUP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Fingerprints:
    """What makes two runs' memory comparable: the whole config, or just its inputs."""

    config: str
    data: str


def fingerprints(config: PipelineConfig) -> Fingerprints:
    """Hashes of the frozen config, and of its datasets and grid alone."""
    whole = config.model_dump_json()
    data = config.model_dump_json(include={"datasets", "grid"})
    return Fingerprints(_digest(whole), _digest(data))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def priority(run: Run) -> int:
    """The run's priority (higher first, as the queue orders runs)."""
    return run.summary.priority


def lowest_priority(runs: Iterable[Run]) -> Run | None:
    """The run to pause first: lowest priority, newest submission among equals."""
    return min(runs, key=lambda run: (priority(run), -(run.summary.submitted or 0.0)), default=None)


def need(run: Run) -> int:
    """The run's predicted peak (its budget if it was queued before predictions existed)."""
    if run.summary.predicted_peak is not None:
        return run.summary.predicted_peak
    config = run.config
    return 0 if config is None else config.memory.budget_bytes()


def held(run: Run) -> int:
    """Bytes a started run holds against the host budget."""
    return max(need(run), run.summary.rss or 0)


class MemoryBroker:
    """Predicts each run's peak and decides whether a queued run fits beside the running ones."""

    def __init__(self, budget: Callable[[], int], lookup: PeakLookup | None = None) -> None:
        #: The host budget in bytes (read on every decision: SIGHUP may change it).
        self._budget = budget
        self._lookup = lookup
        #: Why nothing may start now (host memory pressure), or None.
        self.pressure: str | None = None

    async def predict(self, run: Run) -> None:
        """Fill the run's fingerprints and predicted peak (telemetry first, then its budget)."""
        config = run.config
        summary = run.summary
        if config is None:
            return
        prints = fingerprints(config)
        summary.config_fingerprint, summary.data_fingerprint = prints.config, prints.data
        found = None
        if self._lookup is not None:
            try:
                found = await asyncio.wait_for(
                    asyncio.to_thread(self._lookup, prints.config, prints.data), LOOKUP_TIMEOUT
                )
            except Exception as exc:  # the database away must not stop a submission
                log.warning("run %s: no memory prediction from telemetry: %s", run.id, exc)
        if found is not None:
            peak, source = found
            summary.predicted_peak = peak
            summary.prediction = f"peak of run {source}"
        else:
            summary.predicted_peak = config.memory.budget_bytes()
            summary.prediction = "memory.budget"

    def reserved(self, running: Iterable[Run]) -> int:
        return sum(held(run) for run in running)

    def admit(self, run: Run, running: list[Run], earlier: list[Run]) -> str | None:
        """None if ``run`` may start beside ``running``, else why it waits (one line).

        ``earlier`` are the queued runs before it in start order, already decided in
        this pass: one of them waiting for memory goes first.
        """
        if self.pressure is not None:
            return f"waiting for memory: the host is under memory pressure ({self.pressure})"
        ahead = next((r for r in earlier if (r.summary.wait_reason or "").startswith(NEEDS)), None)
        if ahead is not None:
            return f"waiting for memory: run {ahead.id} goes first"
        peak = need(run)
        if not running:
            budget = self._budget()
            if peak > budget:
                log.warning(
                    "run %s: predicted peak %s exceeds the host budget %s; starting it alone",
                    run.id,
                    format_bytes(peak),
                    format_bytes(budget),
                )
            return None
        free = max(0, self._budget() - self.reserved(running))
        if peak <= free:
            return None
        return f"{NEEDS} ~{format_bytes(peak)}, {format_bytes(free)} free of the host budget"

    def status(self, running: Iterable[Run]) -> dict[str, object]:
        """What ``geod status`` shows of the broker."""
        return {
            "budget": self._budget(),
            "reserved": self.reserved(running),
            "pressure": self.pressure,
        }
