"""Watching runs from the CLI: ``geod logs -f``, ``geod start --wait`` and ``geod wait``.

Both subscribe *before* taking their snapshot (the log tail, the run's state),
so nothing that happens in between is missed; events already in the snapshot
are recognised by their per-run sequence number and not printed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from pipeline.contract import FINAL_STATES, level_rank
from pipeline.events import LogEvent
from supervisor.cli.connection import daemon_errors
from supervisor.cli.main import EXIT_INTERRUPTED
from supervisor.protocol import RunSummary

#: Exit status after Ctrl-C, as shells expect (128 + SIGINT).


def at_least(level: str | None, threshold: str | None) -> bool:
    """Is a record at ``level`` shown under a ``--level threshold`` filter?"""
    if threshold is None:
        return True
    return level_rank(level) >= level_rank(threshold)


def follow_logs(
    socket_path: Path,
    run: str,
    *,
    limit: int,
    level: str | None,
    follow: bool,
    emit: Callable[[LogEvent], None],
) -> RunSummary:
    """Print the last ``limit`` records of ``run``, then (``follow``) new ones until it ends.

    Returns the run's last known summary.
    """
    with daemon_errors(socket_path), _interruptible(""):
        return asyncio.run(_logs(socket_path, run, limit, level, follow, emit))


def wait_for_final_state(socket_path: Path, run: str) -> RunSummary:
    """Block until ``run`` is done, failed or killed; its final summary."""
    (summary,) = wait_for_runs(socket_path, [run], None, lambda _summary: None)
    return summary


def wait_for_runs(
    socket_path: Path,
    runs: list[str] | None,
    timeout: float | None,
    emit: Callable[[RunSummary], None],
) -> list[RunSummary]:
    """Block until every run of ``runs`` (None: every run not final now) is final.

    ``emit`` is called once per run as it ends. Returns the runs' last summaries,
    final or not: after ``timeout`` seconds the caller sees which still go on.
    """
    what = "runs go on" if runs is None or len(runs) > 1 else f"{runs[0]} goes on"
    with daemon_errors(socket_path), _interruptible(f"stopped waiting; {what}"):
        return asyncio.run(_wait(socket_path, runs, timeout, emit))


async def _wait(
    socket_path: Path,
    runs: list[str] | None,
    timeout: float | None,
    emit: Callable[[RunSummary], None],
) -> list[RunSummary]:
    from supervisor.client import AsyncClient, DaemonNotRunning

    async with await AsyncClient.connect(socket_path) as client:
        # Subscribe first, then read the states: no change falls in between.
        snapshot = await client.subscribe(runs=runs, events=False)
        latest = {
            summary.id: summary
            for summary in snapshot.runs
            if runs is not None or summary.state not in FINAL_STATES
        }
        going = set(latest)
        for summary in latest.values():
            if summary.state in FINAL_STATES:
                going.discard(summary.id)
                emit(summary)

        async def watch() -> None:
            async for update in client.updates():
                if isinstance(update, RunSummary) and update.id in going:
                    latest[update.id] = update
                    if update.state in FINAL_STATES:
                        going.discard(update.id)
                        emit(update)
                        if not going:
                            return
            raise DaemonNotRunning(socket_path, "the daemon closed the connection")

        if going:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watch(), timeout)
        order = runs if runs is not None else sorted(latest, key=lambda run: (len(run), run))
        return [latest[run] for run in order]


@contextmanager
def _interruptible(message: str) -> Iterator[None]:
    """Ctrl-C ends the watching, not the run: exit 130 (128 + SIGINT) without a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        if message:
            click.echo(f"\ngeod: {message}", err=True)
        sys.exit(EXIT_INTERRUPTED)


async def _logs(
    socket_path: Path,
    run: str,
    limit: int,
    level: str | None,
    follow: bool,
    emit: Callable[[LogEvent], None],
) -> RunSummary:
    from supervisor.client import AsyncClient, DaemonNotRunning

    async with await AsyncClient.connect(socket_path) as client:
        if follow:
            await client.subscribe(runs=[run], events=True)
        summary = await client.run(run)
        last_seq = 0
        if limit:
            for record in await client.logs(run, limit, level=level):
                emit(record)
                last_seq = max(last_seq, record.seq or 0)
        if not follow or summary.state in FINAL_STATES:
            return summary
        async for update in client.updates():
            if isinstance(update, RunSummary):
                if update.id == run:
                    summary = update
                    if summary.state in FINAL_STATES:
                        return summary
            elif isinstance(update, LogEvent) and update.run == run:
                seq = update.seq or 0
                if seq > last_seq and at_least(update.level, level):
                    last_seq = seq
                    emit(update)
        raise DaemonNotRunning(socket_path, "the daemon closed the connection")
