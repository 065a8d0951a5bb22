"""What a run report says, distilled from the run's events (and telemetry, when there is some).

Everything here is derived from the typed events of :mod:`pipeline.events`, the
same history whichever way it was stored (the daemon's ``events.ndjson``,
telemetry's ``geod.events`` payloads, or the worker's own history of a
``geod run``), plus two cheap reads: the Parquet footer (row and null counts per
column) and the source bounds the catalog reported. No raster is opened here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import platform
import socket
from dataclasses import dataclass
from pathlib import Path

import rasterio
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from pipeline.config import PipelineConfig
from pipeline.events import (
    Event,
    GovernorEvent,
    LogEvent,
    MemoryEvent,
    OutputEvent,
    SourceEvent,
    StageEvent,
    StateEvent,
)
from pipeline.export.atomic import size_on_disk
from pipeline.grid import TargetGrid
from pipeline.stack import geod_version

#: Stage statuses that end a bar of the timeline.
_CLOSING = ("done", "failed", "paused", "skipped")
#: Log levels listed under "Warnings and errors".
PROBLEM_LEVELS = ("WARNING", "ERROR", "CRITICAL")


@dataclass
class Bar:
    """One interval of a stage or dataset step on the timeline."""

    id: str
    label: str
    kind: str
    start: float
    end: float
    status: str


@dataclass
class Mark:
    """A lifecycle moment on the timeline: pause, resume, (re)start, stop, failure."""

    time: float
    what: str


#: ``MemoryPoint.origin`` prefix of a Dask worker's samples (followed by its address).
DASK_ORIGIN = "Dask worker "


@dataclass
class MemoryPoint:
    time: float
    rss: int
    window_size: int | None
    origin: str


@dataclass
class DatasetRow:
    name: str
    path: str
    crs: str
    size: str
    resolution: str
    dtype: str
    nodata: str
    method: str
    placement: str
    valid_cells: int | None
    footprint_cells: int | None


@dataclass
class OutputRow:
    kind: str
    path: str
    bytes: int | None
    rows: int | None
    validated_cells: int | None


@dataclass
class ReportData:
    """Everything the HTML shows, already summarised."""

    title: str
    summary: dict[str, str]
    bars: list[Bar]
    marks: list[Mark]
    memory: list[MemoryPoint]
    governor: list[GovernorEvent]
    budget: int | None
    warning: float | None
    critical: float | None
    datasets: list[DatasetRow]
    outputs: list[OutputRow]
    problems: list[tuple[float, str, str]]
    start: float


def config_hash(config: PipelineConfig) -> str:
    """Short SHA-256 of the validated config: two runs with equal hashes ran the same thing."""
    text = config.model_dump_json(by_alias=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    """Versions of what produced the numbers (geod, GDAL, PROJ, rasterio, Python)."""
    return {
        "geod": geod_version(),
        "GDAL": rasterio.__gdal_version__,
        "PROJ": getattr(rasterio, "__proj_version__", "unknown"),
        "rasterio": rasterio.__version__,
        "Python": platform.python_version(),
    }


def stage_bars(events: list[Event], now: float) -> list[Bar]:
    """Intervals during which each stage/dataset node was running (one per attempt).

    A node still running when a new worker starts was cut short by a kill or a
    crash: its bar ends at the last event before that start, as ``interrupted``.
    """
    open_bars: dict[str, Bar] = {}
    bars: list[Bar] = []
    last = now
    for event in events:
        if isinstance(event, StateEvent) and event.state == "running" and open_bars:
            for bar in open_bars.values():
                bar.end, bar.status = max(bar.end, last), "interrupted"
                bars.append(bar)
            open_bars.clear()
        last = event.time
        if not isinstance(event, StageEvent) or event.kind not in ("stage", "dataset"):
            continue
        label = event.name if event.kind == "stage" else f"  {event.id}"
        current = open_bars.get(event.id)
        if event.status == "running" and current is None:
            open_bars[event.id] = Bar(
                event.id, label, event.kind, event.time, event.time, "running"
            )
        elif current is not None:
            current.end = event.time
            if event.status in _CLOSING:
                current.status = event.status
                bars.append(open_bars.pop(event.id))
        elif event.status in ("failed", "skipped"):
            bars.append(Bar(event.id, label, event.kind, event.time, event.time, event.status))
    for bar in open_bars.values():
        # Still running when the history ends (a live run): the bar reaches ``now``.
        bar.end = max(bar.end, now)
        bars.append(bar)
    return sorted(bars, key=lambda b: (b.start, b.id))


def lifecycle_marks(events: list[Event]) -> list[Mark]:
    """Worker starts (the 2nd and later are resumes or retries), pauses, stops, failures."""
    marks = []
    starts = 0
    for event in events:
        if not isinstance(event, StateEvent):
            continue
        if event.state == "running":
            starts += 1
            marks.append(Mark(event.time, "start" if starts == 1 else f"resume #{starts - 1}"))
        elif event.state in ("paused", "resumed", "stopped", "failed"):
            marks.append(Mark(event.time, event.state))
    return marks


def _footprint_cells(source: SourceEvent, grid: TargetGrid) -> int | None:
    """Grid cells inside the source's bounds (reprojected to the grid's CRS, clipped)."""
    if source.bounds is None or source.crs is None:
        return None
    try:
        west, south, east, north = transform_bounds(
            CRS.from_user_input(source.crs), grid.crs, *source.bounds
        )
    except Exception:  # an unprojectable corner: leave the footprint out
        return None
    gw, gs, ge, gn = grid.bounds
    width = max(0.0, min(east, ge) - max(west, gw))
    height = max(0.0, min(north, gn) - max(south, gs))
    return round(width / abs(grid.transform.a) * height / abs(grid.transform.e))


def valid_counts(parquet: Path) -> dict[str, int]:
    """Non-null cells per column of the merged table, from the Parquet footer alone."""
    if not parquet.is_file():
        return {}
    import pyarrow.parquet as pq  # only when the run exported a table

    metadata = pq.ParquetFile(parquet).metadata
    counts: dict[str, int] = {}
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            column = row_group.column(index)
            stats = column.statistics
            nulls = stats.null_count if stats is not None and stats.has_null_count else 0
            name = column.path_in_schema
            counts[name] = counts.get(name, 0) + row_group.num_rows - nulls
    return counts


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:g}"


def dataset_rows(
    config: PipelineConfig, events: list[Event], grid: TargetGrid, parquet: Path
) -> list[DatasetRow]:
    sources = {e.dataset: e for e in events if isinstance(e, SourceEvent)}
    counts = valid_counts(parquet)
    rows = []
    for dataset in config.datasets:
        source = sources.get(dataset.name)
        placement = "—"
        if source is not None and source.passthrough is not None:
            placement = "passthrough (copied)" if source.passthrough else "warp (resampled)"
        rows.append(
            DatasetRow(
                name=dataset.name,
                path=str(dataset.path),
                crs=(source.crs or "—") if source else "—",
                size=f"{source.width} × {source.height}" if source and source.width else "—",
                resolution=" × ".join(f"{r:.6g}" for r in source.resolution)
                if source and source.resolution
                else "—",
                dtype=(source.dtype or "—") if source else "—",
                nodata=_fmt(source.nodata) if source else "—",
                method=dataset.resampling.value,
                placement=placement,
                valid_cells=counts.get(dataset.name),
                footprint_cells=_footprint_cells(source, grid) if source else None,
            )
        )
    return rows


def output_rows(events: list[Event]) -> list[OutputRow]:
    """The last OutputEvent per path (a re-export replaces its file)."""
    latest: dict[str, OutputEvent] = {}
    for event in events:
        if isinstance(event, OutputEvent):
            latest[event.path] = event
    return [
        OutputRow(
            e.kind,
            e.path,
            e.detail.get("bytes", size_on_disk(Path(e.path))),
            e.detail.get("rows"),
            e.detail.get("validated_cells"),
        )
        for e in latest.values()
    ]


def build_report(
    config: PipelineConfig,
    events: list[Event],
    *,
    state: str | None = None,
    run_id: str | None = None,
    origin: str = "run directory",
    daemon_memory: list[MemoryPoint] | None = None,
    times: dict[str, float | None] | None = None,
) -> ReportData:
    """Summarise a run. ``state``/``times`` come from telemetry when known, else the events."""
    grid = TargetGrid.from_config(config.grid)
    stamped = [e.time for e in events]
    start = min(stamped) if stamped else 0.0
    end = max(stamped) if stamped else start
    states = [e for e in events if isinstance(e, StateEvent)]
    final_state = state or (states[-1].state if states else "unknown")
    memory_events = [e for e in events if isinstance(e, MemoryEvent)]
    memory = [
        MemoryPoint(e.time, e.rss, e.window_size, DASK_ORIGIN + e.worker if e.worker else "worker")
        for e in memory_events
    ]
    memory += daemon_memory or []
    # The budget lines are the run's own; a Dask worker's sample carries its own limit.
    last_memory = next((e for e in reversed(memory_events) if e.budget and not e.worker), None)
    problems = [
        (e.time, e.level, e.message)
        for e in events
        if isinstance(e, LogEvent) and e.level in PROBLEM_LEVELS
    ]
    problems += [(e.time, "FAILED", e.reason or "") for e in states if e.state == "failed"]
    times = times or {}

    def stamp(value: float | None) -> str:
        if value is None:
            return "—"
        return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    started = times.get("started") or (start if stamped else None)
    finished = times.get("finished") or (end if final_state in ("done", "failed") else None)
    summary = {
        "Run": run_id or config.name,
        "Name": config.name,
        "State": final_state,
        "Started": stamp(started),
        "Finished": stamp(finished),
        "Duration": f"{(finished or end) - started:.1f} s" if started else "—",
        "Config hash": config_hash(config),
        "Grid": f"{grid.crs.to_string()} {grid.width} × {grid.height}, "
        f"{abs(grid.transform.a):.6g} × {abs(grid.transform.e):.6g}",
        "Host": socket.gethostname(),
        "Data from": origin,
        **versions(),
    }
    parquet = config.paths.output_dir / f"{config.export.name}.parquet"
    return ReportData(
        title=f"geod run report — {config.name}",
        summary=summary,
        bars=stage_bars(events, end),
        marks=lifecycle_marks(events),
        memory=sorted(memory, key=lambda p: p.time),
        governor=[e for e in events if isinstance(e, GovernorEvent)],
        budget=last_memory.budget if last_memory else None,
        warning=last_memory.warning if last_memory else None,
        critical=last_memory.critical if last_memory else None,
        datasets=dataset_rows(config, events, grid, parquet),
        outputs=output_rows(events),
        problems=problems,
        start=start,
    )
