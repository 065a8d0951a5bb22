"""A fixed, deterministic event sequence of a demo-like run, for TUI state and snapshot tests.

Built from the real ``pipeline.events`` models (the same objects a worker
emits) and stamped with ``run`` and ``seq`` as the daemon does, so the state
model and widgets are exercised exactly as on a live attach — but with fixed
times so screenshots do not change between runs.
"""

from __future__ import annotations

from typing import Any

from pipeline.events import (
    CheckpointEvent,
    Event,
    GovernorEvent,
    LogEvent,
    MemoryEvent,
    RunStateEvent,
    StageEvent,
    event_to_json_dict,
)
from supervisor.protocol import RunSummary, Snapshot

T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
RUN = "r1"
OTHER = "r2"
_MIB = 1024 * 1024
DATASETS = ("richness", "endemism", "landcover", "threat")
BUDGET = 2048 * _MIB


def summaries() -> list[dict[str, Any]]:
    running = RunSummary(
        id=RUN,
        name="demo",
        state="running",
        progress=0.42,
        stage="resample/landcover",
        started=T0,
        eta=95.0,
        eta_at=T0 + 60 + 95.0,
        eta_range=20.0,
        running_time=0.0,
        running_since=T0,
        rss=610 * _MIB,
        peak_rss=700 * _MIB,
        last_seq=0,
    )
    failed = RunSummary(
        id=OTHER,
        name="demo-big",
        state="failed",
        progress=0.1,
        stage="catalog",
        started=T0 - 600,
        finished=T0 - 540,
        rss=None,
        error="catalog: threat_ease.tif has no CRS",
    )
    return [running.model_dump(), failed.model_dump()]


def _stage(t: float, **fields: Any) -> StageEvent:
    return StageEvent(time=t, **fields)


#: The recorded grid (rows, columns) and its window size: a 2 × 4 lattice of windows.
GRID = (180, 360)
WINDOW = 90


def _window(t: float, dataset: str, index: int, done: int, total: int) -> CheckpointEvent:
    row, col = divmod(index, GRID[1] // WINDOW)
    return CheckpointEvent(
        time=t,
        stage="resample",
        dataset=dataset,
        done=done,
        total=total,
        row_off=row * WINDOW,
        col_off=col * WINDOW,
        height=WINDOW,
        width=WINDOW,
        grid_height=GRID[0],
        grid_width=GRID[1],
    )


def events(run: str = RUN) -> list[dict[str, Any]]:
    """The run's events in emission order, with ``run`` and ``seq`` set."""
    out: list[Event] = []
    t = T0
    out.append(_stage(t, id="run", kind="run", name="demo", status="running", unit="stages"))
    out.append(_stage(t, id="catalog", parent="run", kind="stage", name="catalog", status="done"))
    out.append(
        _stage(t, id="resample", parent="run", kind="stage", name="resample", status="running")
    )
    for index, dataset in enumerate(DATASETS):
        status = "done" if index < 2 else ("running" if index == 2 else "pending")
        total = 8
        done = total if status == "done" else (5 if status == "running" else 0)
        for step in range(done + 1):
            t += 1.0
            out.append(
                _stage(
                    t,
                    id=f"resample/{dataset}",
                    parent="resample",
                    kind="dataset",
                    name=dataset,
                    status="running" if step < total else status,
                    done=step,
                    total=total,
                )
            )
            if step:
                # Window ``step - 1`` of a 2 × 4 lattice; landcover's second window is
                # written twice (redone after a fault), so the map shows "recomputed".
                redo = dataset == "landcover" and step == 3
                for window in (step - 1, 1) if redo else (step - 1,):
                    out.append(_window(t, dataset, window, step, total))
            out.append(
                LogEvent(
                    time=t,
                    level="INFO",
                    logger="geod.resample",
                    message=f"{dataset}: window {step}/{total} written",
                    stage="resample",
                    dataset=dataset,
                )
            )
            out.append(
                MemoryEvent(
                    time=t,
                    rss=(400 + 30 * step + 20 * index) * _MIB,
                    system_available=3000 * _MIB - step * 10 * _MIB,
                    window_size=512 if index < 2 else 256,
                    budget=BUDGET,
                    warning=0.8,
                    critical=0.9,
                    stage=f"resample/{dataset}",
                )
            )
            # The daemon's own sample of the worker's process tree (children included).
            out.append(
                MemoryEvent(
                    time=t + 0.5,
                    rss=(450 + 30 * step + 20 * index) * _MIB,
                    uss=(420 + 30 * step + 20 * index) * _MIB,
                    system_available=3000 * _MIB - step * 10 * _MIB,
                    stage=f"resample/{dataset}",
                    operation="sample",
                )
            )
        if status == "done":
            out.append(
                _stage(
                    t,
                    id=f"resample/{dataset}",
                    parent="resample",
                    kind="dataset",
                    name=dataset,
                    status="done",
                    done=total,
                    total=total,
                )
            )
    out.append(
        GovernorEvent(
            time=t,
            old_size=512,
            new_size=256,
            rss=1700 * _MIB,
            budget=BUDGET,
            level="warning",
            reason="RSS 1.7 GiB ≥ 80 % of 2.0 GiB",
        )
    )
    out.append(
        LogEvent(
            time=t,
            level="WARNING",
            logger="geod.memory",
            message="window 512 → 256: RSS 1.7 GiB ≥ 80 % of 2.0 GiB",
            stage="resample",
        )
    )
    out.append(
        LogEvent(
            time=t,
            level="DEBUG",
            logger="geod.store",
            message="chunk manifest flushed",
            stage="resample",
            dataset="landcover",
        )
    )
    out.append(
        _stage(
            t,
            id="merge",
            parent="run",
            kind="stage",
            name="merge",
            status="failed",
            error="merge: disk full writing part-0003",
        )
    )
    out.append(
        LogEvent(
            time=t,
            level="ERROR",
            logger="geod.merge",
            message="merge: disk full writing part-0003",
            stage="merge",
        )
    )
    stamped = []
    for seq, event in enumerate(out, start=1):
        stamped.append({**event_to_json_dict(event), "run": run, "seq": seq})
    return stamped


def transitions() -> list[dict[str, Any]]:
    """The run-state changes the daemon recorded before the dashboard attached: the failed
    run failed at its catalog, was retried once by its policy and failed again."""
    error = "catalog: threat_ease.tif has no CRS"
    failure = {"previous": "running", "stage": "catalog", "retries": 1, "max_retries": 1}
    changes = [
        RunStateEvent(run=OTHER, time=T0 - 601, state="queued"),
        RunStateEvent(run=OTHER, time=T0 - 600, state="running", previous="queued"),
        RunStateEvent(
            run=OTHER,
            time=T0 - 570,
            state="queued",
            error=f"{error}; retry 1/1 in 30 s",
            running_time=30.0,
            **failure,
        ),
        RunStateEvent(
            run=OTHER, time=T0 - 560, state="running", previous="queued", retries=1, max_retries=1
        ),
        RunStateEvent(
            run=OTHER, time=T0 - 540, state="failed", error=error, running_time=50.0, **failure
        ),
        RunStateEvent(run=RUN, time=T0 - 1, state="queued"),
        RunStateEvent(run=RUN, time=T0, state="running", previous="queued"),
    ]
    return [event_to_json_dict(change) for change in changes]


def snapshot_before(events_list: list[dict[str, Any]], upto: int) -> Snapshot:
    """A ``subscribe`` snapshot as the daemon would send after the first ``upto`` events."""
    stages: dict[str, dict[str, Any]] = {}
    for event in events_list[:upto]:
        if event["type"] == "stage":
            stages[event["id"]] = event
    return Snapshot.model_validate(
        {
            "runs": summaries(),
            "stages": {RUN: list(stages.values())},
            "last_seq": {RUN: events_list[upto - 1]["seq"] if upto else 0},
            "transitions": transitions(),
        }
    )
