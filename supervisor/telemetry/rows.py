"""Turn events and run summaries into table rows, and rows into COPY input.

One event becomes one ``events`` row plus, by type, a row of ``progress`` and
``stages`` (stage events), ``log_records``, ``memory_samples``, ``checkpoints``
or ``raster_sources``. Rows are staged as plain values (times as Unix seconds,
JSON as text) in temporary tables with :data:`TABLES`' staging types and moved
into ``geod.*`` by ``INSERT … SELECT`` (with each table's ON CONFLICT clause when
a batch repeats rows), so the Python side does no timestamp formatting and a
replayed row is a no-op.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.events import (
    CheckpointEvent,
    Event,
    LogEvent,
    MemoryEvent,
    SourceEvent,
    StageEvent,
    encode,
)
from supervisor.protocol import RunSummary
from supervisor.telemetry.identity import run_key

#: Stage statuses after which a stage has a finish time.
FINISHED_STATUSES = frozenset({"done", "failed", "skipped"})


@dataclass(frozen=True)
class Column:
    name: str
    staging_type: str
    #: SQL turning the staged value into the target column's value.
    select: str = ""

    @property
    def expression(self) -> str:
        return self.select or self.name


def _time(name: str) -> Column:
    return Column(name, "double precision", f"to_timestamp({name})")


def _json(name: str) -> Column:
    return Column(name, "text", f"{name}::jsonb")


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Column, ...]
    #: The ON CONFLICT clause that makes a replay idempotent.
    conflict: str

    @property
    def staging(self) -> str:
        return f"geod_stage_{self.name}"

    def staging_ddl(self, name: str | None = None) -> str:
        cols = ", ".join(f'"{c.name}" {c.staging_type}' for c in self.columns)
        return f"CREATE TEMP TABLE {name or self.staging} ({cols}) ON COMMIT DELETE ROWS"

    @property
    def append_only(self) -> bool:
        """Rows are only ever inserted (a repeat is a replay, never an update)."""
        return self.conflict == _APPEND_ONLY

    def insert_sql(self, idempotent: bool = True) -> str:
        """Move the staged rows into the table.

        ``idempotent=False`` leaves out the ON CONFLICT clause: about a third
        cheaper, for the usual batch that repeats nothing; it fails on a repeat.
        """
        names = ", ".join(f'"{c.name}"' for c in self.columns)
        exprs = ", ".join(
            c.expression if not c.select else f'{c.expression} AS "{c.name}"' for c in self.columns
        )
        conflict = f" {self.conflict}" if idempotent else ""
        return (
            f"INSERT INTO geod.{self.name} AS t ({names}) "
            f"SELECT {exprs} FROM {self.staging}{conflict}"
        )


def _newer_wins(columns: Iterable[str]) -> str:
    return ", ".join(
        f'"{c}" = CASE WHEN EXCLUDED.seq > t.seq THEN EXCLUDED."{c}" ELSE t."{c}" END'
        for c in columns
    )


_STAGE_LATEST = ("parent", "kind", "name", "status", "done", "total", "unit", "error", "finished")
_RUN_COLUMNS = (
    "name",
    "state",
    "config_path",
    "config",
    "run_dir",
    "submitted",
    "started",
    "finished",
    "exit_code",
    "error",
    "retries",
    "progress",
    "peak_rss",
    "last_seq",
    "host",
    "user",
    "summary",
    "rev",
    "updated",
)
_APPEND_ONLY = "ON CONFLICT (run_key, seq) DO NOTHING"

TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec(
            "runs",
            (
                Column("id", "text"),
                Column("name", "text"),
                Column("state", "text"),
                Column("config_path", "text"),
                _json("config"),
                Column("run_dir", "text"),
                _time("submitted"),
                _time("started"),
                _time("finished"),
                Column("exit_code", "integer"),
                Column("error", "text"),
                Column("retries", "integer"),
                Column("progress", "double precision"),
                Column("peak_rss", "bigint"),
                Column("last_seq", "bigint"),
                Column("host", "text"),
                Column("user", "text"),
                _json("summary"),
                Column("rev", "bigint"),
                _time("updated"),
                Column("run_key", "uuid"),
                Column("instance", "uuid"),
            ),
            "ON CONFLICT (run_key) DO UPDATE SET "
            + ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in _RUN_COLUMNS)
            + " WHERE t.rev < EXCLUDED.rev",
        ),
        TableSpec(
            "stages",
            (
                Column("run", "text"),
                Column("id", "text"),
                Column("parent", "text"),
                Column("kind", "text"),
                Column("name", "text"),
                Column("status", "text"),
                Column("done", "bigint"),
                Column("total", "bigint"),
                Column("unit", "text"),
                Column("error", "text"),
                _time("started"),
                _time("finished"),
                _time("updated"),
                Column("seq", "bigint"),
                Column("run_key", "uuid"),
            ),
            "ON CONFLICT (run_key, id) DO UPDATE SET "
            + _newer_wins((*_STAGE_LATEST, "updated"))
            + ', "started" = LEAST(t.started, EXCLUDED.started)'
            + ', "seq" = GREATEST(t.seq, EXCLUDED.seq)',
        ),
        TableSpec(
            "progress",
            (
                Column("run", "text"),
                Column("seq", "bigint"),
                _time("time"),
                Column("stage", "text"),
                Column("status", "text"),
                Column("done", "bigint"),
                Column("total", "bigint"),
                Column("run_key", "uuid"),
            ),
            _APPEND_ONLY,
        ),
        TableSpec(
            "memory_samples",
            (
                Column("run", "text"),
                Column("seq", "bigint"),
                _time("time"),
                Column("stage", "text"),
                Column("operation", "text"),
                Column("rss", "bigint"),
                Column("uss", "bigint"),
                Column("system_available", "bigint"),
                Column("window_size", "integer"),
                Column("budget", "bigint"),
                Column("warning", "double precision"),
                Column("critical", "double precision"),
                Column("worker", "text"),
                Column("run_key", "uuid"),
            ),
            _APPEND_ONLY,
        ),
        TableSpec(
            "log_records",
            (
                Column("run", "text"),
                Column("seq", "bigint"),
                _time("time"),
                Column("level", "text"),
                Column("logger", "text"),
                Column("stage", "text"),
                Column("dataset", "text"),
                Column("message", "text"),
                _json("extra"),
                Column("run_key", "uuid"),
            ),
            _APPEND_ONLY,
        ),
        TableSpec(
            "events",
            (
                Column("run", "text"),
                Column("seq", "bigint"),
                _time("time"),
                Column("type", "text"),
                _json("payload"),
                Column("run_key", "uuid"),
            ),
            _APPEND_ONLY,
        ),
        TableSpec(
            "checkpoints",
            (
                Column("run", "text"),
                Column("seq", "bigint"),
                _time("time"),
                Column("stage", "text"),
                Column("dataset", "text"),
                Column("done", "bigint"),
                Column("total", "bigint"),
                _json("detail"),
                Column("run_key", "uuid"),
            ),
            _APPEND_ONLY,
        ),
        TableSpec(
            "raster_sources",
            (
                Column("run", "text"),
                Column("seq", "bigint"),
                _time("time"),
                Column("dataset", "text"),
                Column("path", "text"),
                Column("status", "text"),
                Column("crs", "text"),
                Column("width", "integer"),
                Column("height", "integer"),
                Column("dtype", "text"),
                Column("nodata", "double precision"),
                Column("error", "text"),
                Column("change", "text"),
                Column("size", "bigint"),
                _time("mtime"),
                Column("run_key", "uuid"),
            ),
            _APPEND_ONLY,
        ),
    )
}


def _position(table: str, column: str) -> int:
    return [c.name for c in TABLES[table].columns].index(column)


_STAGE_STARTED = _position("stages", "started")
_STAGE_SEQ = _position("stages", "seq")
_RUN_REV = _position("runs", "rev")


class UnstampedEvent(ValueError):
    """An event without run/seq cannot be stored idempotently."""


#: A JSON ``\u0000`` escape (not an escaped backslash followed by "u0000").
_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def _jsonb_text(text: str) -> str:
    """Drop NUL characters from JSON text: jsonb rejects them (text columns drop them too)."""
    return _JSON_NUL.sub(r"\1", text) if "\\u0000" in text else text


def _dumps(value: Any) -> str:
    """JSON for a jsonb column: NaN and infinities (a raster's nodata) become null,
    as pydantic writes them in the events payload; jsonb would reject the record."""
    try:
        text = json.dumps(value, separators=(",", ":"), default=str, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(value), separators=(",", ":"), default=str)
    return _jsonb_text(text)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


@dataclass
class Batch:
    """Rows of one flush, grouped by table.

    Rows whose key repeats within the batch (a stage updated many times, a run
    summary sent on every progress tick) are merged here, because one
    ``INSERT … ON CONFLICT DO UPDATE`` may not touch the same row twice.
    """

    #: The writing daemon's instance id; with the short id it makes each run's key.
    instance: uuid.UUID
    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    _stages: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    _runs: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    _keys: dict[str, str] = field(default_factory=dict)
    records: int = 0

    def key(self, run: str) -> str:
        """The run's global key (text for COPY), derived once per run and batch."""
        key = self._keys.get(run)
        if key is None:
            key = self._keys[run] = str(run_key(self.instance, run))
        return key

    def _append(self, table: str, row: tuple[Any, ...]) -> None:
        # Every table's last column is run_key (runs: then instance).
        self.rows.setdefault(table, []).append((*row, self.key(row[0])))

    def add_event(self, event: Event) -> None:
        run, seq = event.run, event.seq
        if run is None or seq is None:
            raise UnstampedEvent(f"{event.type} event without run/seq cannot be stored")
        self.records += 1
        t = event.time
        self._append("events", (run, seq, t, event.type, _jsonb_text(encode(event))))
        if isinstance(event, StageEvent):
            self._append("progress", (run, seq, t, event.id, event.status, event.done, event.total))
            self._add_stage(event)
        elif isinstance(event, LogEvent):
            self._append(
                "log_records",
                (
                    run,
                    seq,
                    t,
                    event.level,
                    event.logger,
                    event.stage,
                    event.dataset,
                    event.message,
                    _dumps(event.extra),
                ),
            )
        elif isinstance(event, MemoryEvent):
            self._append(
                "memory_samples",
                (
                    run,
                    seq,
                    t,
                    event.stage,
                    event.operation,
                    event.rss,
                    event.uss,
                    event.system_available,
                    event.window_size,
                    event.budget,
                    event.warning,
                    event.critical,
                    event.worker,
                ),
            )
        elif isinstance(event, CheckpointEvent):
            self._append(
                "checkpoints",
                (
                    run,
                    seq,
                    t,
                    event.stage,
                    event.dataset,
                    event.done,
                    event.total,
                    _dumps(event.detail),
                ),
            )
        elif isinstance(event, SourceEvent):
            self._append(
                "raster_sources",
                (
                    run,
                    seq,
                    t,
                    event.dataset,
                    event.path,
                    event.status,
                    event.crs,
                    event.width,
                    event.height,
                    event.dtype,
                    event.nodata,
                    event.error,
                    event.change,
                    event.size,
                    event.mtime,
                ),
            )

    def _add_stage(self, event: StageEvent) -> None:
        assert event.run is not None and event.seq is not None
        started = event.time if event.status == "running" else None
        finished = event.time if event.status in FINISHED_STATUSES else None
        row = [
            event.run,
            event.id,
            event.parent,
            event.kind,
            event.name,
            event.status,
            event.done,
            event.total,
            event.unit,
            event.error,
            started,
            finished,
            event.time,
            event.seq,
            self.key(event.run),
        ]
        key = (event.run, event.id)
        previous = self._stages.get(key)
        if previous is not None:
            first_start = min(
                (s for s in (previous[_STAGE_STARTED], started) if s is not None), default=None
            )
            if previous[_STAGE_SEQ] > event.seq:
                row = previous
            row[_STAGE_STARTED] = first_start
        self._stages[key] = row

    def add_run(self, summary: RunSummary, rev: int, host: str, user: str, now: float) -> None:
        self.records += 1
        previous = self._runs.get(summary.id)
        if previous is not None and previous[_RUN_REV] > rev:
            return
        data = summary.model_dump(mode="json")
        extra = summary.model_extra or {}
        config = extra.get("config")
        self._runs[summary.id] = (
            summary.id,
            summary.name,
            summary.state,
            summary.config_path,
            None if config is None else _dumps(config),
            summary.run_dir,
            summary.submitted,
            summary.started,
            summary.finished,
            summary.exit_code,
            summary.error,
            summary.retries,
            summary.progress,
            summary.peak_rss,
            summary.last_seq,
            extra.get("host", host),
            extra.get("user", user),
            _dumps(data),
            rev,
            now,
            self.key(summary.id),
            str(self.instance),
        )

    def tables(self) -> dict[str, list[tuple[Any, ...]]]:
        """table → rows, parents first (runs, stages) so readers see a tree's root early."""
        out: dict[str, list[tuple[Any, ...]]] = {}
        if self._runs:
            out["runs"] = list(self._runs.values())
        if self._stages:
            out["stages"] = [tuple(r) for r in self._stages.values()]
        out.update(self.rows)
        return out

    def __bool__(self) -> bool:
        return self.records > 0


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\x00": ""})
#: Most strings need no escaping; searching first is cheaper than translating every one.
_NEEDS_ESCAPE = re.compile(r"[\\\t\n\r\x00]")


def _copy_value(value: Any) -> str:
    if value is None:
        return "\\N"
    kind = type(value)
    if kind is str:
        return value.translate(_COPY_ESCAPES) if _NEEDS_ESCAPE.search(value) else value
    if kind is int:
        return str(value)
    if kind is float:
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if kind is bool:
        return "t" if value else "f"
    return str(value).translate(_COPY_ESCAPES)


def copy_text(rows: Iterable[tuple[Any, ...]]) -> str:
    """Rows in PostgreSQL's COPY text format (tab-separated, ``\\N`` for NULL)."""
    join = "\t".join
    return "".join([join(map(_copy_value, row)) + "\n" for row in rows])
