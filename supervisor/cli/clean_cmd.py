"""``geod clean``: remove finished runs' layer stores and work files, say what it frees.

Outputs, the run's history (``geod logs``, ``geod report``) and telemetry stay;
runs that may still need their work files (queued, running, paused,
interrupted) are refused with exit 5, as every verb refuses a run in the wrong
state. ``retention:`` in geod.yml makes the daemon do the same daily.
"""

from __future__ import annotations

from pathlib import Path

import click

from supervisor import formatting
from supervisor.cli import render
from supervisor.cli.connection import connect, fail, json_option, socket_option
from supervisor.cli.main import EXIT_USAGE
from supervisor.protocol import CleanParams
from supervisor.settings import parse_duration


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.argument("runs", nargs=-1, metavar="[RUN]...")
@click.option("--done", is_flag=True, help="Every run that ended done.")
@click.option(
    "--older-than",
    callback=_duration,
    metavar="AGE",
    help="Every finished run (done, failed, killed) that ended longer ago than AGE (7d, 12h).",
)
@click.option("--dry-run", is_flag=True, help="Say what would be freed; remove nothing.")
@json_option
@socket_option
def clean(
    runs: tuple[str, ...],
    done: bool,
    older_than: float | None,
    dry_run: bool,
    as_json: bool,
    socket_path: Path | None,
) -> None:
    """Remove the layer stores and work files of finished runs; outputs and history stay."""
    if not runs and not done and older_than is None:
        fail("say which runs: RUN ..., --done or --older-than AGE", EXIT_USAGE)
    params = CleanParams(runs=list(runs), done=done, older_than=older_than, dry_run=dry_run)
    with connect(socket_path) as client:
        cleaned = client.clean(params)
    if as_json:
        render.print_json([item.model_dump(mode="json") for item in cleaned])
        return
    verb = "would free" if dry_run else "freed"
    for item in cleaned:
        where = ", ".join(item.paths) or "nothing left to clean"
        click.echo(f"{item.run}\t{verb} {formatting.size(item.freed)}\t{where}")
    total = sum(item.freed for item in cleaned)
    click.echo(f"{len(cleaned)} run(s): {verb} {formatting.size(total)}")
