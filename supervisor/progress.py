"""How far a run is, how fast it goes and when it will be done — from the work actually done.

A user watching a six-hour run must be able to trust three numbers:

* **progress** counts windows weighted by their grid cells (every window of a
  stage's datasets, so a stage moves window by window, not in whole-dataset
  steps, and a small edge window moves it less than a full one) and never goes back: a
  pause, a retry or a resume that re-announces its stages cannot lower it, and
  it reads 100 % only when the run's root node says the run is done;
* **running time** counts only the seconds the run was running: pauses, the
  queue and the wait before a retry do not count, and it survives retries,
  resumes and daemon restarts (it lives in the run's summary);
* **time left** divides what is left by a *smoothed* rate measured over running
  time, and comes with a range (how much the recent rate wanders), so the
  dashboard can say ``done ≈ 20:40 (±10 min)`` instead of a number that jumps.

The daemon computes these once per run (``supervisor.runs``); the CLI and the
dashboard read them from the summary and share :func:`running_seconds` and
:func:`stage_fraction`, so both show the same figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pipeline.events import StageEvent
from supervisor.protocol import RunSummary

#: A running run never reads 100 %: only the root node's ``done`` does that.
PROGRESS_CEILING = 0.999
#: Rate samples are taken at most this often (running seconds): per-event rates are noise.
RATE_SAMPLE_S = 2.0
#: Time constant of the rate's exponential smoothing (running seconds). Long enough to
#: ride over one slow window, short enough to follow a stage that is faster than the last.
RATE_TAU_S = 60.0
#: The ETA range is this many standard deviations of the smoothed rate wide on each side.
RANGE_SIGMAS = 1.0
#: The rate's spread is never taken as more than this share of the rate itself (the upper
#: end of the range would otherwise be infinite right after a stall).
MAX_RELATIVE_SPREAD = 0.75
#: Node states whose work is finished (a skipped stage has nothing left to do).
_FINISHED = ("done", "skipped")


def running_seconds(summary: RunSummary, now: float) -> float | None:
    """Seconds the run has been running, pauses and queueing excluded; None if it never ran.

    A run recorded before the running clock existed falls back to its wall time.
    """
    if summary.running_since is None and summary.running_time is None:
        if summary.started is None:
            return None
        end = summary.finished if summary.finished is not None else now
        return max(0.0, end - summary.started)
    base = summary.running_time or 0.0
    if summary.running_since is not None:
        base += max(0.0, now - summary.running_since)
    return base


def stage_fraction(
    node_id: str, node: Callable[[str], StageEvent], children: Mapping[str, Sequence[str]]
) -> float:
    """Done share of a node, counted in grid cells where the node says them, else in windows.

    A node with children that count work (``resample`` → one node per dataset)
    is the sum of their done work over the sum of their work, so it moves
    with every window instead of once per dataset. A node without such children
    is its own ``cells_done/cells_total`` (``done/total`` in a history written
    before nodes carried cells); a finished one is 1. Children are weighed by
    cells only when every child with work says its cells, so cells and windows
    are never added together.
    """
    event = node(node_id)
    if event.status in _FINISHED:
        return 1.0
    kids = [node(kid) for kid in children.get(node_id, ())]
    by_cells = bool(kids) and all(kid.cells_total for kid in kids if kid.total)
    done = total = 0.0
    for kid_id, kid_event in zip(children.get(node_id, ()), kids, strict=True):
        if by_cells:
            weight = float(kid_event.cells_total or 0)
        else:
            weight = float(kid_event.total or _leaf_total(kid_id, node, children))
        if weight <= 0:
            continue
        total += weight
        done += weight * stage_fraction(kid_id, node, children)
    if total > 0:
        return min(1.0, done / total)
    if event.cells_total and event.cells_done is not None:
        return min(1.0, event.cells_done / event.cells_total)
    return min(1.0, event.done / event.total) if event.total else 0.0


def _leaf_total(
    node_id: str, node: Callable[[str], StageEvent], children: Mapping[str, Sequence[str]]
) -> int:
    return sum(
        node(kid).total or _leaf_total(kid, node, children) for kid in children.get(node_id, ())
    )


def run_fraction(stages: Mapping[str, StageEvent]) -> float | None:
    """Progress of a run from its stage nodes (None before the root node is known).

    Every stage counts as an equal share of the root's ``total`` (its number of
    stages); a stage not yet announced counts as nothing done.
    """
    root = stages.get("run")
    if root is None:
        return None
    if root.status == "done":
        return 1.0
    if not root.total:
        return 0.0
    children: dict[str, list[str]] = {}
    for stage_id, event in stages.items():
        if event.parent is not None:
            children.setdefault(event.parent, []).append(stage_id)
    stage_ids = children.get("run", [])
    done = sum(stage_fraction(sid, stages.__getitem__, children) for sid in stage_ids)
    return min(PROGRESS_CEILING, done / root.total)


@dataclass
class RateEstimator:
    """An exponentially smoothed progress rate (fraction per running second) and its spread."""

    rate: float | None = None
    variance: float = 0.0
    _last: tuple[float, float] | None = None

    def add(self, running: float, progress: float) -> None:
        """One (running seconds, progress) point; points closer than RATE_SAMPLE_S are skipped."""
        if self._last is None or running < self._last[0]:
            self._last = (running, progress)
            return
        dt = running - self._last[0]
        if dt < RATE_SAMPLE_S:
            return
        instant = max(0.0, progress - self._last[1]) / dt
        self._last = (running, progress)
        if self.rate is None:
            self.rate = instant
            return
        weight = 1.0 - math.exp(-dt / RATE_TAU_S)
        deviation = instant - self.rate
        self.rate += weight * deviation
        self.variance = (1.0 - weight) * (self.variance + weight * deviation * deviation)

    def estimate(self, progress: float) -> tuple[float, float] | None:
        """(seconds left, ± seconds) at the smoothed rate, or None while it is unknown."""
        rate = self.rate
        if not rate or rate <= 0 or progress >= 1.0:
            return None
        left = 1.0 - progress
        spread = min(RANGE_SIGMAS * math.sqrt(self.variance), MAX_RELATIVE_SPREAD * rate)
        soonest, latest = left / (rate + spread), left / (rate - spread)
        return left / rate, (latest - soonest) / 2
