"""Verbs about the queue: ``priority``, ``parallel`` and ``wait``.

``priority`` and ``parallel`` are requests to the daemon like the control verbs;
``wait`` watches runs until they end, for scripts that chain work after them
(exit 0 if every run ended done, 1 otherwise, 124 when ``--timeout`` ran out,
as timeout(1) does). ``interrupted`` is not an end: the run resumes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from supervisor.cli import render
from supervisor.cli.connection import connect, json_option, resolve_socket, socket_option
from supervisor.cli.follow import wait_for_runs
from supervisor.cli.main import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT
from supervisor.protocol import FINAL_STATES, QueueSettings, RunSummary


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("run")
@click.argument("priority", type=int)
@socket_option
def priority(run: str, priority: int, socket_path: Path | None) -> None:
    """Set RUN's PRIORITY: among queued runs the higher starts first (may be negative)."""
    with connect(socket_path) as client:
        summary = client.priority(run, priority)
    click.echo(f"{summary.id}\tpriority {summary.priority}\t{render.state_text(summary).plain}")


@click.command()
@click.argument("concurrency", type=click.IntRange(min=1), required=False)
@json_option
@socket_option
def parallel(concurrency: int | None, as_json: bool, socket_path: Path | None) -> None:
    """Show or set how many runs execute at once (kept across daemon restarts).

    More slots start queued runs at once; fewer let running runs finish. A new
    ``concurrency`` in the settings file (on SIGHUP) replaces this value.
    """
    with connect(socket_path) as client:
        if concurrency is None:
            status = client.status()
            settings = QueueSettings(
                concurrency=status.concurrency,
                settings_concurrency=status.settings_concurrency or status.concurrency,
            )
        else:
            settings = client.parallel(concurrency)
    if as_json:
        render.print_json(settings.model_dump(mode="json"))
    else:
        click.echo(
            f"concurrency {settings.concurrency} (settings file: {settings.settings_concurrency})"
        )


@click.command()
@click.argument("runs", nargs=-1)
@click.option("--all", "all_runs", is_flag=True, help="Every run not yet done, failed or killed.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    help=f"Give up after this many seconds (exit {EXIT_TIMEOUT}).",
)
@json_option
@socket_option
def wait(
    runs: tuple[str, ...],
    all_runs: bool,
    timeout: float | None,
    as_json: bool,
    socket_path: Path | None,
) -> None:
    """Block until RUN... (or --all) are done, failed or killed.

    Prints ``ID<TAB>STATE`` as each run ends. Exit 0 if all ended done, 1 if any
    did not, 124 if --timeout ran out first (runs still going are listed).
    """
    if bool(runs) == all_runs:
        raise click.UsageError("give RUN ids or --all, not both" if runs else "give RUN or --all")

    def announce(summary: RunSummary) -> None:
        if not as_json:
            click.echo(f"{summary.id}\t{render.state_text(summary).plain}")

    wanted = list(dict.fromkeys(runs)) or None
    summaries = wait_for_runs(resolve_socket(socket_path), wanted, timeout, announce)
    going = [s for s in summaries if s.state not in FINAL_STATES]
    if as_json:
        render.print_json([s.model_dump(mode="json") for s in summaries])
    if going:
        still = ", ".join(f"{s.id} ({render.state_text(s).plain})" for s in going)
        click.echo(f"geod: timed out after {timeout:g} s; still going: {still}", err=True)
        sys.exit(EXIT_TIMEOUT)
    sys.exit(EXIT_OK if all(s.state == "done" for s in summaries) else EXIT_FAILED)
