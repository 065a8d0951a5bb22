"""What every stage receives: config, event sink, controller, governor, stage tree.

Stages report progress through :class:`StageNode` handles rather than emitting
raw events, so the stage tree a TUI shows and the rows telemetry stores come
from one place with consistent ids (``resample``, ``resample/bio1``, ...).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.config import PipelineConfig
from pipeline.control import Controller
from pipeline.events import EventSink, StageEvent, StageKind, StageStatus
from pipeline.executor import Executor
from pipeline.executor.local import LocalExecutor

if TYPE_CHECKING:
    from pipeline.memory import MemoryGovernor


class RunError(RuntimeError):
    """A failure a stage phrases for the user itself: one line naming what and where.

    The worker reports these without a traceback and exits 1 (freeing space and
    retrying can help). The stages' own errors derive from it so the worker can
    catch them without importing the stages (and their libraries) it does not run.
    """


@dataclass
class StageNode:
    """One node of the stage tree; emits a StageEvent on every change."""

    events: EventSink
    id: str
    parent: str | None
    kind: StageKind
    name: str
    total: int = 0
    unit: str = "windows"
    done: int = 0
    status: StageStatus = "pending"
    #: Grid cells of all the windows and of the done ones, for nodes whose windows differ
    #: in size (None: every unit counts the same).
    cells_total: int | None = None
    cells_done: int = 0

    def _emit(self, error: str | None = None) -> None:
        self.events.emit(
            StageEvent(
                id=self.id,
                parent=self.parent,
                kind=self.kind,
                name=self.name,
                status=self.status,
                done=self.done,
                total=self.total,
                unit=self.unit,
                error=error,
                cells_done=None if self.cells_total is None else self.cells_done,
                cells_total=self.cells_total,
            )
        )

    def child(
        self,
        key: str,
        kind: StageKind,
        name: str | None = None,
        total: int = 0,
        unit: str = "windows",
    ) -> StageNode:
        node = StageNode(self.events, f"{self.id}/{key}", self.id, kind, name or key, total, unit)
        node._emit()
        return node

    def start(
        self,
        total: int | None = None,
        done: int = 0,
        cells_total: int | None = None,
        cells_done: int = 0,
    ) -> None:
        """Running, with ``done`` of ``total`` units (and their cells, when units differ)."""
        if total is not None:
            self.total = total
        self.done = done
        if cells_total is not None:
            self.cells_total = cells_total
        self.cells_done = cells_done
        self.status = "running"
        self._emit()

    def advance(self, count: int = 1, cells: int = 0) -> None:
        """``count`` more units done, holding ``cells`` grid cells."""
        self.done += count
        self.cells_done += cells
        self._emit()

    def set_total(self, total: int) -> None:
        self.total = total
        self._emit()

    def finish(self, status: StageStatus = "done") -> None:
        if status == "done" and self.total:
            self.done = self.total
        if status == "done" and self.cells_total is not None:
            self.cells_done = self.cells_total
        self.status = status
        self._emit()

    def fail(self, error: str) -> None:
        self.status = "failed"
        self._emit(error)


@dataclass
class RunContext:
    """Shared state of one pipeline run inside one worker process."""

    config: PipelineConfig
    events: EventSink
    control: Controller
    governor: MemoryGovernor
    #: Where work units compute (pipeline.executor); the worker opens and closes it.
    executor: Executor = field(default_factory=LocalExecutor)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("geod.pipeline"))

    def root(self) -> StageNode:
        node = StageNode(self.events, "run", None, "run", self.config.name, unit="stages")
        return node

    def stage(self, key: str, total: int = 0, unit: str = "windows") -> StageNode:
        node = StageNode(self.events, key, "run", "stage", key, total, unit)
        node._emit()
        return node
