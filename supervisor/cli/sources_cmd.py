"""``geod sources``: the rasters the daemon's watched folders have taken, failed or lost."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from supervisor import formatting
from supervisor.cli import render
from supervisor.cli.connection import connect, json_option, socket_option
from supervisor.protocol import WatchedSource


def sources_table(sources: list[WatchedSource]) -> Table:
    """One row per file: rule, dataset name, status, size, grid facts, when, run or error."""
    table = Table(box=None, pad_edge=False)
    for column in ("Rule", "Dataset", "Status", "Size", "Raster", "Taken", "Run / error", "Path"):
        table.add_column(column)
    for source in sources:
        raster = (
            f"{source.width}×{source.height} {source.dtype} {source.crs}"
            if source.width is not None
            else ""
        )
        size = "" if source.size is None else formatting.size(source.size)
        table.add_row(
            source.rule,
            source.dataset,
            source.status if source.change != "replaced" else f"{source.status} (replaced)",
            size,
            raster,
            render.human_time(source.taken),
            source.error or source.run or "",
            source.path,
        )
    return table


@click.command()
@click.option("--rule", help="Only this watch rule's files.")
@json_option
@socket_option
def sources(rule: str | None, as_json: bool, socket_path: Path | None) -> None:
    """Files of the watched folders (geod.yml watch:): taken, unusable, or gone."""
    with connect(socket_path) as client:
        found = client.sources(rule)
    if as_json:
        render.print_json([source.model_dump(mode="json") for source in found])
    elif found:
        render.stdout_console().print(sources_table(found))
    else:
        click.echo("no watched sources")
