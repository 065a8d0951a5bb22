"""Small merged tables on a real target grid, and a real RunContext to analyse them.

The table imitates what the export stage writes: cell centres ``x``/``y`` in
row-major grid order, one float column per dataset, nulls for missing values,
several row groups (so batch re-chunking across row groups is exercised).
The columns have spatially varying structure: in the west ``b`` follows ``a``,
in the east ``b`` follows ``c``, so local PCA differs from global PCA.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import PipelineConfig, parse_config
from pipeline.context import RunContext
from pipeline.control import Controller
from pipeline.events import Event, EventSink, OutputEvent, StageEvent
from pipeline.grid import TargetGrid
from pipeline.memory import MemoryGovernor

COLUMNS = ("a", "b", "c")
#: The categorical column of tables made with ``classes=True``: codes 2, 5, 7, 9.
CLASS_COLUMN = "cls"
CLASS_CODES = (2, 5, 7, 9)
#: A 60 × 40 grid of 0.25° cells over Europe-ish longitudes/latitudes.
BOUNDS = (0.0, 40.0, 15.0, 50.0)
RESOLUTION = 0.25


def make_config(tmp_path: Path, analysis: dict[str, Any], classes: bool = False) -> PipelineConfig:
    datasets: list[dict[str, Any]] = [{"name": name, "path": f"{name}.tif"} for name in COLUMNS]
    if classes:
        datasets.append({"name": CLASS_COLUMN, "path": "cls.tif", "categorical": True})
    data = {
        "name": "analysis-test",
        "datasets": datasets,
        "grid": {"crs": "EPSG:4326", "resolution": RESOLUTION, "bounds": list(BOUNDS)},
        "paths": {"work_dir": "work", "output_dir": "out"},
        "memory": {"budget": "2GiB"},
        "analysis": analysis,
    }
    return parse_config(data, "test-config", tmp_path)


def write_table(
    path: Path, grid: TargetGrid, seed: int = 7, missing: float = 0.05, classes: bool = False
) -> pa.Table:
    """The synthetic merged table for ``grid``; ``missing`` = share of null values.

    With ``classes``, an int16 column of class codes (:data:`CLASS_CODES`) too.
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.meshgrid(np.arange(grid.height), np.arange(grid.width), indexing="ij")
    x, y = grid.transform @ (cols.ravel() + 0.5, rows.ravel() + 0.5)
    east = (cols.ravel() / max(grid.width - 1, 1)).astype(float)
    n = len(x)
    a = rng.normal(size=n) + np.sin(np.radians(y) * 8)
    c = rng.normal(size=n)
    b = (1 - east) * a + east * c + 0.3 * rng.normal(size=n)
    values = {"a": a * 10 + 50, "b": b, "c": c * 0.1 - 3}
    arrays = {"x": pa.array(np.asarray(x)), "y": pa.array(np.asarray(y))}
    for name, column in values.items():
        mask = rng.random(n) < missing
        arrays[name] = pa.array(column, mask=mask)
    if classes:
        codes = np.array(CLASS_CODES, dtype=np.int16)[rng.integers(0, len(CLASS_CODES), n)]
        arrays[CLASS_COLUMN] = pa.array(codes, mask=rng.random(n) < missing)
    table = pa.table(arrays)
    pq.write_table(table, path, row_group_size=700)
    return table


@dataclass
class Harness:
    """A RunContext whose events are collected in memory, plus its grid and table."""

    ctx: RunContext
    grid: TargetGrid
    table: Path
    out: Path
    events: list[Event] = field(default_factory=list)
    listeners: list[Callable[[Event], None]] = field(default_factory=list)

    def receive(self, event: Event) -> None:
        self.events.append(event)
        for listener in self.listeners:
            listener(event)

    def stop_when(self, stage: str, done: int) -> None:
        """Ask for a stop (as SIGTERM would) once ``stage`` reports ``done`` units."""

        def check(event: Event) -> None:
            if isinstance(event, StageEvent) and event.id == stage and event.done == done:
                self.ctx.control.request_stop()

        self.listeners.append(check)

    def outputs(self) -> dict[str, OutputEvent]:
        return {Path(e.path).name: e for e in self.events if isinstance(e, OutputEvent)}

    def stages(self) -> dict[str, StageEvent]:
        latest: dict[str, StageEvent] = {}
        for event in self.events:
            if isinstance(event, StageEvent):
                latest[event.id] = event
        return latest


def make_harness(
    tmp_path: Path, analysis: dict[str, Any], missing: float = 0.05, classes: bool = False
) -> Harness:
    config = make_config(tmp_path, analysis, classes)
    grid = TargetGrid.from_config(config.grid)
    out = config.paths.output_dir
    out.mkdir(parents=True, exist_ok=True)
    table = tmp_path / "merged.parquet"
    if not table.exists():  # a second harness on the same folder resumes the same table
        write_table(table, grid, missing=missing, classes=classes)
    # The sink needs the harness (to deliver), the harness needs the sink (in its context).
    forward: list[Callable[[Event], None]] = []
    sink = EventSink(callback=lambda event: forward[0](event))
    governor = MemoryGovernor(config.memory, sink, config.resampling.window_size)
    harness = Harness(RunContext(config, sink, Controller(sink), governor), grid, table, out)
    forward.append(harness.receive)
    return harness
