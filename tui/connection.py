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
from typing import Any

from supervisor.client import AsyncClient, DaemonNotRunning
from supervisor.protocol import NOTIFY_EVENT, NOTIFY_RUN, ProtocolError
from tui.state import DashboardState

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

    async def call(self, method: str, **params: Any) -> Any:
        """One request; raises :class:`NotConnected` while the daemon is away."""
        client = self._client
        if client is None:
            raise NotConnected("not connected to the daemon")
        try:
            return await client.call(method, **params)
        except _GONE as exc:
            raise NotConnected(str(exc) or "connection lost") from exc

    async def load_run(self, run_id: str) -> None:
        """Back-fill one run's newest logs and its memory history, once per attach.

        After a reconnect the newest page overlaps what we already hold; seq dedupe
        keeps only the lines emitted while we were away.
        """
        view = self.state.runs.get(run_id)
        if view is None or self._client is None or view.logs_loaded:
            return
        await self.fetch_logs(run_id, None)
        history = await self.call("memory.history", run=run_id)
        self.state.merge_memory(run_id, history["samples"])

    async def fetch_logs(self, run_id: str, before_seq: int | None) -> int:
        """One page of log lines older than ``before_seq`` (None = newest); returns lines added."""
        params: dict[str, Any] = {"run": run_id, "limit": LOG_PAGE}
        if before_seq is not None:
            params["before_seq"] = before_seq
        records = await self.call("logs.tail", **params)
        return self.state.merge_logs(run_id, records)

    # -- internals ------------------------------------------------------------------

    async def _session(self) -> None:
        client = await AsyncClient.connect(socket_path=self.socket_path)
        self._client = client
        status = await client.call("status")
        info = self.state.connection
        info.daemon_version, info.daemon_started = status["version"], status["started"]
        snapshot = await client.call("subscribe", runs=None)
        self.state.apply_snapshot(snapshot)
        # Every run may have missed lines while we were away: each is back-filled
        # when it is next shown (the one on screen right now, below).
        for view in self.state.runs.values():
            view.logs_loaded = False
        info.state, info.error, info.retry_in, info.attempts = "connected", None, None, 0
        self.state.touch_connection()
        for run_id in self._wanted_runs():
            with contextlib.suppress(ProtocolError):  # e.g. the run was removed meanwhile
                await self.load_run(run_id)
        async for method, params in client.notifications():
            if method == NOTIFY_EVENT:
                self.state.apply_event_dict(params)
            elif method == NOTIFY_RUN:
                self.state.apply_run(params)

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
