"""``geod map RUN``: where a run is, as a map of its windows per dataset (the TUI's Map panel)."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from supervisor.cli import render
from supervisor.cli.connection import connect, fail, socket_option

#: Rows a map may take when stdout is not a terminal (its width decides otherwise).
FALLBACK_ROWS = 20


@click.command(name="map")
@click.argument("run")
@click.option("--dataset", help="Only this dataset (default: every one, in order).")
@click.option("--width", type=int, default=None, help="Columns (default: the terminal's).")
@socket_option
def map_command(run: str, dataset: str | None, width: int | None, socket_path: Path | None) -> None:
    """Draw RUN's resample windows as a map: done, running, pending, recomputed.

    The daemon builds the map from the run's whole history (``runs.map``), as it
    does for the dashboard's Map panel: the same picture in both.
    """
    # The map model paints with numpy: imported here so that no other verb pays for it.
    from supervisor.client import Calls
    from supervisor.run_map import from_reply, legend
    from supervisor.run_map import render as draw

    with connect(socket_path) as client:
        run_map = from_reply(client.request(Calls.run_map(run)))
    names = [dataset] if dataset else list(run_map.datasets)
    if dataset and dataset not in run_map.datasets:
        known = ", ".join(run_map.datasets) or "none yet"
        fail(f"run {run}: no windows of dataset {dataset!r} (datasets with windows: {known})")
    console = render.stdout_console()
    if not names:
        console.print(f"run {run}: no windows written yet")
        return
    size = shutil.get_terminal_size((80, FALLBACK_ROWS * 2))
    columns = width or size.columns
    for name in names:
        console.print(f"[bold]{run} · {name}[/]")
        for line in draw(run_map.datasets[name], columns, size.lines):
            console.print(line, crop=True, no_wrap=True)
        console.print(legend(run_map.datasets[name]))
