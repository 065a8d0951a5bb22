"""The daemon's wire protocol: JSON-RPC 2.0, one JSON object per line, Unix socket.

This module is the contract between the daemon, the ``geod`` CLI and the TUI:
one typed params model per method (as pueue has one request type per verb)
and one reply model per answer, the run selection shared by every control
verb, error codes and framing limits. Events inside replies and notifications
are ``pipeline.events`` types. It imports nothing from the daemon so clients
stay light; :mod:`supervisor.client` is the only code that names methods.
"""

from __future__ import annotations

import json
import math
import re
from enum import IntEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.contract import FINAL_STATES, RunState
from pipeline.events import LogEvent, MemoryEvent, RunStateEvent, StageEvent

PROTOCOL_VERSION = 1
#: Run-state changes a ``subscribe`` snapshot carries, newest of every run together:
#: the history a dashboard's events pane starts from.
SNAPSHOT_TRANSITIONS = 200
#: Lines longer than this are answered with ``LINE_TOO_LONG`` and discarded.
MAX_LINE_BYTES = 1024 * 1024

__all__ = ["FINAL_STATES", "RunState"]  # re-exported: clients need only this module
#: A label key (``geod start --label KEY=VALUE``): a word, as environment and JSON keys like.
LABEL_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$")


class RunSummary(BaseModel):
    """What ``runs.list``/``runs.get`` return per run and the ``run`` notification carries."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str
    state: RunState
    paused_hard: bool = Field(default=False, description="Paused by SIGSTOP (no ack in time).")
    progress: float = Field(default=0.0, description="0..1 over all stages.")
    stage: str | None = Field(default=None, description="Id of the deepest running stage.")
    config_path: str | None = None
    run_dir: str | None = None
    submitted: float | None = None
    started: float | None = None
    finished: float | None = None
    eta: float | None = Field(default=None, description="Seconds left, if known.")
    eta_at: float | None = Field(default=None, description="Unix time the run should end.")
    eta_range: float | None = Field(default=None, description="± seconds around ``eta``.")
    running_time: float | None = Field(
        default=None, description="Running seconds before ``running_since`` (pauses excluded)."
    )
    running_since: float | None = Field(
        default=None, description="Unix time the run last started running; None unless running."
    )
    rss: int | None = None
    peak_rss: int | None = None
    retries: int = 0
    retry_at: float | None = Field(default=None, description="Unix time of the next retry.")
    wait_reason: str | None = Field(
        default=None,
        description="Why a queued run does not start, in the daemon's words "
        "(e.g. waiting for another run's outputs, or for memory); None: no reason given.",
    )
    pid: int | None = Field(default=None, description="Worker pid (its process group id).")
    exit_code: int | None = None
    error: str | None = None
    last_seq: int = 0
    outputs: list[dict[str, Any]] = Field(default_factory=list)
    owner: dict[str, Any] | None = Field(
        default=None, description="uid, gid, groups the worker runs as (root daemon only)."
    )
    priority: int = Field(default=0, description="Higher starts first; ties in submission order.")
    after: list[str] = Field(
        default_factory=list, description="Runs that must end done before this one starts."
    )
    start_at: float | None = Field(
        default=None, description="Unix time before which the run does not start (scheduled)."
    )
    labels: dict[str, str] = Field(default_factory=dict, description="User's KEY=VALUE tags.")
    wait_reason: str | None = Field(
        default=None,
        description="Why a queued run does not start or the daemon paused it "
        "('waiting for memory: needs ~3.1 GiB, 1.4 GiB free of the host budget').",
    )
    predicted_peak: int | None = Field(
        default=None, description="Bytes the host memory broker reserves for the run."
    )
    prediction: str | None = Field(
        default=None, description="Where predicted_peak comes from (telemetry run or budget)."
    )
    config_fingerprint: str | None = Field(
        default=None, description="Hash of the frozen config: equal for reruns of one config."
    )
    data_fingerprint: str | None = Field(
        default=None, description="Hash of the config's datasets and grid (the same inputs)."
    )
    paused_by: str | None = Field(
        default=None,
        description="'memory' or 'disk' when the daemon paused the run and resumes it itself.",
    )
    oom: bool = Field(default=False, description="The last worker was killed by the OOM killer.")
    start_window: int | None = Field(
        default=None, description="Window size the next worker starts with (halved after OOM)."
    )
    disk_used: int | None = Field(
        default=None, description="Bytes under the run directory (layer store, logs, history)."
    )


class ErrorCode(IntEnum):
    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    LINE_TOO_LONG = -32001
    UNKNOWN_RUN = -32002
    BAD_STATE = -32003
    BAD_CONFIG = -32004
    VERSION_MISMATCH = -32005
    NOT_SUBSCRIBED = -32006
    PERMISSION_DENIED = -32007


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Selection(_Params):
    """``RUN|--all``: every control verb takes either one run id or all runs."""

    run: str | None = None
    all: bool = False

    @model_validator(mode="after")
    def _one_of(self) -> Selection:
        if (self.run is None) == self.all:
            return self
        raise ValueError("give either a run id or all=true, not both or neither")


class HelloParams(_Params):
    protocol: int = PROTOCOL_VERSION
    client: str = "geod"


class EmptyParams(_Params):
    pass


class RunParams(_Params):
    run: str


class SubmitParams(_Params):
    config_path: str = Field(description="Absolute path of a config.yml the daemon can read.")
    name: str | None = None
    priority: int = 0
    after: list[str] = Field(default_factory=list, description="Run ids to wait for (done).")
    start_at: float | None = Field(default=None, description="Unix time; None = now.")
    labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _label_keys(self) -> SubmitParams:
        for key in self.labels:
            if not LABEL_KEY.fullmatch(key):
                raise ValueError(
                    f"label {key!r}: keys are a letter or '_' then letters, digits, '_.-'"
                )
        return self


class PriorityParams(_Params):
    run: str
    priority: int


class ParallelParams(_Params):
    concurrency: int = Field(ge=1, description="Runs executing at once from now on.")


class KillParams(Selection):
    force: bool = False


class CleanParams(_Params):
    """``geod clean``: the runs named, or every finished one matching the filters."""

    runs: list[str] = Field(default_factory=list)
    done: bool = Field(default=False, description="Every run in state done.")
    older_than: float | None = Field(
        default=None, gt=0, description="Every finished run that ended this many seconds ago."
    )
    dry_run: bool = False

    @model_validator(mode="after")
    def _something(self) -> CleanParams:
        if not self.runs and not self.done and self.older_than is None:
            raise ValueError("give run ids, done=true or older_than")
        return self


class LogsTailParams(_Params):
    run: str
    limit: int = Field(default=200, ge=1, le=100_000)
    before_seq: int | None = Field(default=None, description="Page backwards from here.")
    level: str | None = None


class MemoryHistoryParams(_Params):
    run: str
    since: float | None = Field(default=None, description="Unix time; None = whole history.")


class SourcesParams(_Params):
    rule: str | None = Field(default=None, description="One watch rule's files; None = all.")


class SubscribeParams(_Params):
    runs: list[str] | None = Field(default=None, description="None = every run, new ones too.")
    events: bool = True


# -- replies ---------------------------------------------------------------------------


class HelloReply(BaseModel):
    """``hello``: who answers, so a client can refuse another protocol version."""

    model_config = ConfigDict(extra="allow")

    protocol: int | None = None
    server: str = "geod"
    version: str = "unknown"
    pid: int = 0
    started: float = 0.0


class DaemonStatus(BaseModel):
    """``status``: the daemon's facts (a newer daemon's extra fields are kept and shown)."""

    model_config = ConfigDict(extra="allow")

    version: str
    pid: int
    started: float
    uptime: float
    state_dir: str
    socket: str
    concurrency: int
    settings_concurrency: int | None = Field(
        default=None, description="The settings file's concurrency (``geod parallel`` overrides)."
    )
    counts: dict[str, int] = Field(default_factory=dict, description="Runs per state.")
    runs: int = 0
    stopping: bool = False
    host_memory: dict[str, Any] | None = Field(
        default=None, description="Host budget, reserved bytes and pressure (memory broker)."
    )
    settings_file: str | None = None
    settings_loaded: float | None = Field(default=None, description="Unix time of the last load.")
    settings_error: str | None = Field(default=None, description="Why the last reload failed.")
    watching: list[str] = Field(default_factory=list, description="One line per watch rule.")


class CleanedRun(BaseModel):
    """One run ``runs.clean`` removed (or, in a dry run, would remove) the work files of."""

    run: str
    freed: int = Field(description="Bytes freed (or that would be).")
    paths: list[str] = Field(default_factory=list)


class WatchedSource(BaseModel):
    """``sources.list``: one file of a watched folder, as the daemon also keeps it on disk."""

    rule: str
    path: str
    dataset: str = Field(description="The dataset name a glob: entry gives this file.")
    status: Literal["ok", "error", "gone"] = Field(
        description="ok; error: not a usable raster after its attempts; gone: deleted."
    )
    change: Literal["new", "replaced", "gone"]
    size: int | None = None
    mtime_ns: int | None = None
    taken: float = Field(description="Unix time the file was taken (or found gone).")
    crs: str | None = None
    width: int | None = None
    height: int | None = None
    dtype: str | None = None
    error: str | None = None
    run: str | None = Field(default=None, description="The run submitted with it (submit).")


class QueueSettings(BaseModel):
    """``queue.parallel``: the concurrency in force and the settings file's (its default)."""

    concurrency: int
    settings_concurrency: int


class MemoryHistory(BaseModel):
    """``memory.history``: a run's memory events (daemon samples, worker readings and,
    on a Dask executor, each Dask worker's samples with ``worker`` set), oldest first."""

    run: str
    samples: list[MemoryEvent] = Field(default_factory=list)


class DatasetWindows(BaseModel):
    """One dataset of ``runs.map``: its grid and every window written so far."""

    name: str
    grid_height: int
    grid_width: int
    windows: list[tuple[int, int, int, int, int]] = Field(
        default_factory=list, description="(row_off, col_off, height, width, times written)."
    )
    newest: tuple[int, int, int, int] | None = None
    running: bool = False


class RunMapReply(BaseModel):
    """``runs.map``: where a run is, from its whole history (what ``geod map`` draws).

    ``last_seq`` is the newest window event included: a subscriber folds in only
    window events after it, so nothing is counted twice.
    """

    run: str
    last_seq: int = 0
    latest: str | None = None
    datasets: list[DatasetWindows] = Field(default_factory=list)


class Snapshot(BaseModel):
    """``subscribe``: runs and stage trees at the instant the subscription began."""

    runs: list[RunSummary] = Field(default_factory=list)
    stages: dict[str, list[StageEvent]] = Field(default_factory=dict)
    last_seq: dict[str, int] = Field(default_factory=dict)
    transitions: list[RunStateEvent] = Field(
        default_factory=list, description="Newest run-state changes of these runs, oldest first."
    )


#: What ``logs.tail`` returns: the run's log events, oldest first.
LogPage = list[LogEvent]


#: method name → params model. The daemon dispatches on this table; unknown
#: names are METHOD_NOT_FOUND.
METHODS: dict[str, type[BaseModel]] = {
    "hello": HelloParams,
    "status": EmptyParams,
    "runs.list": EmptyParams,
    "runs.get": RunParams,
    "runs.submit": SubmitParams,
    "runs.pause": Selection,
    "runs.resume": Selection,
    "runs.kill": KillParams,
    "runs.retry": RunParams,
    "runs.priority": PriorityParams,
    "queue.parallel": ParallelParams,
    "runs.clean": CleanParams,
    "logs.tail": LogsTailParams,
    "memory.history": MemoryHistoryParams,
    "runs.map": RunParams,
    "sources.list": SourcesParams,
    "subscribe": SubscribeParams,
    "unsubscribe": EmptyParams,
    "daemon.stop": EmptyParams,
}

#: Notification method carrying one run event (params: the event dict with run+seq).
NOTIFY_EVENT = "event"
#: Notification for a run's summary change (state, progress, rss).
NOTIFY_RUN = "run"


class ProtocolError(Exception):
    """A JSON-RPC error, raised by clients and turned into a response by the daemon."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = int(code)
        self.message = message
        self.data = data


def _refuse_constant(name: str) -> Any:
    """``NaN``/``Infinity`` are not JSON: refusing them keeps them out of every reply."""
    raise ValueError(f"{name} is not valid JSON")


def decode_request(line: bytes) -> Any:
    """Parse one request line strictly; every failure is a ``PARSE_ERROR``.

    Strict means no ``NaN``/``Infinity`` literals, and nesting deeper than the
    interpreter can parse is an error answer rather than a RecursionError that
    would drop the connection.
    """
    try:
        return json.loads(line, parse_constant=_refuse_constant)
    except RecursionError:
        raise ProtocolError(ErrorCode.PARSE_ERROR, "invalid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.PARSE_ERROR, f"invalid JSON: {exc}") from None


def valid_id(request_id: Any) -> bool:
    """A JSON-RPC id: a string, a finite number or null (never a boolean or a container)."""
    if request_id is None or isinstance(request_id, str):
        return True
    if isinstance(request_id, bool) or not isinstance(request_id, int | float):
        return False
    return math.isfinite(request_id)


def request(method: str, params: dict[str, Any] | None, request_id: int | str | None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params or {}}
    if request_id is not None:
        message["id"] = request_id
    return encode_line(message)


def result(request_id: int | str | None, value: Any) -> bytes:
    return encode_line({"jsonrpc": "2.0", "id": request_id, "result": value})


def error(request_id: int | str | None, code: int, message: str, data: Any = None) -> bytes:
    body: dict[str, Any] = {"code": int(code), "message": message}
    if data is not None:
        body["data"] = data
    return encode_line({"jsonrpc": "2.0", "id": request_id, "error": body})


def notification(method: str, params: dict[str, Any]) -> bytes:
    return encode_line({"jsonrpc": "2.0", "method": method, "params": params})


def encode_line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"
