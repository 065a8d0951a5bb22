"""The dashboard's client-side model: what the daemon said, and what changed since the last paint.

The connection feeds it a ``subscribe`` snapshot and then every notification;
widgets never see raw events. Two properties matter:

* **No duplicates, no gaps.** Every event carries a per-run ``seq``; anything at
  or below the highest applied ``seq`` of its run is dropped, so a resync after
  a reconnect (snapshot + log back-fill) can overlap freely with what we already
  hold without a log line appearing twice.
* **Batching.** Applying an event only records *what* changed (run ids, stage
  ids, appended log lines, memory samples) in :class:`Changes`. The app drains
  that on a timer (about 10 Hz) and updates only the touched widgets/nodes, so
  2,000 log lines/s cost one log write and one tree pass per frame, not 2,000.

It imports nothing from Textual: it is unit-tested by feeding it real
``pipeline.events`` objects, and the benchmark drives it directly.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from pipeline.events import (
    CheckpointEvent,
    Event,
    GovernorEvent,
    LogEvent,
    MemoryEvent,
    RunStateEvent,
    StageEvent,
)
from supervisor.progress import running_seconds, stage_fraction
from supervisor.protocol import RunSummary, Snapshot
from supervisor.run_map import RunMap

#: Log lines kept per run in memory; older ones are paged in from the daemon on demand.
LOG_BUFFER_LINES = 20_000
#: Memory samples kept per run: one per ``telemetry.memory_interval`` (1 s by default)
#: is about 6 hours; the chart's "whole run" view decimates longer histories.
MEMORY_SAMPLES = 20_000
#: The daemon marks its own process-tree samples with this ``MemoryEvent.operation``.
TREE_SAMPLE = "sample"
#: Worker readings come after every window (up to ~100/s); one per this many seconds is kept.
WORKER_READING_S = 1.0
#: Progress samples kept per stage for its rate; the rate is measured over this window.
RATE_WINDOW_S = 15.0
#: Upper bound of progress samples per stage inside the rate window (100 events/s × 15 s).
RATE_SAMPLES = 1_500
#: Run-state changes the events pane keeps (a snapshot brings the newest of them).
TRANSITIONS_KEPT = 500


@dataclass(slots=True)
class LogLine:
    """One log record as the log view needs it."""

    seq: int
    time: float
    level: str
    logger: str
    message: str
    stage: str | None = None
    dataset: str | None = None

    @classmethod
    def from_event(cls, event: LogEvent) -> LogLine:
        return cls(
            event.seq or 0,
            event.time,
            event.level,
            event.logger,
            event.message,
            event.stage,
            event.dataset,
        )

    def matches_stage(self, stage: str) -> bool:
        """True when the line belongs to ``stage`` or one of its descendants.

        A line names its stage (``resample``) and perhaps its dataset (``bio1``);
        a tree node id is a path (``resample/bio1``), so both forms are compared.
        """
        for own in (self.stage, f"{self.stage}/{self.dataset}" if self.dataset else None):
            if own and (own == stage or own.startswith(stage + "/")):
                return True
        return False


@dataclass(slots=True)
class MemorySample:
    time: float
    rss: int
    system_available: int | None = None
    window_size: int | None = None


@dataclass(slots=True)
class MemoryLevels:
    """Budget and the governor's thresholds (fractions of the budget), when known."""

    budget: int | None = None
    warning: float | None = None
    critical: float | None = None
    level: str = "normal"


@dataclass(slots=True)
class WorkerSeries:
    """One Dask worker's memory, as the run's executor sampled it: its own series and limits."""

    samples: deque[MemorySample] = field(default_factory=lambda: deque(maxlen=MEMORY_SAMPLES))
    #: The worker's memory limit as the budget, Dask's spill and pause fractions as levels.
    levels: MemoryLevels = field(default_factory=MemoryLevels)


@dataclass(slots=True)
class StageProgress:
    """A stage-tree node as last reported (the event schema's own :class:`StageEvent`) plus
    the recent progress samples its rate comes from (the run's ETA is the daemon's)."""

    node: StageEvent
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=RATE_SAMPLES))

    def update(self, event: StageEvent) -> None:
        self.node = event
        if event.status == "running":
            self.samples.append((event.time, event.done))
            while self.samples and event.time - self.samples[0][0] > RATE_WINDOW_S:
                self.samples.popleft()
        else:
            self.samples.clear()

    @property
    def rate(self) -> float | None:
        """Units per second over the last :data:`RATE_WINDOW_S` seconds, if measurable."""
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        if t1 <= t0 or d1 < d0:
            return None
        return (d1 - d0) / (t1 - t0)


@dataclass
class RunView:
    """Everything the dashboard holds about one run."""

    summary: RunSummary
    applied_seq: int = 0
    stages: dict[str, StageProgress] = field(default_factory=dict)
    children: dict[str, list[str]] = field(default_factory=dict)
    logs: deque[LogLine] = field(default_factory=lambda: deque(maxlen=LOG_BUFFER_LINES))
    logs_loaded: bool = False
    #: The daemon's samples of the worker's process tree (RSS/USS, system available).
    memory: deque[MemorySample] = field(default_factory=lambda: deque(maxlen=MEMORY_SAMPLES))
    #: The worker's own readings between windows, thinned: RSS and the governor's window.
    worker_memory: deque[MemorySample] = field(default_factory=lambda: deque(maxlen=MEMORY_SAMPLES))
    levels: MemoryLevels = field(default_factory=MemoryLevels)
    #: Each Dask worker's samples (``MemoryEvent.worker``), by address: the memory panel
    #: can show one of them instead of the run's own process tree.
    workers: dict[str, WorkerSeries] = field(default_factory=dict)
    #: The run's windows as a map of the grid, per dataset: the daemon's ``runs.map``
    #: (its whole history) plus the window checkpoints that arrive live.
    map: RunMap = field(default_factory=RunMap)
    #: Window events that arrived while a ``runs.map`` request was on its way
    #: (None when none is): folded into the reply, which may not include them yet.
    map_held: list[CheckpointEvent] | None = None

    def fraction(self, stage_id: str) -> float:
        """Done share of a stage in windows by their cells, as the daemon counts progress.

        The run node and stages like ``resample`` only group work, so their bar
        counts the windows (by cells) of what they contain (see :func:`stage_fraction`).
        """
        return stage_fraction(stage_id, lambda sid: self.stages[sid].node, self.children)

    def ancestors(self, stage_id: str) -> Iterator[str]:
        parent = self.stages[stage_id].node.parent if stage_id in self.stages else None
        while parent is not None and parent in self.stages:
            yield parent
            parent = self.stages[parent].node.parent

    @property
    def newest_log_seq(self) -> int:
        return self.logs[-1].seq if self.logs else 0


@dataclass
class Changes:
    """What changed since the last paint; drained by the app's refresh timer."""

    runs: set[str] = field(default_factory=set)
    stages: dict[str, set[str]] = field(default_factory=dict)
    stages_reset: set[str] = field(default_factory=set)
    logs: dict[str, list[LogLine]] = field(default_factory=dict)
    logs_reset: set[str] = field(default_factory=set)
    memory: set[str] = field(default_factory=set)
    maps: set[str] = field(default_factory=set)
    #: Run-state changes that arrived (the events pane appends them) ...
    transitions: list[RunStateEvent] = field(default_factory=list)
    #: ... or a snapshot replaced the whole list (the pane redraws it).
    transitions_reset: bool = False
    connection: bool = False

    def __bool__(self) -> bool:
        return bool(
            self.transitions
            or self.transitions_reset
            or self.runs
            or self.stages
            or self.stages_reset
            or self.logs
            or self.logs_reset
            or self.memory
            or self.maps
            or self.connection
        )


@dataclass
class ConnectionInfo:
    """Connection state shown in the header and the banner."""

    state: str = "connecting"  # connecting | connected | lost | offline
    socket: str = ""
    daemon_version: str | None = None
    daemon_started: float | None = None
    #: Runs the daemon executes at once (its ``status``): queued runs wait for a slot.
    concurrency: int | None = None
    retry_in: float | None = None
    attempts: int = 0
    error: str | None = None


class DashboardState:
    """Runs, stage trees, logs and memory as last reported by the daemon."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.runs: dict[str, RunView] = {}
        self.connection = ConnectionInfo()
        #: Every run's state changes, oldest first, as the daemon recorded them.
        self.transitions: deque[RunStateEvent] = deque(maxlen=TRANSITIONS_KEPT)
        self._changes = Changes()

    # -- draining -------------------------------------------------------------------

    def take_changes(self) -> Changes:
        changes, self._changes = self._changes, Changes()
        return changes

    def touch_connection(self) -> None:
        self._changes.connection = True

    # -- feeding --------------------------------------------------------------------

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace runs and stage trees with a ``subscribe`` snapshot (attach or resync).

        Logs and memory already held are kept: the connection back-fills the gap
        with ``logs.tail``/``memory.history``, and seq dedupe drops the overlap.
        """
        seen: set[str] = set()
        for summary in snapshot.runs:
            seen.add(summary.id)
            view = self._view(summary)
            view.summary = summary
            self._changes.runs.add(summary.id)
        for run_id in list(self.runs):
            if run_id not in seen:
                del self.runs[run_id]
                self._changes.runs.add(run_id)
        for run_id, stages in snapshot.stages.items():
            view = self.runs.get(run_id)
            if view is None:
                continue
            view.stages.clear()
            view.children.clear()
            for stage in stages:
                self._stage(view, stage)
            self._changes.stages_reset.add(run_id)
            self._changes.stages.pop(run_id, None)
        for run_id, last in snapshot.last_seq.items():
            view = self.runs.get(run_id)
            if view is not None:
                view.applied_seq = max(view.applied_seq, last)
        # The daemon's history replaces ours: it holds what happened while we were away.
        self.transitions = deque(snapshot.transitions, maxlen=TRANSITIONS_KEPT)
        self._changes.transitions_reset = True
        self._changes.transitions.clear()

    def apply_update(self, update: RunSummary | Event) -> None:
        """One notification, as :meth:`supervisor.client.AsyncClient.updates` yields it."""
        if isinstance(update, RunSummary):
            self.apply_run(update)
        else:
            self.apply_event(update)

    def apply_run(self, summary: RunSummary) -> None:
        """A ``run`` notification: the run's summary changed (or a new run appeared)."""
        view = self._view(summary)
        view.summary = summary
        self._changes.runs.add(summary.id)

    def apply_event(self, event: Event) -> None:
        run_id = event.run
        if run_id is None:
            return
        view = self.runs.get(run_id)
        if view is None:
            view = self._view(RunSummary(id=run_id, name=run_id, state="running"))
            self._changes.runs.add(run_id)
        seq = event.seq or 0
        if seq and seq <= view.applied_seq:
            return
        view.applied_seq = max(view.applied_seq, seq)
        if isinstance(event, LogEvent):
            line = LogLine.from_event(event)
            if line.seq > view.newest_log_seq or not line.seq:
                view.logs.append(line)
                self._changes.logs.setdefault(run_id, []).append(line)
        elif isinstance(event, StageEvent):
            self._stage(view, event)
            self._changes.stages.setdefault(run_id, set()).add(event.id)
            if view.map.apply(event):
                self._changes.maps.add(run_id)
        elif isinstance(event, CheckpointEvent):
            if view.map_held is not None:
                view.map_held.append(event)
            if view.map.apply(event):
                self._changes.maps.add(run_id)
        elif isinstance(event, MemoryEvent):
            self._memory(view, event)
        elif isinstance(event, GovernorEvent):
            view.levels.budget = event.budget
            view.levels.level = event.level
            self._changes.memory.add(run_id)
        elif isinstance(event, RunStateEvent):
            self.transitions.append(event)
            self._changes.transitions.append(event)
        # State, checkpoint, output and source events change the run's summary, which
        # the daemon sends as its own ``run`` notification: nothing to keep here.

    def merge_logs(self, run_id: str, records: Iterable[LogEvent]) -> int:
        """Merge ``logs.tail`` records (older pages or a resync gap); returns lines added.

        Records already held (same seq) are skipped; the buffer is re-sorted by seq
        and the log view is told to repaint from it.
        """
        view = self.runs.get(run_id)
        if view is None:
            return 0
        held = {line.seq for line in view.logs}
        fresh: list[LogLine] = []
        for event in records:
            if event.seq and event.seq not in held:
                fresh.append(LogLine.from_event(event))
                held.add(event.seq)
        view.logs_loaded = True
        if not fresh:
            return 0
        merged = sorted([*view.logs, *fresh], key=lambda line: line.seq)
        # A full buffer keeps the newest lines: paging older ones in past the bound
        # would push out what is live.
        view.logs = deque(merged[-LOG_BUFFER_LINES:], maxlen=LOG_BUFFER_LINES)
        view.applied_seq = max(view.applied_seq, view.newest_log_seq)
        self._changes.logs_reset.add(run_id)
        self._changes.logs.pop(run_id, None)
        return len(fresh)

    def merge_memory(self, run_id: str, samples: Iterable[MemoryEvent]) -> None:
        """Merge ``memory.history`` samples (attach or resync) with the live ones."""
        view = self.runs.get(run_id)
        if view is None:
            return
        tree = {sample.time: sample for sample in view.memory}
        worker = {sample.time: sample for sample in view.worker_memory}
        for event in samples:
            sample = MemorySample(event.time, event.rss, event.system_available, event.window_size)
            if event.worker is not None:
                self._worker_sample(view, event, sample)
            elif event.operation == TREE_SAMPLE:
                tree.setdefault(sample.time, sample)
            else:
                worker.setdefault(sample.time, sample)
                self._levels(view.levels, event)
        view.memory = deque((tree[t] for t in sorted(tree)), maxlen=MEMORY_SAMPLES)
        view.worker_memory = deque((worker[t] for t in sorted(worker)), maxlen=MEMORY_SAMPLES)
        self._changes.memory.add(run_id)

    def hold_windows(self, run_id: str, holding: bool = True) -> None:
        """Keep (or stop keeping) the run's window events while its map is being fetched."""
        view = self.runs.get(run_id)
        if view is not None:
            view.map_held = [] if holding else None

    def merge_map(self, run_id: str, run_map: RunMap) -> None:
        """Replace the run's map with the daemon's whole-history one (attach or resync).

        Window events held since the request was sent are folded in (those the
        reply already counts are skipped by seq), then the stage tree says which
        datasets are running now.
        """
        view = self.runs.get(run_id)
        if view is None:
            return
        held, view.map_held = view.map_held or [], None
        run_map.feed(held)
        run_map.feed([info.node for info in view.stages.values()])
        view.map = run_map
        self._changes.maps.add(run_id)

    # -- reading --------------------------------------------------------------------

    def ordered_stages(self, run_id: str) -> Iterator[StageProgress]:
        """Stages in arrival order, which puts every parent before its children."""
        view = self.runs.get(run_id)
        if view is not None:
            yield from view.stages.values()

    def elapsed(self, summary: RunSummary) -> float | None:
        """Running time only (the daemon's clock): pauses and waits for a retry do not count."""
        return running_seconds(summary, self.clock())

    # -- internals ------------------------------------------------------------------

    def _view(self, summary: RunSummary) -> RunView:
        view = self.runs.get(summary.id)
        if view is None:
            view = self.runs[summary.id] = RunView(summary)
        return view

    def _stage(self, view: RunView, event: StageEvent) -> None:
        info = view.stages.get(event.id)
        if info is None:
            info = view.stages[event.id] = StageProgress(event)
            if event.parent is not None:
                view.children.setdefault(event.parent, []).append(event.id)
        info.update(event)

    def _memory(self, view: RunView, event: MemoryEvent) -> None:
        sample = MemorySample(event.time, event.rss, event.system_available, event.window_size)
        if event.worker is not None:
            self._worker_sample(view, event, sample)
        elif event.operation == TREE_SAMPLE:
            view.memory.append(sample)
        else:
            self._levels(view.levels, event)
            readings = view.worker_memory
            last = readings[-1] if readings else None
            # Keep a reading per WORKER_READING_S, but never lose a window-size change.
            if (
                last is not None
                and sample.time - last.time < WORKER_READING_S
                and last.window_size == sample.window_size
            ):
                readings[-1] = MemorySample(
                    last.time, max(last.rss, sample.rss), sample.system_available, last.window_size
                )
            else:
                readings.append(sample)
        self._changes.memory.add(view.summary.id)

    def _worker_sample(self, view: RunView, event: MemoryEvent, sample: MemorySample) -> None:
        """A Dask worker's sample joins that worker's series, never the run's own."""
        series = view.workers.setdefault(str(event.worker), WorkerSeries())
        samples = series.samples
        if samples and sample.time <= samples[-1].time:
            if any(held.time == sample.time for held in samples):
                return  # a resync's history repeats what arrived live
            samples.append(sample)
            series.samples = deque(sorted(samples, key=lambda held: held.time), MEMORY_SAMPLES)
        else:
            samples.append(sample)
        self._levels(series.levels, event)

    @staticmethod
    def _levels(levels: MemoryLevels, event: MemoryEvent) -> None:
        """The budget and thresholds a sample states (a sample without them keeps the last)."""
        levels.budget = event.budget or levels.budget
        levels.warning = event.warning or levels.warning
        levels.critical = event.critical or levels.critical
