"""geod's data path: config → catalog → grid → resample → store → merge → export → analysis.

This module is the data path's public face for code that drives it in-process
(benchmarks, tests, notebooks), so none of them wires a run's internals by
hand::

    import pipeline

    config = pipeline.load_config("config.yml")
    outputs = pipeline.run_stages(config, ["catalog", "resample", "export"])
    store = pipeline.open_store(config)          # the run's resampled layers
    stack = pipeline.open_stack("config.yml")    # them as a lazy xarray.Dataset (CF grid)
    ctx = pipeline.run_context(config)           # to call one stage function directly

The worker process (``python -m pipeline.worker``) is the same path with signal
handling and events on a descriptor. Imports happen inside the functions: the
CLI and the dashboard import ``pipeline.contract`` and ``pipeline.events``,
which must not pull rasterio, xarray and zarr in through this package.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import ExportFormat, PipelineConfig
    from pipeline.context import RunContext
    from pipeline.events import EventSink
    from pipeline.grid import TargetGrid
    from pipeline.store import LayerStore

__all__ = [
    "load_config",
    "open_stack",
    "open_store",
    "parse_config",
    "run_context",
    "run_stages",
    "target_grid",
]


def load_config(path: str | os.PathLike[str], check_files: bool = True) -> PipelineConfig:
    """Read and validate a ``config.yml`` (one-line :class:`ConfigError` on any problem)."""
    from pipeline.config import load_config as load

    return load(path, check_files)


def parse_config(data: Any, source: str = "config", base: Path | None = None) -> PipelineConfig:
    """Validate a config mapping; relative paths resolve against ``base``."""
    from pipeline.config import parse_config as parse

    return parse(data, source, base)


def target_grid(config: PipelineConfig) -> TargetGrid:
    """The run's target grid (CRS, resolution, snapped bounds)."""
    from pipeline.grid import TargetGrid

    return TargetGrid.from_config(config.grid)


def run_context(
    config: PipelineConfig, events: EventSink | None = None, initial_window: int | None = None
) -> RunContext:
    """A run's context in this process: events to ``events`` (default: nowhere), the memory
    governor starting at ``initial_window`` (default ``resampling.window_size``), and a
    controller without signal handlers (nothing but the worker owns those)."""
    from pipeline.context import RunContext
    from pipeline.control import Controller
    from pipeline.events import EventSink
    from pipeline.memory import MemoryGovernor

    sink = events if events is not None else EventSink()
    window = initial_window if initial_window is not None else config.resampling.window_size
    governor = MemoryGovernor(config.memory, sink, window)
    return RunContext(config, sink, Controller(sink), governor)


def run_stages(
    config: PipelineConfig,
    stages: Sequence[str] | None = None,
    formats: Sequence[ExportFormat] | None = None,
    database_url: str | None = None,
    events: EventSink | None = None,
) -> list[Path]:
    """Run ``stages`` (default: all, in order) like the worker does, on the config's
    executor; the outputs written."""
    from pipeline.executor import run_executor
    from pipeline.runner import STAGES, run_pipeline

    ctx = run_context(config, events)
    with run_executor(ctx):
        return run_pipeline(ctx, list(stages) if stages else STAGES, formats, database_url)


def open_store(config: PipelineConfig, grid: TargetGrid | None = None) -> LayerStore:
    """The run's layer store (``paths.work_dir/layers.zarr``), created if missing."""
    from pipeline.runner import STORE_NAME
    from pipeline.store import LayerStore

    work_dir = config.paths.work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    grid = grid if grid is not None else target_grid(config)
    return LayerStore(work_dir / STORE_NAME, grid, config.memory.min_window)


def open_stack(path: str | os.PathLike[str], work_dir: str | os.PathLike[str] | None = None) -> Any:
    """The run's merged stack as an ``xarray.Dataset`` lazily backed by its layer store.

    ``path``: the run's ``config.yml`` or a daemon run directory (see :mod:`pipeline.stack`).
    """
    from pipeline.stack import open_stack as open_lazily

    return open_lazily(Path(path), Path(work_dir) if work_dir is not None else None)
