"""``geo-tui`` entry point: ``geo-tui attach [--socket PATH] [RUN]``."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.contract import SOCKET_ENV
from supervisor.client import resolve_socket_path


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="geod")
def cli() -> None:
    """geo-tui: a live dashboard for the geod daemon."""


@cli.command()
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Daemon socket (default: ${SOCKET_ENV}, else the user daemon's socket).",
)
@click.option(
    "--bell/--no-bell",
    default=True,
    show_default=True,
    help="Ring the terminal bell when a run ends, fails or hits critical memory.",
)
@click.argument("run", required=False)
def attach(socket_path: Path | None, bell: bool, run: str | None) -> None:
    """Watch and steer runs; RUN selects one at start. q detaches, runs keep going."""
    # Imported here so `geo-tui --help` stays fast (Textual is a heavy import).
    from tui.app import GeodApp

    GeodApp(socket_path=resolve_socket_path(socket_path), run=run, bell=bell).run()


def main() -> None:
    cli()
