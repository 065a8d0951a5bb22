"""``geod map RUN``: where a run is, as a map of its windows per dataset (the TUI's Map panel)."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from supervisor.cli import render
from supervisor.cli.connection import connect, fail, socket_option
from supervisor.cli.main import EXIT_FAILED, cli
from supervisor.run_map import RunMap, legend
from supervisor.run_map import render as draw
from supervisor.runs import EVENTS_NAME, read_events

#: Rows a map may take when stdout is not a terminal (its width decides otherwise).
FALLBACK_ROWS = 20


@cli.command(name="map")
@click.argument("run")
@click.option("--dataset", help="Only this dataset (default: every one, in order).")
@click.option("--width", type=int, default=None, help="Columns (default: the terminal's).")
@socket_option
def map_command(run: str, dataset: str | None, width: int | None, socket_path: Path | None) -> None:
    """Draw RUN's resample windows as a map: done, running, pending, recomputed."""
    with connect(socket_path) as client:
        summary = client.run(run)
    if summary.run_dir is None:
        fail(f"run {run}: the daemon reports no run directory")
    history = Path(summary.run_dir) / EVENTS_NAME
    try:
        run_map = RunMap().feed(read_events(history))
    except OSError as exc:
        fail(f"{history}: cannot read the run's events ({exc.strerror})", EXIT_FAILED)
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
