"""Where a run is: each dataset's resample windows drawn as a map of the grid, coloured by state.

A six-hour run is a grid of windows written one by one; a map of them says at
a glance where the run is, what is left and where a fault made it redo work.
The model is fed the run's events (``CheckpointEvent`` with its window's grid
position, ``StageEvent`` for which dataset is running) and drawn with
half-block characters: one character is two map cells stacked (``▀`` with a
foreground and a background colour), so cells are square on a terminal whose
characters are twice as tall as wide. ``geod map RUN`` and the dashboard's Map
panel draw the same picture from the same code.

States: ``done`` (written once), ``recomputed`` (written again: its earlier
result was lost, e.g. to a fault before the checkpoint), ``running`` (the
newest window of a dataset that is still running: where the run is now) and
``pending`` (nothing written yet).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from rich.text import Text

from pipeline.events import CheckpointEvent, Event, StageEvent
from supervisor.protocol import DatasetWindows, RunMapReply

#: Cell states, in the order their codes are painted (a later one wins a shared cell).
STATES: tuple[str, ...] = ("pending", "done", "recomputed", "running")
#: ANSI colour of each state (the legend and both views use these).
STATE_COLORS: dict[str, str] = {
    "pending": "bright_black",
    "done": "green",
    "recomputed": "magenta",
    "running": "yellow",
}
_CODE = {state: code for code, state in enumerate(STATES)}
#: Upper half block: foreground is the top cell, background the bottom one.
_HALF = "▀"
#: Stage id prefix of the datasets the map follows.
RESAMPLE = "resample"
#: Rasters (one per drawn size) a dataset keeps up to date window by window; a view
#: is usually drawn at one or two sizes (a resize), so more would only hold memory.
RASTERS_KEPT = 2

Box = tuple[int, int, int, int]  # row_off, col_off, height, width


@dataclass
class DatasetMap:
    """One dataset's windows: which were written, how often, and the newest."""

    name: str
    grid_height: int
    grid_width: int
    writes: dict[Box, int] = field(default_factory=dict)
    newest: Box | None = None
    running: bool = False
    #: Done/recomputed codes per drawn size, painted as windows arrive: a redraw of a
    #: long run's map then costs its characters, not a pass over every window.
    _rasters: dict[tuple[int, int], np.ndarray] = field(
        default_factory=dict, repr=False, compare=False
    )

    def record(self, box: Box) -> None:
        writes = self.writes[box] = self.writes.get(box, 0) + 1
        self.newest = box
        for (rows, columns), codes in self._rasters.items():
            self._paint_written(codes, rows, columns, box, writes)

    def counts(self) -> dict[str, int]:
        """Windows per state (pending is not counted: the grid's windows are not all known)."""
        recomputed = sum(1 for n in self.writes.values() if n > 1)
        return {"done": len(self.writes) - recomputed, "recomputed": recomputed}

    def cells(self, rows: int, columns: int) -> np.ndarray:
        """State codes of a ``rows`` × ``columns`` raster of the grid (each window painted)."""
        written = self._rasters.get((rows, columns))
        if written is None:
            if len(self._rasters) >= RASTERS_KEPT:
                self._rasters.clear()
            written = self._rasters[(rows, columns)] = np.zeros((rows, columns), dtype=np.uint8)
            for box, writes in self.writes.items():
                self._paint_written(written, rows, columns, box, writes)
        codes = written.copy()
        if self.running and self.newest is not None:
            _paint(codes, self.newest, *self._scale(rows, columns), _CODE["running"])
        return codes

    def _scale(self, rows: int, columns: int) -> tuple[float, float]:
        return rows / self.grid_height, columns / self.grid_width

    def _paint_written(
        self, codes: np.ndarray, rows: int, columns: int, box: Box, writes: int
    ) -> None:
        state = "recomputed" if writes > 1 else "done"
        _paint(codes, box, *self._scale(rows, columns), _CODE[state])


def _paint(codes: np.ndarray, box: Box, scale_y: float, scale_x: float, code: int) -> None:
    row, col, height, width = box
    top, left = int(row * scale_y), int(col * scale_x)
    bottom = max(top + 1, math.ceil((row + height) * scale_y))
    right = max(left + 1, math.ceil((col + width) * scale_x))
    view = codes[top:bottom, left:right]
    np.maximum(view, code, out=view)


@dataclass
class RunMap:
    """Every dataset's map of one run, in the order the datasets first appeared."""

    datasets: dict[str, DatasetMap] = field(default_factory=dict)
    #: Dataset of the newest window (what a view shows unless told otherwise).
    latest: str | None = None
    #: Newest window event folded in: one at or below it is already counted.
    last_seq: int = 0

    def apply(self, event: Event) -> bool:
        """Fold one event in; True if the map changed."""
        if isinstance(event, CheckpointEvent):
            if event.seq is not None:
                if event.seq <= self.last_seq:
                    return False  # already in (a history fetched after it arrived live)
                self.last_seq = event.seq
            return self._window(event)
        if isinstance(event, StageEvent) and event.parent == RESAMPLE:
            dataset = self.datasets.get(event.name)
            if dataset is not None and dataset.running != (event.status == "running"):
                dataset.running = event.status == "running"
                return True
        return False

    def feed(self, events: Iterable[Event]) -> RunMap:
        for event in events:
            self.apply(event)
        return self

    def _window(self, event: CheckpointEvent) -> bool:
        box = (event.row_off, event.col_off, event.height, event.width)
        if event.dataset is None or event.grid_height is None or event.grid_width is None:
            return False
        if any(value is None for value in box):
            return False
        dataset = self.datasets.get(event.dataset)
        if dataset is None:
            dataset = self.datasets[event.dataset] = DatasetMap(
                event.dataset, event.grid_height, event.grid_width, running=True
            )
        dataset.record(box)  # type: ignore[arg-type]  # checked above: no None left
        self.latest = event.dataset
        return True


def to_reply(run_id: str, run_map: RunMap) -> RunMapReply:
    """The map as ``runs.map`` sends it: windows with their write counts, per dataset."""
    datasets = [
        DatasetWindows(
            name=dataset.name,
            grid_height=dataset.grid_height,
            grid_width=dataset.grid_width,
            windows=[(*box, writes) for box, writes in dataset.writes.items()],
            newest=dataset.newest,
            running=dataset.running,
        )
        for dataset in run_map.datasets.values()
    ]
    return RunMapReply(
        run=run_id, last_seq=run_map.last_seq, latest=run_map.latest, datasets=datasets
    )


def from_reply(reply: RunMapReply) -> RunMap:
    """The map a ``runs.map`` reply describes (the inverse of :func:`to_reply`)."""
    run_map = RunMap(latest=reply.latest, last_seq=reply.last_seq)
    for wire in reply.datasets:
        dataset = DatasetMap(wire.name, wire.grid_height, wire.grid_width, running=wire.running)
        dataset.writes = {(row, col, h, w): n for row, col, h, w, n in wire.windows}
        dataset.newest = wire.newest
        run_map.datasets[wire.name] = dataset
    return run_map


def fit(dataset: DatasetMap, columns: int, rows: int) -> tuple[int, int]:
    """Map cells (rows, columns) that fit ``columns`` × ``rows`` characters with square cells."""
    aspect = dataset.grid_height / dataset.grid_width
    width = max(1, columns)
    cell_rows = max(1, round(width * aspect))
    if cell_rows > 2 * rows:
        cell_rows = max(1, 2 * rows)
        width = max(1, min(columns, round(cell_rows / aspect)))
    return cell_rows, width


def render(dataset: DatasetMap, columns: int, rows: int) -> list[Text]:
    """The map as lines of half-block characters, at most ``columns`` × ``rows``."""
    cell_rows, width = fit(dataset, columns, rows)
    codes = dataset.cells(cell_rows + cell_rows % 2, width)
    styles = {
        (top, bottom): f"{STATE_COLORS[STATES[top]]} on {STATE_COLORS[STATES[bottom]]}"
        for top in range(len(STATES))
        for bottom in range(len(STATES))
    }
    lines = []
    for y in range(0, codes.shape[0], 2):
        line = Text()
        pairs = list(zip(codes[y].tolist(), codes[y + 1].tolist(), strict=True))
        start = 0
        for x in range(1, len(pairs) + 1):
            if x == len(pairs) or pairs[x] != pairs[start]:
                line.append(_HALF * (x - start), style=styles[pairs[start]])
                start = x
        lines.append(line)
    return lines


def legend(dataset: DatasetMap | None = None) -> Text:
    """``■ done 12 ■ recomputed 1 ■ running ■ pending``: what each colour means."""
    counts = dataset.counts() if dataset is not None else {}
    text = Text()
    for state in ("done", "recomputed", "running", "pending"):
        if text:
            text.append("  ")
        text.append("■ ", style=STATE_COLORS[state])
        text.append(state + (f" {counts[state]}" if state in counts else ""))
    return text
