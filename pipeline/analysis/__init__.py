"""The analysis stage: methods chosen by name from a closed set, run on the merged table.

A method name only ever selects an entry of :data:`METHODS`, a dict keyed by
the :class:`~pipeline.config.AnalysisMethod` enum that config validation
already enforced; it never reaches a shell, ``eval`` or a format string that is
executed (the older system built Python source from the name and had a command
injection through it).

Each method gets its own node in the stage tree (``analysis/som``, …) with
sub-steps per pass, checks pause/stop between batches, and keeps per-batch part
files in ``OUTPUT_DIR/.analysis-work/`` so a killed run resumes where it
stopped. Outputs are reported as OutputEvents, so ``geod status RUN`` lists them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.analysis.combined import run_combined
from pipeline.analysis.gwpca import run_gwpca
from pipeline.analysis.io import (
    WORK_DIR_NAME,
    AnalysisError,
    RasterGrid,
    Variables,
    class_label,
    scan_classes,
    table_columns,
)
from pipeline.analysis.runtime import MethodRun
from pipeline.analysis.smoke import run_smoke
from pipeline.analysis.som import run_som
from pipeline.config import AnalysisMethod
from pipeline.context import RunContext, StageNode
from pipeline.control import StopRequested

__all__ = ["METHODS", "AnalysisError", "run_analysis"]

log = logging.getLogger("geod.analysis")

#: The only way from a method name to code.
METHODS: dict[AnalysisMethod, Callable[[MethodRun], list[Path]]] = {
    AnalysisMethod.som: run_som,
    AnalysisMethod.gwpca: run_gwpca,
    AnalysisMethod.combined: run_combined,
    AnalysisMethod.test: run_smoke,
}


def run_analysis(
    ctx: RunContext, table_path: Path, grid: Any, output_dir: Path, node: StageNode
) -> list[Path]:
    """Run ``config.analysis.methods`` in order on ``table_path``; returns the files written.

    ``grid`` is the target grid (anything with ``crs``, ``transform``, ``width``
    and ``height``); maps are written on it or on a regular subsample of it.
    """
    config = ctx.config.analysis
    methods = [AnalysisMethod(m) for m in config.methods]
    output_dir.mkdir(parents=True, exist_ok=True)
    variables = analysed_variables(ctx, table_path)
    raster_grid = RasterGrid.of(grid)
    node.unit = "methods"
    node.start(total=len(methods))
    produced: dict[str, list[Path]] = {}
    outputs: list[Path] = []
    for method in methods:
        child = node.child(method.value, "dataset", unit="steps")
        child.start()
        run = MethodRun(
            ctx, table_path, variables, raster_grid, output_dir, child, method.value, produced
        )
        try:
            written = METHODS[method](run)
        except StopRequested:
            child.finish("paused")
            raise
        except Exception as exc:
            child.fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise
        produced[method.value] = written
        outputs += written
        child.finish()
        node.advance()
    _remove_empty(output_dir / WORK_DIR_NAME)
    return outputs


def analysed_variables(ctx: RunContext, table_path: Path) -> Variables:
    """The config's analysed datasets, checked in the table, categorical ones one-hot encoded.

    Class codes never reach a covariance or a distance as numbers: a
    categorical dataset is analysed only when ``analysis.variables`` names it,
    and then as one indicator per class found in the table (logged).
    """
    config = ctx.config
    sources = table_columns(table_path, config.analysed_variables())
    categorical = config.one_hot_variables()
    if not categorical:
        return Variables.plain(sources)
    classes = scan_classes(
        table_path, categorical, config.analysis.read_batch_rows, config.analysis.max_categories
    )
    for name, codes in classes:
        log.info(
            "analysis: %s is categorical; one-hot encoded as %d indicator variables "
            "(%s_<class>: %s), not used as numbers",
            name,
            len(codes),
            name,
            ", ".join(class_label(code) for code in codes),
            extra={"stage": "analysis"},
        )
    return Variables(tuple(sources), classes)


def _remove_empty(work: Path) -> None:
    """Drop the scratch tree once every method finished (it then holds only empty folders)."""
    if not work.is_dir():
        return
    for folder in sorted(work.iterdir(), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    if not any(work.iterdir()):
        work.rmdir()
