"""The export stage: one merge pass streamed into every configured format at once.

Resume policy: *restart export only*. A stopped or killed export leaves no
output under a final name (partial files are discarded, the Postgres
transaction rolls back) and the next run re-merges from the layer store, which
is complete and checkpointed; the expensive resampling is never redone. Per-chunk
Parquet part files would let export resume mid-way, but publishing them as one
file costs a second full write and read of the table, while re-merging from the
local store costs about the same as the write itself.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np

from pipeline.config import ConfigError, ExportFormat, PipelineConfig
from pipeline.context import RunContext, StageNode
from pipeline.contract import DATABASE_URL_ENV
from pipeline.events import OutputEvent
from pipeline.export.atomic import clean_partials
from pipeline.export.base import Exporter
from pipeline.export.csv_text import CsvExporter
from pipeline.export.parquet import ParquetExporter
from pipeline.export.postgres import PostgresExporter
from pipeline.export.validate import ExportedSampler, validate_exports
from pipeline.export.xarray_stack import NetcdfExporter, ZarrExporter
from pipeline.grid import TargetGrid
from pipeline.merge import MergeStream
from pipeline.store import LayerStore

log = logging.getLogger("geod.export")

STAGE = "export"


#: File name suffix of each file format (the format's name where not listed).
SUFFIXES = {ExportFormat.netcdf: "nc"}


def output_path(config: PipelineConfig, fmt: ExportFormat) -> Path:
    """Final path of a file format's output: ``output_dir/NAME.parquet``, ``.csv``, ``.nc``…"""
    return config.paths.output_dir / f"{config.export.name}.{SUFFIXES.get(fmt, fmt.value)}"


def resolve_database_url(config: PipelineConfig, database_url: str | None) -> str:
    """export.postgres.url, else the run's database (the worker's ``GEOD_DATABASE_URL``)."""
    url = config.export.postgres.url or database_url
    if not url:
        # A config problem (a retry cannot help), so ConfigError: one line, exit 2.
        raise ConfigError(
            "export.formats includes postgres but no database is configured: set "
            f"export.postgres.url or {DATABASE_URL_ENV}"
        )
    return url


def open_exporters(
    stream: MergeStream, formats: list[ExportFormat], database_url: str | None
) -> list[Exporter]:
    """One exporter per format; if one fails to open, those already open are aborted."""
    config = stream.config
    opened: list[Exporter] = []
    try:
        for fmt in formats:
            if fmt is ExportFormat.postgres:
                url = resolve_database_url(config, database_url)
                opened.append(PostgresExporter(url, stream.schema, config.export.postgres))
                continue
            path = output_path(config, fmt)
            for leftover in clean_partials(path):
                log.info("removed leftover %s of an earlier run", leftover, extra={"stage": STAGE})
            if fmt is ExportFormat.parquet:
                opened.append(
                    ParquetExporter(path, stream.schema, config.export.parquet, stream.grid)
                )
            elif fmt is ExportFormat.zarr:
                opened.append(ZarrExporter(path, stream))
            elif fmt is ExportFormat.netcdf:
                opened.append(NetcdfExporter(path, stream))
            else:
                opened.append(CsvExporter(path, stream.schema, config.export.csv))
    except BaseException:
        for exporter in opened:
            exporter.abort()
        raise
    return opened


def run_merge_export(
    ctx: RunContext,
    store: LayerStore,
    grid: TargetGrid,
    node: StageNode,
    formats: list[ExportFormat] | None = None,
    database_url: str | None = None,
) -> list[Path]:
    """Merge the run's layers once and write every format; returns the files published.

    The node advances once per merge unit; the controller is consulted after
    each unit (a stop discards the partial outputs, see the module docstring).
    Each published output is reported as an OutputEvent.
    """
    config = ctx.config
    formats = list(dict.fromkeys(formats or config.export.formats))
    if ExportFormat.postgres in formats:
        resolve_database_url(config, database_url)  # fail before any heavy work
    stream = MergeStream(store, grid, config)
    config.paths.output_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.export.seed)
    samples = config.export.validate_samples
    sampler = ExportedSampler(samples // 2, rng, grid)
    exporters = open_exporters(stream, formats, database_url)
    node.unit = "chunks"
    node.start(total=stream.plan.total)
    try:
        # closing(): on a stop or an error the read-ahead thread is shut down here,
        # not whenever the traceback holding the generator is released.
        with contextlib.closing(stream.chunks(ctx.governor, executor=ctx.executor)) as chunks:
            for chunk in chunks:
                for exporter in exporters:
                    exporter.write_chunk(chunk)
                sampler.observe(chunk.batch)
                if chunk.last:
                    node.advance()
                    ctx.control.checkpoint()
        for exporter in exporters:
            exporter.close()
        checked = validate_exports(exporters, stream, sampler.keys, samples, rng)
        published: list[Path] = []
        for exporter in exporters:
            detail = exporter.commit()
            detail["validated_cells"] = checked
            ctx.events.emit(
                OutputEvent(
                    kind=exporter.format.value, path=exporter.target, stage=STAGE, detail=detail
                )
            )
            log.info(
                "exported %d rows to %s", exporter.rows, exporter.target, extra={"stage": STAGE}
            )
            if exporter.format is not ExportFormat.postgres:
                published.append(Path(exporter.target))
    except BaseException:
        for exporter in exporters:
            exporter.abort()
        raise
    return published
