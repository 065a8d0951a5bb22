"""The dashboard's link to the daemon: attach, stream, and come back after the daemon goes away.

One long-lived task (started by the app) loops: connect → ``hello`` →
``status`` → ``subscribe`` (snapshot) → back-fill logs and memory for the runs
on screen → apply notifications until the socket closes. When the daemon is
gone it marks the state ``lost`` (the app shows a banner and keeps the last
picture) and retries with exponential backoff. Each reconnect is a full resync:
the snapshot replaces runs and stage trees, and log lines missed while away are
fetched with ``logs.tail`` — the state's per-run ``seq`` dedupe makes the overlap
harmless, so no line ever shows twice.

Only :mod:`supervisor.client` and :mod:`supervisor.protocol` are used to talk
to the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from supervisor.client import AsyncClient, Call, Calls, DaemonNotRunning
from supervisor.protocol import ProtocolError
from supervisor.run_map import from_reply
from tui.state import DashboardState

T = TypeVar("T")

#: Log lines fetched per ``logs.tail`` page (attach, scroll-back, resync gap).
LOG_PAGE = 500


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: ``first`` doubling up to ``ceiling`` seconds (systemd RestartSec-like)."""

    first: float = 0.25
    ceiling: float = 5.0
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        return min(self.ceiling, self.first * self.factor ** max(0, attempt - 1))


#: Exceptions that mean "the daemon is not there (any more)": retry later.
_GONE = (DaemonNotRunning, ConnectionError, OSError, EOFError, asyncio.IncompleteReadError)


class NotConnected(RuntimeError):
    """An action was asked for while the daemon is unreachable."""


class DaemonLink:
    """Keeps a :class:`DashboardState` in sync with the daemon at ``socket_path``."""

    def __init__(
        self,
        state: DashboardState,
        socket_path: Path | None,
        *,
        backoff: Backoff | None = None,
        wanted_runs: Callable[[], list[str]] | None = None,
    ) -> None:
        self.state = state
        self.socket_path = socket_path
        self.backoff = backoff or Backoff()
        # Which runs deserve a log/memory back-fill on (re)attach: the one on screen.
        self._wanted_runs = wanted_runs or (lambda: [])
        self._client: AsyncClient | None = None
        state.connection.socket = str(socket_path) if socket_path else ""

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def run(self) -> None:
        """Attach and stay attached until cancelled."""
        attempt = 0
        while True:
            try:
                await self._session()
                attempt = 0
            except (*_GONE, ProtocolError) as exc:
                # ProtocolError: e.g. a daemon of another protocol version; it may be
                # restarted after an upgrade, so keep trying like for an absent one.
                self.state.connection.error = str(exc) or type(exc).__name__
            finally:
                await self._drop()
            attempt += 1
            delay = self.backoff.delay(attempt)
            info = self.state.connection
            info.state, info.retry_in, info.attempts = "lost", delay, attempt
            self.state.touch_connection()
            await asyncio.sleep(delay)
            info.state = "connecting"
            self.state.touch_connection()

    async def request(self, call: Call[T]) -> T:
        """One typed request (built by :class:`~supervisor.client.Calls`); raises
        :class:`NotConnected` while the daemon is away."""
        client = self._client
        if client is None:
            raise NotConnected("not connected to the daemon")
        try:
            return await client.request(call)
        except _GONE as exc:
            raise NotConnected(str(exc) or "connection lost") from exc

    async def load_run(self, run_id: str) -> None:
        """Back-fill one run's newest logs, its memory history and its map, once per attach.

        After a reconnect the newest page overlaps what we already hold; seq dedupe
        keeps only the lines emitted while we were away. The map comes whole from
        the run's history, so windows written before we attached are on it too.
        """
        view = self.state.runs.get(run_id)
        if view is None or self._client is None or view.logs_loaded:
            return
        await self.fetch_logs(run_id, None)
        history = await self.request(Calls.memory(run_id))
        self.state.merge_memory(run_id, history.samples)
        if view.map_held is not None:
            return  # another load of this run is fetching its map right now
        self.state.hold_windows(run_id)
        try:
            reply = await self.request(Calls.run_map(run_id))
        except BaseException:
            self.state.hold_windows(run_id, holding=False)
            raise
        self.state.merge_map(run_id, from_reply(reply))

    async def fetch_logs(self, run_id: str, before_seq: int | None) -> int:
        """One page of log lines older than ``before_seq`` (None = newest); returns lines added."""
        records = await self.request(Calls.logs(run_id, LOG_PAGE, before_seq))
        return self.state.merge_logs(run_id, records)

    # -- internals ------------------------------------------------------------------

    async def _session(self) -> None:
        client = await AsyncClient.connect(socket_path=self.socket_path)
        self._client = client
        status = await client.status()
        info = self.state.connection
        info.daemon_version, info.daemon_started = status.version, status.started
        info.concurrency = status.concurrency
        self.state.apply_snapshot(await client.subscribe())
        # Every run may have missed lines while we were away: each is back-filled
        # when it is next shown (the one on screen right now, below).
        for view in self.state.runs.values():
            view.logs_loaded = False
        info.state, info.error, info.retry_in, info.attempts = "connected", None, None, 0
        self.state.touch_connection()
        for run_id in self._wanted_runs():
            with contextlib.suppress(ProtocolError):  # e.g. the run was removed meanwhile
                await self.load_run(run_id)
        async for update in client.updates():
            self.state.apply_update(update)

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
