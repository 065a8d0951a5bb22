"""Verbs about runs: ``status``, ``runs``, ``pause``, ``resume``, ``kill``, ``retry``, ``logs``,
``attach``.

Each is a thin request to the daemon: rendering lives in ``render``, the socket,
errors and ``RUN|--all`` in ``connection``, so all verbs look and fail alike.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pipeline.contract import LOG_LEVELS
from pipeline.events import LogEvent, encode
from supervisor.cli import render
from supervisor.cli.connection import (
    connect,
    fail,
    json_option,
    resolve_socket,
    run_selection,
    socket_option,
)
from supervisor.cli.follow import follow_logs
from supervisor.cli.main import EXIT_FAILED
from supervisor.protocol import RunSummary, Selection

if TYPE_CHECKING:
    from supervisor.client import Client

#: ``geod logs`` without ``-n``: one screen of context, like ``tail``'s spirit.
DEFAULT_LOG_LINES = 50
#: The dashboard's entry point; ``geod attach`` hands over to it.
TUI_COMMAND = "geo-tui"


@click.command()
@click.argument("run", required=False)
@json_option
@socket_option
def status(run: str | None, as_json: bool, socket_path: Path | None) -> None:
    """The daemon and its runs, or one RUN in detail (stage tree, outputs, peak RSS)."""
    if run is not None:
        summary = _run_with_stages(socket_path, run)
        if as_json:
            render.print_json(summary.model_dump(mode="json"))
        else:
            render.stdout_console().print(render.run_detail(summary))
        return
    with connect(socket_path) as client:
        daemon = client.status()
        runs = client.runs()
    if as_json:
        render.print_json(
            {
                "daemon": daemon.model_dump(mode="json"),
                "runs": [r.model_dump(mode="json") for r in runs],
            }
        )
        return
    console = render.stdout_console()
    console.print(render.daemon_summary(daemon))
    console.print()
    console.print(render.runs_table(runs) if runs else "no runs")


def _run_with_stages(socket_path: Path | None, run: str) -> RunSummary:
    """The run's summary plus its stage tree (``stages``), one consistent snapshot.

    The stage tree is part of the ``subscribe`` snapshot (that is how the TUI gets
    it); subscribing to just this run without events and closing right away is
    the cheapest way to read it, and the summary comes from the same instant.
    """
    with connect(socket_path) as client:
        snapshot = client.subscribe(runs=[run], events=False)
    (summary,) = snapshot.runs
    stages = [stage.model_dump(mode="json") for stage in snapshot.stages.get(run, [])]
    return summary.model_copy(update={"stages": stages})


@click.command()
@json_option
@socket_option
def runs(as_json: bool, socket_path: Path | None) -> None:
    """List every run the daemon knows (queued, running, and finished ones)."""
    with connect(socket_path) as client:
        summaries = client.runs()
    if as_json:
        render.print_json([run.model_dump(mode="json") for run in summaries])
    elif summaries:
        render.stdout_console().print(render.runs_table(summaries))
    else:
        click.echo("no runs")


def _control(
    verb: str, socket_path: Path | None, send: Callable[[Client], list[RunSummary]]
) -> None:
    """Send one control request; one ``ID<TAB>VERB requested<TAB>STATE`` line per affected run.

    The state is the run's state when the daemon accepted the request: a pause is
    only acknowledged at the worker's next window boundary (watch ``geod status``).
    """
    with connect(socket_path) as client:
        affected = send(client)
    if not affected:
        click.echo(f"geod: no run to {verb}", err=True)
    for summary in affected:
        click.echo(f"{summary.id}\t{verb} requested\t{render.state_text(summary).plain}")


@click.command()
@run_selection()
@socket_option
def pause(selection: Selection, socket_path: Path | None) -> None:
    """Pause RUN (or --all) at the next window boundary, with a checkpoint.

    A worker that does not acknowledge within the daemon's pause grace is frozen
    with SIGSTOP instead and shows as "paused (hard)".
    """
    _control("pause", socket_path, lambda client: client.pause(selection))


@click.command()
@run_selection()
@socket_option
def resume(selection: Selection, socket_path: Path | None) -> None:
    """Resume paused RUN (or --all)."""
    _control("resume", socket_path, lambda client: client.resume(selection))


@click.command()
@run_selection()
@click.option("--force", is_flag=True, help="SIGKILL the whole process group now, no checkpoint.")
@socket_option
def kill(selection: Selection, force: bool, socket_path: Path | None) -> None:
    """Stop RUN (or --all): SIGTERM (checkpoint at the window boundary), SIGKILL after grace."""
    _control("kill", socket_path, lambda client: client.kill(selection, force))


@click.command()
@run_selection(allow_all=False)
@socket_option
def retry(selection: Selection, socket_path: Path | None) -> None:
    """Run a failed, killed or interrupted RUN again from its last checkpoint."""
    assert selection.run is not None  # run_selection(allow_all=False) requires RUN
    run_id = selection.run
    _control("retry", socket_path, lambda client: [client.retry(run_id)])


@click.command()
@click.argument("run")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new records as they arrive.")
@click.option(
    "--level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    help="Only records at this level or above.",
)
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(min=1),
    default=DEFAULT_LOG_LINES,
    show_default=True,
    help="How many of the latest records to print first.",
)
@json_option
@socket_option
def logs(
    run: str,
    follow: bool,
    level: str | None,
    lines: int,
    as_json: bool,
    socket_path: Path | None,
) -> None:
    """Print RUN's latest log records; with -f keep following until the run ends.

    --json prints one JSON record per line (NDJSON), also while following.
    """
    console = render.stdout_console()
    follow_logs(
        resolve_socket(socket_path),
        run,
        limit=lines,
        level=level.upper() if level else None,
        follow=follow,
        emit=lambda record: _print_record(console, record, as_json),
    )


def _print_record(console: Any, record: LogEvent, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(encode(record) + "\n")
        sys.stdout.flush()
    else:
        console.print(render.log_line(record))


@click.command()
@click.argument("run", required=False)
@socket_option
def attach(run: str | None, socket_path: Path | None) -> None:
    """Open the dashboard ('geo-tui attach') on every run, or on RUN."""
    # Prefer the geo-tui installed with this geod (same environment's scripts), then PATH.
    sibling = Path(sysconfig.get_path("scripts")) / TUI_COMMAND
    program = str(sibling) if sibling.exists() else shutil.which(TUI_COMMAND)
    if program is None:
        fail(f"{TUI_COMMAND} not found next to geod or on PATH", EXIT_FAILED)
    argv = [TUI_COMMAND, "attach"]
    if socket_path is not None:
        argv += ["--socket", str(socket_path)]
    if run is not None:
        argv.append(run)
    os.execv(program, argv)
