"""``geod export RUN_DIR --format parquet|csv|postgres|zarr|netcdf``: re-export a finished run.

A run directory holds the run's frozen ``config.yml`` and its ``work/`` folder
(the checkpointed layer store). Re-exporting only merges and writes: the worker
is started with ``--stages export`` so nothing is resampled again. Like every
other verb, this spawns ``python -m pipeline.worker`` and renders its events; the
supervisor never imports pipeline internals.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pipeline.config import ConfigError, ExportFormat, load_config
from pipeline.contract import DATABASE_URL_ENV
from supervisor.cli.main import EXIT_USAGE
from supervisor.cli.pipeline_cmds import run_in_foreground
from supervisor.runs import CONFIG_NAME, WORK_NAME


def parse_formats(values: tuple[str, ...]) -> list[str]:
    """``--format csv --format parquet`` or ``--format csv,parquet`` → ordered, unique."""
    choices = [f.value for f in ExportFormat]
    formats: list[str] = []
    for value in values:
        for part in value.split(","):
            name = part.strip()
            if name not in choices:
                raise click.BadParameter(
                    f"{name!r} is not one of {', '.join(choices)}", param_hint="--format"
                )
            if name not in formats:
                formats.append(name)
    return formats


@click.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--format",
    "format_values",
    multiple=True,
    metavar="parquet|csv|postgres|zarr|netcdf",
    help="Format to write; repeat or comma-separate for several (default: the config's).",
)
@click.option(
    "--database-url",
    envvar=DATABASE_URL_ENV,
    help=f"Database for --format postgres when the config names none (or ${DATABASE_URL_ENV}).",
)
def export(run_dir: Path, format_values: tuple[str, ...], database_url: str | None) -> None:
    """Re-export the merged table of a finished run in RUN_DIR (no resampling)."""
    formats = parse_formats(format_values)
    config_path = run_dir / CONFIG_NAME
    work_dir = run_dir / WORK_NAME
    for path, what in ((config_path, "file"), (work_dir, "directory")):
        exists = path.is_file() if what == "file" else path.is_dir()
        if not exists:
            click.echo(f"geod: {path}: no such {what}; is {run_dir} a run directory?", err=True)
            sys.exit(EXIT_USAGE)
    try:
        load_config(config_path)
    except ConfigError as exc:
        click.echo(f"geod: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    args = [str(config_path), "--work-dir", str(work_dir), "--stages", "export"]
    if formats:
        args += ["--formats", ",".join(formats)]
    env = {DATABASE_URL_ENV: database_url} if database_url else None
    run_in_foreground(args, "export", "run the same command again to redo it", env)
