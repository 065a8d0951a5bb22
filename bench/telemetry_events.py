"""A realistic telemetry event stream: what the telemetry benchmark writes and the
telemetry tests replay (a run's stage tree with per-window progress, logs, memory
samples, checkpoints and sources, stamped as the daemon stamps them).

A module of bench/ that imports only the project, so the benchmark runs from a
plain checkout (``python bench/telemetry_overhead.py``) and the tests import it
as ``bench.telemetry_events``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from pipeline.events import (
    CheckpointEvent,
    Event,
    LogEvent,
    MemoryEvent,
    SourceEvent,
    StageEvent,
)


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
