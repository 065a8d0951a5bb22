"""What one analysis method needs from the run: input, grid, progress, stops, outputs.

Methods receive a :class:`MethodRun` instead of the raw RunContext so the
batch boundary (memory reading, pause/stop) and output reporting happen the
same way in every method, and ``combined`` can run ``som`` on another table
and grid by deriving a MethodRun with :meth:`MethodRun.derive`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.analysis.io import WORK_DIR_NAME, RasterGrid, Variables
from pipeline.context import RunContext, StageNode
from pipeline.events import OutputEvent

log = logging.getLogger("geod.analysis")


@dataclass
class MethodRun:
    """One method's inputs and reporting handles.

    ``prefix`` names every output file (``som_bmu.parquet``, ``combined_bmu.tif``)
    and the method's scratch directory, so two methods never share a file.
    ``produced`` holds the outputs of the methods that ran before in this run
    (``combined`` reuses ``gwpca``'s table instead of computing it twice).
    """

    ctx: RunContext
    table: Path
    variables: Variables
    grid: RasterGrid
    output_dir: Path
    node: StageNode
    prefix: str
    produced: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        """Names of the analysed variables (one-hot indicators expanded)."""
        return self.variables.names

    @property
    def work_root(self) -> Path:
        return self.output_dir / WORK_DIR_NAME

    @property
    def cache_bytes(self) -> int:
        """GDAL block cache for map writing: the governor's share of the budget."""
        return self.ctx.governor.gdal_cache_bytes()

    def output(self, name: str) -> Path:
        return self.output_dir / f"{self.prefix}_{name}"

    def derive(self, **changes: Any) -> MethodRun:
        return replace(self, **changes)

    def boundary(self) -> None:
        """Between two batches, once the last one is durable: read memory, honour pause/stop."""
        self.ctx.governor.after_window(stage=self.node.id)
        self.ctx.control.checkpoint()

    def scaled(self, base: int, floor: int = 1) -> int:
        """``base`` shrunk by the governor's current pressure ratio."""
        return self.ctx.governor.chunk_rows(base, floor)

    def phase(self, key: str, total: int = 0, unit: str = "batches", done: int = 0) -> StageNode:
        """A started sub-step of this method (``analysis/som/assign``)."""
        node = self.node.child(key, "window_group", total=total, unit=unit)
        node.start(done=done)
        return node

    def phase_done(self, phase: StageNode) -> None:
        """Finish a sub-step and count it on the method's node (its unit is steps)."""
        phase.finish()
        self.node.advance()

    def emit_output(self, kind: str, path: Path, **detail: Any) -> Path:
        self.ctx.events.emit(
            OutputEvent(kind=kind, path=str(path), stage=self.node.id, detail=detail)
        )
        log.info("%s wrote %s", self.prefix, path.name, extra={"stage": "analysis"})
        return path
