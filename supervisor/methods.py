"""The JSON-RPC methods: thin adapters from ``protocol`` params to the Scheduler.

One function per entry of ``protocol.METHODS``; results are plain JSON-able
values (summaries as dicts) so the server only frames them.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipeline.contract import LOG_LEVELS
from pipeline.events import Event
from supervisor import protocol
from supervisor.cleanup import Cleaner
from supervisor.peercred import worker_identity
from supervisor.protocol import ErrorCode, ProtocolError
from supervisor.run_map import RunMap, to_reply
from supervisor.scheduler import Scheduler
from supervisor.socket_server import Connection
from supervisor.watcher import Watcher


def _version() -> str:
    try:
        return metadata.version("geod")
    except metadata.PackageNotFoundError:
        return "unknown"


def _dump(summaries: list[protocol.RunSummary]) -> list[dict[str, Any]]:
    return [s.model_dump(mode="json") for s in summaries]


def _events(events: Iterable[Event]) -> list[dict[str, Any]]:
    """Events on the wire exactly as in the history file (``None`` fields left out)."""
    return [event.model_dump(mode="json", exclude_none=True) for event in events]


class Methods:
    """Dispatch table bound to one daemon's supervisor."""

    def __init__(
        self,
        scheduler: Scheduler,
        request_stop: Callable[[], None],
        cleaner: Cleaner,
        watcher: Watcher | None = None,
        settings_status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.request_stop = request_stop
        self.cleaner = cleaner
        self.watcher = watcher
        self.settings_status = settings_status
        self.started = time.time()
        self.version = _version()
        self._table: dict[str, Callable[[Connection, Any], Awaitable[Any]]] = {
            "hello": self.hello,
            "status": self.status,
            "runs.list": self.runs_list,
            "runs.get": self.runs_get,
            "runs.submit": self.runs_submit,
            "runs.pause": self.runs_pause,
            "runs.resume": self.runs_resume,
            "runs.kill": self.runs_kill,
            "runs.retry": self.runs_retry,
            "runs.priority": self.runs_priority,
            "queue.parallel": self.queue_parallel,
            "runs.clean": self.runs_clean,
            "logs.tail": self.logs_tail,
            "memory.history": self.memory_history,
            "runs.map": self.runs_map,
            "sources.list": self.sources_list,
            "subscribe": self.subscribe,
            "unsubscribe": self.unsubscribe,
            "daemon.stop": self.daemon_stop,
        }
        missing = set(protocol.METHODS) ^ set(self._table)
        if missing:
            raise RuntimeError(f"methods and protocol.METHODS disagree on {sorted(missing)}")

    async def __call__(self, conn: Connection, method: str, params: BaseModel) -> Any:
        return await self._table[method](conn, params)

    async def hello(self, conn: Connection, params: protocol.HelloParams) -> dict[str, Any]:
        if params.protocol != protocol.PROTOCOL_VERSION:
            raise ProtocolError(
                ErrorCode.VERSION_MISMATCH,
                f"client speaks protocol {params.protocol}, daemon {protocol.PROTOCOL_VERSION}",
            )
        return {
            "protocol": protocol.PROTOCOL_VERSION,
            "server": "geod",
            "version": self.version,
            "pid": os.getpid(),
            "started": self.started,
        }

    async def status(self, conn: Connection, params: protocol.EmptyParams) -> dict[str, Any]:
        settings = self.scheduler.settings
        return {
            "version": self.version,
            "pid": os.getpid(),
            "started": self.started,
            "uptime": time.time() - self.started,
            "state_dir": str(settings.state_dir),
            "socket": str(settings.socket_path),
            "concurrency": self.scheduler.concurrency,
            "settings_concurrency": settings.concurrency,
            "counts": self.scheduler.counts(),
            "runs": len(self.scheduler.runs()),
            "stopping": self.scheduler.shutting_down,
            "host_memory": self.scheduler.broker.status(
                self.scheduler.get(run_id) for run_id in self.scheduler.workers
            ),
            **(self.settings_status() if self.settings_status is not None else {}),
        }

    async def runs_list(self, conn: Connection, params: protocol.EmptyParams) -> list[Any]:
        return _dump([run.summary for run in self.scheduler.runs()])

    async def runs_get(self, conn: Connection, params: protocol.RunParams) -> dict[str, Any]:
        return self.scheduler.get(params.run).summary.model_dump(mode="json")

    async def runs_submit(self, conn: Connection, params: protocol.SubmitParams) -> dict[str, Any]:
        if not Path(params.config_path).is_absolute():
            raise ProtocolError(
                ErrorCode.INVALID_PARAMS,
                f"config_path must be absolute (the daemon has its own cwd): {params.config_path}",
            )
        owner = worker_identity(conn.peer)
        summary = await self.scheduler.submit(params, owner)
        return summary.model_dump(mode="json")

    async def runs_pause(self, conn: Connection, params: protocol.Selection) -> list[Any]:
        return _dump(self.scheduler.pause(params))

    async def runs_resume(self, conn: Connection, params: protocol.Selection) -> list[Any]:
        return _dump(self.scheduler.resume(params))

    async def runs_kill(self, conn: Connection, params: protocol.KillParams) -> list[Any]:
        selection = protocol.Selection(run=params.run, all=params.all)
        return _dump(self.scheduler.kill(selection, params.force))

    async def runs_retry(self, conn: Connection, params: protocol.RunParams) -> dict[str, Any]:
        return self.scheduler.retry(params.run).model_dump(mode="json")

    async def runs_priority(
        self, conn: Connection, params: protocol.PriorityParams
    ) -> dict[str, Any]:
        return self.scheduler.set_priority(params.run, params.priority).model_dump(mode="json")

    async def queue_parallel(
        self, conn: Connection, params: protocol.ParallelParams
    ) -> dict[str, Any]:
        return self.scheduler.set_concurrency(params.concurrency).model_dump(mode="json")

    async def runs_clean(self, conn: Connection, params: protocol.CleanParams) -> list[Any]:
        cleaned = await self.cleaner.clean(params)
        return [item.model_dump(mode="json") for item in cleaned]

    async def logs_tail(self, conn: Connection, params: protocol.LogsTailParams) -> list[Any]:
        if params.level is not None and params.level.upper() not in LOG_LEVELS:
            raise ProtocolError(
                ErrorCode.INVALID_PARAMS,
                f"level: {params.level!r} is not one of {', '.join(LOG_LEVELS)}",
            )
        run = self.scheduler.get(params.run)
        return _events(run.logs(params.limit, params.before_seq, params.level))

    async def memory_history(
        self, conn: Connection, params: protocol.MemoryHistoryParams
    ) -> dict[str, Any]:
        run = self.scheduler.get(params.run)
        since = params.since
        held = heapq.merge(run.memory, run.worker_memory, key=lambda sample: sample.time)
        samples = [s for s in held if since is None or s.time >= since]
        return {"run": run.id, "samples": _events(samples)}  # a protocol.MemoryHistory

    async def runs_map(self, conn: Connection, params: protocol.RunParams) -> dict[str, Any]:
        """The run's windows from its whole history (read off the loop), then its
        stages now (which datasets are running)."""
        run = self.scheduler.get(params.run)
        windows = await asyncio.to_thread(run.read_history, ("checkpoint",))
        run_map = RunMap().feed(windows).feed(list(run.stages.values()))
        return to_reply(run.id, run_map).model_dump(mode="json")

    async def sources_list(self, conn: Connection, params: protocol.SourcesParams) -> list[Any]:
        """Files of the watched folders (a ``protocol.WatchedSource`` each)."""
        if self.watcher is None:
            return []
        return [f.model_dump(mode="json") for f in self.watcher.sources(params.rule)]

    async def subscribe(self, conn: Connection, params: protocol.SubscribeParams) -> dict[str, Any]:
        """Snapshot and subscription in one step with no await between: no gap, no duplicate."""
        runs = self.scheduler.runs()
        if params.runs is not None:
            runs = [self.scheduler.get(run_id) for run_id in params.runs]
        conn.subscribed = True
        conn.subscribed_runs = None if params.runs is None else set(params.runs)
        conn.subscribed_events = params.events
        transitions = sorted(
            (event for run in runs for event in run.transitions), key=lambda event: event.time
        )
        return {  # a protocol.Snapshot: summaries whole, events as the worker wrote them
            "runs": _dump([run.summary for run in runs]),
            "stages": {run.id: _events(run.stages.values()) for run in runs},
            "last_seq": {run.id: run.summary.last_seq for run in runs},
            "transitions": _events(transitions[-protocol.SNAPSHOT_TRANSITIONS :]),
        }

    async def unsubscribe(self, conn: Connection, params: protocol.EmptyParams) -> dict[str, Any]:
        if not conn.subscribed:
            raise ProtocolError(ErrorCode.NOT_SUBSCRIBED, "this connection is not subscribed")
        conn.subscribed = False
        return {"subscribed": False}

    async def daemon_stop(self, conn: Connection, params: protocol.EmptyParams) -> dict[str, Any]:
        self.request_stop()
        return {"stopping": True}
