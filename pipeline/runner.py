"""The stage sequence of a run: catalog → resample → export (merge streamed) → analysis.

The runner only orders stages and reports them in the stage tree; each stage's
work lives in its own module. Every stage is resumable on its own (the layer
store's manifest, the export checkpoint, analysis part files), so a rerun of
the same config simply walks the stages again and skips what is done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rasterio.transform import array_bounds

from pipeline.catalog import inspect_all
from pipeline.config import AnalysisMethod, DatasetConfig, ExportFormat, PipelineConfig
from pipeline.context import RunContext, StageNode
from pipeline.control import StopRequested
from pipeline.events import SourceEvent
from pipeline.grid import TargetGrid, place
from pipeline.source import SourceInfo

if TYPE_CHECKING:
    from pipeline.store import LayerStore

log = logging.getLogger("geod.runner")

#: Stage names accepted by ``--stages``, in execution order. ``merge`` is the
#: same stage as ``export``: merge streams straight into the exporters.
STAGES: tuple[str, ...] = ("catalog", "resample", "export", "analysis")
STAGE_ALIASES = {"merge": "export"}
#: What each stage's done/total counts.
STAGE_UNITS = {
    "catalog": "datasets",
    "resample": "datasets",
    "export": "chunks",
    "analysis": "methods",
}
#: The module holding each stage's task functions, which the executor imports where
#: tasks run before the first task needs it (Executor.preload).
TASK_MODULES = {"resample": "pipeline.resample", "export": "pipeline.merge"}
#: The analysis stage's task functions: GWPCA's local fits (also run by ``combined``).
GWPCA_MODULE = "pipeline.analysis.gwpca"
#: Name of the layer store inside the work directory.
STORE_NAME = "layers.zarr"


def parse_stages(text: str | None) -> list[str]:
    """``"catalog,resample"`` → ordered stage list; unknown names are a ValueError."""
    if not text:
        return list(STAGES)
    wanted = set()
    for raw in text.split(","):
        name = STAGE_ALIASES.get(raw.strip(), raw.strip())
        if name not in STAGES:
            raise ValueError(f"--stages: {raw.strip()!r} is not one of {', '.join(STAGES)}")
        wanted.add(name)
    return [stage for stage in STAGES if stage in wanted]


@dataclass
class RunState:
    """What stages hand to later stages within one worker process."""

    config: PipelineConfig
    grid: TargetGrid
    sources: list[SourceInfo] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    _store: LayerStore | None = None

    @property
    def store(self) -> LayerStore:
        """Opened on first use, so a catalog-only run (``geod check``) writes nothing."""
        if self._store is None:
            # zarr (~0.2 s to import) loads with the first store a stage opens.
            from pipeline.store import LayerStore

            work_dir = self.config.paths.work_dir
            work_dir.mkdir(parents=True, exist_ok=True)
            self._store = LayerStore(
                work_dir / STORE_NAME, self.grid, self.config.memory.min_window
            )
        return self._store


def _inspect(ctx: RunContext, state: RunState) -> None:
    """Header-only inspection of every input; each result becomes a SourceEvent."""
    state.sources = inspect_all(ctx.config)
    for source in state.sources:
        for decision in source.decisions:
            log.info(
                "%s: %s", source.dataset, decision,
                extra={"stage": "catalog", "dataset": source.dataset},
            )  # fmt: skip
        t = source.transform
        ctx.events.emit(
            SourceEvent(
                dataset=source.dataset,
                path=str(source.path),
                status="ok",
                crs=source.crs.to_string(),
                width=source.width,
                height=source.height,
                dtype=source.dtype,
                nodata=source.nodata,
                bounds=array_bounds(source.height, source.width, t),
                resolution=(abs(t.a), abs(t.e)),
                passthrough=place(state.grid, source).passthrough,
            )
        )


def _catalog(ctx: RunContext, state: RunState, node: StageNode) -> None:
    node.start(total=len(ctx.config.datasets))
    _inspect(ctx, state)
    node.finish()


def _resample(ctx: RunContext, state: RunState, node: StageNode) -> None:
    # The warp stack (and through the store, zarr) loads when this stage runs, not with
    # the worker: a catalog-only run (`geod check`) or an invalid config never needs it.
    from pipeline.resample import resample_datasets

    if not state.sources:
        _inspect(ctx, state)
    node.start(total=len(state.sources))

    def layers() -> Iterator[tuple[DatasetConfig, SourceInfo, StageNode]]:
        """Each dataset's node appears as the stage's queue reaches it (pulled lazily)."""
        for dataset, source in zip(ctx.config.datasets, state.sources, strict=True):
            yield dataset, source, node.child(dataset.name, "dataset")

    def finished(dataset: DatasetConfig, child: StageNode) -> None:
        child.finish()
        node.advance()

    resample_datasets(ctx, layers(), state.grid, state.store, finished)
    ctx.governor.clear_ceiling()  # the datasets' window caps do not bind the merge
    node.finish()


def _export_formats(ctx: RunContext, formats: Sequence[ExportFormat] | None) -> list[ExportFormat]:
    return list(formats) if formats else list(ctx.config.export.formats)


def _parquet_output(ctx: RunContext) -> Path:
    return ctx.config.paths.output_dir / f"{ctx.config.export.name}.parquet"


def _task_modules(config: PipelineConfig, stages: Sequence[str]) -> list[str]:
    """The modules whose functions this run's stages hand to the executor as tasks."""
    modules = [TASK_MODULES[stage] for stage in stages if stage in TASK_MODULES]
    fits = {AnalysisMethod.gwpca, AnalysisMethod.combined} & set(config.analysis.methods)
    if "analysis" in stages and fits:
        modules.append(GWPCA_MODULE)
    return modules


def run_pipeline(
    ctx: RunContext,
    stages: Sequence[str] = STAGES,
    formats: Sequence[ExportFormat] | None = None,
    database_url: str | None = None,
) -> list[Path]:
    """Run ``stages`` in order; returns the output files written.

    Each stage after catalog imports its modules when it runs: resample brings the
    warp stack and zarr, export and analysis their libraries (pyarrow, h5py,
    scikit-learn…), so a catalog+resample run's memory holds none of the latter.
    """
    config = ctx.config
    ctx.executor.preload(_task_modules(config, stages))
    grid = TargetGrid.from_config(config.grid)
    state = RunState(config, grid)
    root = ctx.root()
    root.start(total=len(stages))

    def export(node: StageNode) -> None:
        from pipeline.export import run_merge_export

        state.outputs += run_merge_export(
            ctx, state.store, grid, node, _export_formats(ctx, formats), database_url
        )

    def analysis(node: StageNode) -> None:
        if not config.analysis.methods:
            node.finish("skipped")
            return
        from pipeline.analysis import run_analysis

        state.outputs += run_analysis(
            ctx, _parquet_output(ctx), grid, config.paths.output_dir, node
        )

    runners: dict[str, Callable[[StageNode], None]] = {
        "catalog": lambda node: _catalog(ctx, state, node),
        "resample": lambda node: _resample(ctx, state, node),
        "export": export,
        "analysis": analysis,
    }
    for name in stages:
        node = ctx.stage(name, unit=STAGE_UNITS[name])
        log.info("stage %s started", name, extra={"stage": name})
        try:
            runners[name](node)
        except StopRequested:
            node.finish("paused")
            raise
        except Exception as exc:
            node.fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise
        if node.status == "running":
            node.finish()
        root.advance()
    root.finish()
    return state.outputs
