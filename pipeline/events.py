"""The one event schema shared by the worker, the daemon, telemetry and the TUI.

A worker writes one JSON object per line to an inherited file descriptor. The
daemon decodes each line with :func:`decode`, stamps it with a per-run sequence
number and fans it out; nothing else defines what an event looks like, so a new
field is added here once and every consumer sees it typed.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from pipeline.contract import EVENTS_FD_ENV, LogLevel, RunState, WorkerState

StageKind = Literal["run", "stage", "dataset", "window_group"]
StageStatus = Literal["pending", "running", "done", "failed", "skipped", "paused"]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    time: float = Field(default_factory=time.time, description="Unix time at the worker.")
    seq: int | None = Field(default=None, description="Per-run sequence, set by the daemon.")
    run: str | None = Field(default=None, description="Run id, set by the daemon.")


class StageEvent(_Event):
    """A node of the stage tree (run → stage → dataset → window group) and its progress."""

    type: Literal["stage"] = "stage"
    id: str = Field(description="Path-like stable id, e.g. 'resample/bio1'.")
    parent: str | None = None
    kind: StageKind
    name: str
    status: StageStatus
    done: int = 0
    total: int = 0
    unit: str = "windows"
    error: str | None = None
    cells_done: int | None = Field(
        default=None,
        description="Grid cells of the done windows: edge windows are smaller, so progress "
        "weighs each window by its cells (None in histories written before it existed).",
    )
    cells_total: int | None = Field(default=None, description="Grid cells of all the windows.")


class LogEvent(_Event):
    type: Literal["log"] = "log"
    level: LogLevel
    logger: str
    message: str
    stage: str | None = None
    dataset: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class MemoryEvent(_Event):
    """The worker's own reading between windows (the daemon samples the tree too)."""

    type: Literal["memory"] = "memory"
    rss: int
    uss: int | None = None
    system_available: int | None = None
    window_size: int | None = None
    budget: int | None = None
    warning: float | None = Field(default=None, description="Warning level, fraction of budget.")
    critical: float | None = Field(default=None, description="Critical level, fraction.")
    stage: str | None = None
    operation: str | None = None
    worker: str | None = Field(
        default=None,
        description="A Dask worker's address: a sample of that worker, not of the run's "
        "process tree (one series per worker).",
    )


class GovernorEvent(_Event):
    """The memory governor changed the window/chunk size."""

    type: Literal["governor"] = "governor"
    old_size: int
    new_size: int
    rss: int
    budget: int
    level: Literal["normal", "warning", "critical"]
    reason: str


class CheckpointEvent(_Event):
    """A unit of work made durable; a resample window also says where it lies in the grid.

    The window fields are optional (events written before they existed still
    decode): with them a dashboard can draw the run as a map of its windows.
    """

    type: Literal["checkpoint"] = "checkpoint"
    stage: str
    dataset: str | None = None
    done: int
    total: int
    detail: dict[str, Any] = Field(default_factory=dict)
    row_off: int | None = Field(default=None, description="Window's first grid row.")
    col_off: int | None = Field(default=None, description="Window's first grid column.")
    height: int | None = Field(default=None, description="Window rows.")
    width: int | None = Field(default=None, description="Window columns.")
    grid_height: int | None = Field(default=None, description="Rows of the whole grid.")
    grid_width: int | None = Field(default=None, description="Columns of the whole grid.")


class StateEvent(_Event):
    """Worker lifecycle: the acknowledgement of pause/resume/stop lives here."""

    type: Literal["state"] = "state"
    state: WorkerState
    reason: str | None = None


class RunStateEvent(_Event):
    """A run changed state, as the daemon saw it (never sent by a worker).

    The daemon writes one into the run's history on every change, so the
    dashboards' events pane shows the same lines, including those from before
    they attached: ``r0007 failed at export, retry 1/3``, ``r0003 done in 4m 12s``.
    """

    type: Literal["run_state"] = "run_state"
    state: RunState
    previous: RunState | None = None
    stage: str | None = Field(default=None, description="Deepest running stage at the change.")
    error: str | None = None
    retries: int = 0
    max_retries: int | None = Field(default=None, description="The restart policy's bound.")
    running_time: float | None = Field(default=None, description="Running seconds so far.")


class OutputEvent(_Event):
    """A finished artefact (table, map, report) that `geod status RUN` lists."""

    type: Literal["output"] = "output"
    kind: str
    path: str
    stage: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class SourceEvent(_Event):
    """Catalog result for one input raster (telemetry's raster_sources).

    The daemon's watched folders (supervisor.watcher) record arrivals the same
    way, in a stream of their own (``run`` = ``watch:RULE``), with what changed
    and the file's size and mtime; a deleted file is recorded as ``gone``.
    """

    type: Literal["source"] = "source"
    dataset: str
    path: str
    status: Literal["ok", "error", "gone"]
    crs: str | None = None
    width: int | None = None
    height: int | None = None
    dtype: str | None = None
    nodata: float | None = None
    bounds: tuple[float, float, float, float] | None = Field(
        default=None, description="west, south, east, north in the source's CRS."
    )
    resolution: tuple[float, float] | None = None
    passthrough: bool | None = Field(
        default=None, description="On the grid: copied by window, not resampled."
    )
    error: str | None = None
    change: Literal["new", "replaced", "gone"] | None = Field(
        default=None, description="Watched folders only: what happened to the file."
    )
    size: int | None = Field(default=None, description="Watched folders only: bytes.")
    mtime: float | None = Field(default=None, description="Watched folders only: Unix time.")


Event = Annotated[
    StageEvent
    | LogEvent
    | MemoryEvent
    | GovernorEvent
    | CheckpointEvent
    | StateEvent
    | RunStateEvent
    | OutputEvent
    | SourceEvent,
    Field(discriminator="type"),
]

_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def decode(line: str | bytes) -> Event:
    """Parse one NDJSON line into its typed event (raises pydantic.ValidationError)."""
    return _ADAPTER.validate_json(line)


def decode_dict(data: dict[str, Any]) -> Event:
    return _ADAPTER.validate_python(data)


def encode(event: Event) -> str:
    """One line of JSON, no trailing newline; ``None`` fields are dropped."""
    return event.model_dump_json(exclude_none=True)


class EventSink:
    """Where pipeline code sends events: a file descriptor, a callback, or both.

    Thread-safe, because resampling threads and the logging handler emit
    concurrently. Writes to the descriptor are whole lines so a reader never sees
    half an event; a vanished reader (daemon restarted) must not kill the worker,
    so a broken pipe turns the descriptor off and the run carries on.
    """

    def __init__(
        self, fd: int | None = None, callback: Callable[[Event], None] | None = None
    ) -> None:
        self._fd = fd
        self._callback = callback
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, callback: Callable[[Event], None] | None = None) -> EventSink:
        raw = os.environ.get(EVENTS_FD_ENV)
        return cls(int(raw) if raw else None, callback)

    def emit(self, event: Event) -> None:
        if self._callback is not None:
            self._callback(event)
        if self._fd is None:
            return
        data = (encode(event) + "\n").encode()
        with self._lock:
            try:
                view = memoryview(data)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
            except (BrokenPipeError, OSError):
                self._fd = None

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None


def event_to_json_dict(event: Event) -> dict[str, Any]:
    return json.loads(encode(event))
