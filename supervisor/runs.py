"""The run registry: one directory per run, its state file, its event history.

Layout under ``state_dir/runs/<id>/``::

    config.yml       the config frozen at submission (absolute paths)
    state.json       the run's summary, atomically replaced on every state change
    events.ndjson    every event with its per-run ``seq``, appended as it happens
    worker.log[.N]   the worker's stdout/stderr, rotated
    work/            the worker's layer store and checkpoints

``events.ndjson`` is the history the daemon rebuilds a run from after a restart
(stage tree, progress, memory ring, last ``seq``), so a client attaching to a
new daemon sees the same snapshot and the sequence continues without reuse.
Events stay ``pipeline.events`` types from the worker's pipe to the run's view:
they are decoded once (a line from the worker or the history file) and encoded
once (a history line, a notification, a reply).
The state file is small and written on state changes only; the event file is
the source of truth for anything that changes per event.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from pipeline.config import PipelineConfig, RestartConfig, TelemetryConfig, load_config
from pipeline.contract import FINAL_STATES, RunState, level_rank
from pipeline.durable import cut_torn_tail, write_atomic
from pipeline.events import (
    Event,
    LogEvent,
    MemoryEvent,
    OutputEvent,
    RunStateEvent,
    StageEvent,
    StateEvent,
    decode,
)
from supervisor.progress import RateEstimator, run_fraction, running_seconds
from supervisor.protocol import SNAPSHOT_TRANSITIONS, RunSummary

log = logging.getLogger("geod.daemon.runs")

CONFIG_NAME = "config.yml"
STATE_NAME = "state.json"
EVENTS_NAME = "events.ndjson"
LOG_NAME = "worker.log"
WORK_NAME = "work"
#: Mode of the state directory and runs/ when workers run as their users (a root daemon
#: for a socket group): others may pass through to their own run directory, not list.
TRAVERSE_ONLY_DIR = 0o711
RUN_ID_PATTERN = re.compile(r"^r(\d{4,})$")


def format_run_id(number: int) -> str:
    """``r0001``: short to type, sorts in submission order up to 9999 runs."""
    return f"r{number:04d}"


@dataclass
class Run:
    """One run: its persisted summary plus what the daemon rebuilt or tracks live."""

    summary: RunSummary
    run_dir: Path
    memory_history: int
    event_history: int
    stages: dict[str, StageEvent] = field(default_factory=dict)
    memory: deque[MemoryEvent] = field(init=False)
    #: The Dask workers' samples (``MemoryEvent.worker``), kept apart so that however
    #: many workers there are, they never push the run's own samples out.
    worker_memory: deque[MemoryEvent] = field(init=False)
    recent_logs: deque[LogEvent] = field(init=False)
    #: Last lifecycle state the current worker reported (StateEvent.state) and its reason.
    worker_state: str | None = None
    worker_reason: str | None = None
    #: The run's newest state changes (RunStateEvent), rebuilt from the history too.
    transitions: deque[RunStateEvent] = field(
        default_factory=lambda: deque(maxlen=SNAPSHOT_TRANSITIONS)
    )
    _rate: RateEstimator = field(default_factory=RateEstimator)
    #: Worker time of the newest event: where a running clock stops if the daemon died.
    _last_event: float = 0.0
    _events_file: IO[bytes] | None = None

    def __post_init__(self) -> None:
        self.memory = deque(maxlen=self.memory_history)
        self.worker_memory = deque(maxlen=self.memory_history)
        self.recent_logs = deque(maxlen=self.event_history)

    @property
    def id(self) -> str:
        return self.summary.id

    @property
    def config_file(self) -> Path:
        return self.run_dir / CONFIG_NAME

    @property
    def work_dir(self) -> Path:
        return self.run_dir / WORK_NAME

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_NAME

    @functools.cached_property
    def config(self) -> PipelineConfig | None:
        """The frozen config, or None if it no longer validates (then defaults apply)."""
        try:
            return load_config(self.config_file, check_files=False)
        except ValueError as exc:
            log.warning("run %s: frozen config unreadable: %s", self.id, exc)
            return None

    def restart_policy(self) -> RestartConfig:
        config = self.config
        return config.restart if config is not None else RestartConfig()

    def telemetry_config(self) -> TelemetryConfig:
        config = self.config
        return config.telemetry if config is not None else TelemetryConfig()

    # -- events -------------------------------------------------------------------

    def next_seq(self) -> int:
        self.summary.last_seq += 1
        return self.summary.last_seq

    def append(self, line: str) -> None:
        """Append one encoded stamped event to the history file (flushed, not fsynced: a log)."""
        if self._events_file is None:
            try:
                self._events_file = open(self.run_dir / EVENTS_NAME, "ab")  # noqa: SIM115
            except FileNotFoundError:
                return  # the run directory vanished: the scheduler fails the run on its next save
        self._events_file.write(line.encode() + b"\n")
        self._events_file.flush()

    def apply(self, event: Event) -> None:
        """Fold one event into the in-memory view (also used to replay the history file)."""
        self.summary.last_seq = max(self.summary.last_seq, event.seq or 0)
        self._last_event = max(self._last_event, event.time)
        if isinstance(event, StageEvent):
            self.stages[event.id] = event
            self._update_progress(event.time)
        elif isinstance(event, LogEvent):
            self.recent_logs.append(event)
        elif isinstance(event, MemoryEvent) and event.worker is not None:
            # A Dask worker's sample is that worker's, not the run's process tree: the
            # run's RSS and peak do not count it; the dashboard can show it on its own.
            self.worker_memory.append(event)
        elif isinstance(event, MemoryEvent):
            self.memory.append(event)
            if event.operation == "sample":
                self.summary.rss = event.rss
            self.summary.peak_rss = max(self.summary.peak_rss or 0, event.rss)
        elif isinstance(event, OutputEvent):
            entry = event.model_dump(mode="json", include={"kind", "path", "stage", "detail"})
            if entry not in self.summary.outputs:
                self.summary.outputs.append(entry)
        elif isinstance(event, StateEvent):
            self.worker_state = event.state
            self.worker_reason = event.reason
        elif isinstance(event, RunStateEvent):
            self.transitions.append(event)

    @property
    def announced_state(self) -> RunState | None:
        """The state the history last recorded for the run (None before the first)."""
        return self.transitions[-1].state if self.transitions else None

    def _update_progress(self, now: float) -> None:
        """Progress from the windows done (never lower than before), then the time left."""
        running = [e for e in self.stages.values() if e.status == "running" and e.kind != "run"]
        # The deepest running node is the one a user wants to see ("resample/bio1"); between
        # two stages (only the root runs) the last one stays, never the bare root "run".
        root = self.stages.get("run")
        if running:
            self.summary.stage = max(running, key=lambda e: e.id.count("/")).id
        elif root is None or root.status != "running":
            self.summary.stage = None
        fraction = run_fraction(self.stages)
        if fraction is None:
            return
        # A resumed or retried worker re-announces its stages from the start: what was
        # done stays done, so the figure a user saw is never taken back.
        self.summary.progress = max(self.summary.progress, fraction)
        if self.summary.state != "running":
            return
        elapsed = running_seconds(self.summary, now)
        if elapsed is not None:
            self._rate.add(elapsed, self.summary.progress)
        self._estimate(now)

    def _estimate(self, now: float) -> None:
        """ETA, its clock time and range while running; all None otherwise."""
        estimate = None
        if self.summary.state == "running":
            estimate = self._rate.estimate(self.summary.progress)
        if estimate is None:
            self.summary.eta = self.summary.eta_at = self.summary.eta_range = None
            return
        left, spread = estimate
        self.summary.eta, self.summary.eta_range, self.summary.eta_at = left, spread, now + left

    def note_state(self, now: float) -> None:
        """Keep the running clock in step with the summary's state (called on every save).

        Only running time counts: leaving ``running`` banks the seconds since it
        began (up to the last event, so a daemon that was down does not count its
        absence), and entering it starts the clock again.
        """
        summary = self.summary
        if summary.state == "running":
            if summary.running_since is None:
                summary.running_since = now
            return
        if summary.running_since is not None:
            end = min(now, max(self._last_event, summary.running_since))
            summary.running_time = (summary.running_time or 0.0) + (end - summary.running_since)
            summary.running_since = None
        if summary.state in FINAL_STATES:
            # A finished run has no current memory and nothing left to wait for.
            summary.rss = None
        self._estimate(now)

    def logs(self, limit: int, before_seq: int | None, level: str | None) -> list[LogEvent]:
        """The newest ``limit`` log events older than ``before_seq``, oldest first."""
        floor = level_rank(level) if level else 0

        def wanted(event: Event) -> bool:
            if not isinstance(event, LogEvent):
                return False
            if before_seq is not None and (event.seq or 0) >= before_seq:
                return False
            return level_rank(event.level) >= floor

        recent: list[LogEvent] = [e for e in self.recent_logs if wanted(e)]
        history_complete = len(self.recent_logs) < (self.recent_logs.maxlen or 0)
        if len(recent) < limit and not history_complete:
            recent = [e for e in self.read_history() if isinstance(e, LogEvent) and wanted(e)]
        return recent[-limit:]

    def read_history(self, types: tuple[str, ...] = ()) -> list[Event]:
        """Every stamped event of the history file (only ``types``, if given), decoded;
        torn or foreign lines skipped."""
        return read_events(self.run_dir / EVENTS_NAME, types)

    def close(self) -> None:
        if self._events_file is not None:
            self._events_file.close()
            self._events_file = None


def read_events(path: Path, types: tuple[str, ...] = ()) -> list[Event]:
    """The events of a history file (``events.ndjson``); torn or foreign lines skipped.

    With ``types``, only events of those types: other lines are skipped by their
    text before any decoding, which is what makes one type of a long history
    (a six-hour run's windows among its logs and memory samples) cheap to read.
    """
    events: list[Event] = []
    if not path.exists():
        return events
    # Lines are written by ``encode`` (compact JSON), so a type reads exactly like this.
    marks = [f'"type":"{kind}"'.encode() for kind in types]
    with open(path, "rb") as handle:
        for line in handle:
            if marks and not any(mark in line for mark in marks):
                continue
            with contextlib.suppress(ValueError):  # pydantic's ValidationError included
                events.append(decode(line))
    return events


def _repair_history(path: Path) -> None:
    """Cut a torn last line (daemon killed mid-write) so the next append starts clean."""
    if cut_torn_tail(path):
        log.warning("%s: cut a torn last line left by an interrupted write", path)


class Registry:
    """All runs of a state directory, in submission order."""

    def __init__(self, state_dir: Path, memory_history: int, event_history: int) -> None:
        self.root = state_dir / "runs"
        self.memory_history = memory_history
        self.event_history = event_history
        self.runs: dict[str, Run] = {}

    def load(self) -> list[Run]:
        """Rebuild every run from its state file and history (at daemon start)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in sorted(self.root.iterdir(), key=lambda p: p.name):
            match = RUN_ID_PATTERN.match(path.name)
            if not match or not path.is_dir():
                continue
            run = self._load_one(path)
            self.runs[run.id] = run
        return list(self.runs.values())

    def _load_one(self, path: Path) -> Run:
        state = path / STATE_NAME
        try:
            data = json.loads(state.read_text())
            summary = RunSummary.model_validate(data["summary"])
        except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
            # Never trust a bad file: the history and the frozen config rebuild the run,
            # and it is parked as interrupted for the restart policy to decide.
            reason = f"state file unreadable ({type(exc).__name__}); rebuilt from history"
            log.warning("run %s: %s", path.name, reason)
            summary = RunSummary(
                id=path.name, name=path.name, state="interrupted", error=reason, run_dir=str(path)
            )
        run = Run(summary, path, self.memory_history, self.event_history)
        if summary.error and summary.error.startswith("state file unreadable") and run.config:
            summary.name = run.config.name
        _repair_history(path / EVENTS_NAME)
        for event in run.read_history():
            run.apply(event)
        return run

    def next_id(self) -> str:
        numbers = [int(m.group(1)) for n in self.runs if (m := RUN_ID_PATTERN.match(n))]
        return format_run_id(max(numbers, default=0) + 1)

    def create(self, config_text: str, name: str, config_path: str) -> Run:
        """A new queued run directory with its frozen config and first state file."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        while True:
            run_id = self.next_id()
            run_dir = self.root / run_id
            try:
                run_dir.mkdir(mode=0o700)
                break
            except FileExistsError:  # a directory left without a state file; skip its id
                self.runs[run_id] = self._load_one(run_dir)
        write_atomic(run_dir / CONFIG_NAME, config_text.encode())
        summary = RunSummary(
            id=run_id,
            name=name,
            state="queued",
            config_path=config_path,
            run_dir=str(run_dir),
            submitted=time.time(),
        )
        run = Run(summary, run_dir, self.memory_history, self.event_history)
        self.runs[run_id] = run
        self.save(run)
        return run

    def save(self, run: Run) -> None:
        run.note_state(time.time())
        payload = {"summary": run.summary.model_dump(mode="json")}
        write_atomic(run.run_dir / STATE_NAME, json.dumps(payload, indent=1).encode())

    def get(self, run_id: str) -> Run | None:
        return self.runs.get(run_id)

    def close(self) -> None:
        for run in self.runs.values():
            run.close()
