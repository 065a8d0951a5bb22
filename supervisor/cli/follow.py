"""Watching a run from the CLI: ``geod logs -f`` and ``geod start --wait``.

Both subscribe *before* taking their snapshot (the log tail, the run's state),
so nothing that happens in between is missed; events already in the snapshot
are recognised by their per-run sequence number and not printed twice.
"""

from __future__ import annotations

import asyncio
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
    with daemon_errors(socket_path), _interruptible(f"stopped waiting; {run} goes on"):
        return asyncio.run(_logs(socket_path, run, None, None, True, None))


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
    limit: int | None,
    level: str | None,
    follow: bool,
    emit: Callable[[LogEvent], None] | None,
) -> RunSummary:
    from supervisor.client import AsyncClient, DaemonNotRunning

    async with await AsyncClient.connect(socket_path) as client:
        if follow:
            await client.subscribe(runs=[run], events=emit is not None)
        summary = await client.run(run)
        last_seq = 0
        if emit is not None and limit is not None:
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
            elif isinstance(update, LogEvent) and emit is not None and update.run == run:
                seq = update.seq or 0
                if seq > last_seq and at_least(update.level, level):
                    last_seq = seq
                    emit(update)
        raise DaemonNotRunning(socket_path, "the daemon closed the connection")
