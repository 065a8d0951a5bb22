"""Clients of the daemon's socket: a blocking one for ``geod`` verbs, an asyncio one for the TUI.

Both say ``hello`` first and refuse a daemon speaking another protocol version,
so a CLI from a newer install fails with one line instead of misreading
answers. A socket nobody answers on becomes :class:`DaemonNotRunning` (one line
naming the path), never a raw ``ConnectionRefusedError`` traceback.

The asyncio client multiplexes: one reader task routes responses to the
waiting ``call`` by id and subscription notifications to
:meth:`AsyncClient.notifications`, so a TUI can steer runs on the same
connection it watches them on.

Both have one typed method per RPC method (``client.pause(selection)``,
``client.runs()`` → ``list[RunSummary]``): this module is the only code that
names methods or reads replies, and callers get ``protocol`` reply models and
``pipeline.events`` types, never dicts. :meth:`Client.call` stays for the
protocol's own tests, which speak the wire format on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from pipeline.events import Event, LogEvent, decode_dict
from supervisor.peercred import peer_credentials, trusted_server_uids
from supervisor.protocol import (
    NOTIFY_EVENT,
    NOTIFY_RUN,
    PROTOCOL_VERSION,
    CleanedRun,
    CleanParams,
    DaemonStatus,
    EmptyParams,
    ErrorCode,
    HelloParams,
    HelloReply,
    KillParams,
    LogPage,
    LogsTailParams,
    MemoryHistory,
    MemoryHistoryParams,
    ParallelParams,
    PriorityParams,
    ProtocolError,
    QueueSettings,
    RunMapReply,
    RunParams,
    RunSummary,
    Selection,
    Snapshot,
    SourcesParams,
    SubmitParams,
    SubscribeParams,
    WatchedSource,
    request,
)

#: Largest response line accepted. Requests are capped at protocol.MAX_LINE_BYTES,
#: but answers such as ``logs.tail`` with a high limit legitimately run to megabytes.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
#: Bytes read from the socket at once by the blocking client.
_READ_CHUNK = 65536
CLIENT_NAME = "geod-client"
#: ``logs.tail`` page size when the caller does not say (the protocol's default).
DEFAULT_LOG_LIMIT = LogsTailParams.model_fields["limit"].default

T = TypeVar("T")
_SUMMARIES: TypeAdapter[list[RunSummary]] = TypeAdapter(list[RunSummary])
_LOG_PAGE: TypeAdapter[list[LogEvent]] = TypeAdapter(LogPage)
_SOURCES: TypeAdapter[list[WatchedSource]] = TypeAdapter(list[WatchedSource])
_CLEANED: TypeAdapter[list[CleanedRun]] = TypeAdapter(list[CleanedRun])


@dataclass(frozen=True)
class Call(Generic[T]):
    """One RPC: the method's name, its validated params, and how its result is read."""

    method: str
    params: dict[str, Any]
    reply: Callable[[Any], T]


def _params(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(exclude_none=True)


def _nothing(_result: Any) -> None:
    return None


class Calls:
    """The catalogue of RPCs: the one place a method name is written on the client side."""

    @staticmethod
    def hello() -> Call[HelloReply]:
        params = HelloParams(protocol=PROTOCOL_VERSION, client=CLIENT_NAME)
        return Call("hello", _params(params), _check_hello)

    @staticmethod
    def status() -> Call[DaemonStatus]:
        return Call("status", {}, DaemonStatus.model_validate)

    @staticmethod
    def runs() -> Call[list[RunSummary]]:
        return Call("runs.list", {}, _SUMMARIES.validate_python)

    @staticmethod
    def run(run_id: str) -> Call[RunSummary]:
        return Call("runs.get", _params(RunParams(run=run_id)), RunSummary.model_validate)

    @staticmethod
    def submit(config: str | SubmitParams, name: str | None = None) -> Call[RunSummary]:
        """A config path (and run name), or the whole request with its queue options."""
        params = config if isinstance(config, SubmitParams) else SubmitParams(config_path=config)
        if name is not None:
            params = params.model_copy(update={"name": name})
        return Call("runs.submit", _params(params), RunSummary.model_validate)

    @staticmethod
    def pause(selection: Selection) -> Call[list[RunSummary]]:
        return Call("runs.pause", _params(selection), _SUMMARIES.validate_python)

    @staticmethod
    def resume(selection: Selection) -> Call[list[RunSummary]]:
        return Call("runs.resume", _params(selection), _SUMMARIES.validate_python)

    @staticmethod
    def kill(selection: Selection, force: bool = False) -> Call[list[RunSummary]]:
        params = KillParams(run=selection.run, all=selection.all, force=force)
        return Call("runs.kill", _params(params), _SUMMARIES.validate_python)

    @staticmethod
    def retry(run_id: str) -> Call[RunSummary]:
        return Call("runs.retry", _params(RunParams(run=run_id)), RunSummary.model_validate)

    @staticmethod
    def priority(run_id: str, priority: int) -> Call[RunSummary]:
        params = PriorityParams(run=run_id, priority=priority)
        return Call("runs.priority", _params(params), RunSummary.model_validate)

    @staticmethod
    def parallel(concurrency: int) -> Call[QueueSettings]:
        params = ParallelParams(concurrency=concurrency)
        return Call("queue.parallel", _params(params), QueueSettings.model_validate)

    @staticmethod
    def clean(params: CleanParams) -> Call[list[CleanedRun]]:
        return Call("runs.clean", params.model_dump(), _CLEANED.validate_python)

    @staticmethod
    def logs(
        run_id: str,
        limit: int = DEFAULT_LOG_LIMIT,
        before_seq: int | None = None,
        level: str | None = None,
    ) -> Call[list[LogEvent]]:
        params = LogsTailParams(run=run_id, limit=limit, before_seq=before_seq, level=level)
        return Call("logs.tail", _params(params), _LOG_PAGE.validate_python)

    @staticmethod
    def memory(run_id: str, since: float | None = None) -> Call[MemoryHistory]:
        params = MemoryHistoryParams(run=run_id, since=since)
        return Call("memory.history", _params(params), MemoryHistory.model_validate)

    @staticmethod
    def run_map(run_id: str) -> Call[RunMapReply]:
        return Call("runs.map", _params(RunParams(run=run_id)), RunMapReply.model_validate)

    @staticmethod
    def sources(rule: str | None = None) -> Call[list[WatchedSource]]:
        params = SourcesParams(rule=rule)
        return Call("sources.list", _params(params), _SOURCES.validate_python)

    @staticmethod
    def subscribe(runs: list[str] | None = None, events: bool = True) -> Call[Snapshot]:
        params = SubscribeParams(runs=runs, events=events)
        return Call("subscribe", _params(params), Snapshot.model_validate)

    @staticmethod
    def unsubscribe() -> Call[None]:
        return Call("unsubscribe", _params(EmptyParams()), _nothing)

    @staticmethod
    def stop_daemon() -> Call[None]:
        return Call("daemon.stop", _params(EmptyParams()), _nothing)


def decode_notification(method: str, params: dict[str, Any]) -> RunSummary | Event | None:
    """A notification as its type: a run's new summary, or one stamped event.

    None for what this client does not know (a newer daemon's notification, or a
    malformed one): watching must not die on it.
    """
    try:
        if method == NOTIFY_RUN:
            return RunSummary.model_validate(params)
        if method == NOTIFY_EVENT:
            return decode_dict(params)
    except ValidationError:
        return None
    return None


class DaemonNotRunning(Exception):
    """Nothing accepts connections on the socket (or the daemon went away mid-call)."""

    def __init__(self, socket_path: Path, reason: str = "nothing answers") -> None:
        super().__init__(f"daemon not running: {reason} on {socket_path}")
        self.socket_path = socket_path


def resolve_socket_path(socket_path: str | os.PathLike[str] | None = None) -> Path:
    """The given socket, else the daemon settings' one (which honours $GEOD_SOCKET)."""
    if socket_path is not None:
        return Path(socket_path)
    from supervisor.settings import load_settings

    return load_settings().socket_path


def check_server(sock: socket.socket, socket_path: Path) -> None:
    """Refuse a server that is not this user's, root's or the socket directory owner's
    daemon, before a byte is sent: someone able to replace the socket file would
    otherwise receive submissions and have their answers believed."""
    uid = peer_credentials(sock).uid
    if uid not in trusted_server_uids(socket_path):
        raise ProtocolError(
            ErrorCode.PERMISSION_DENIED,
            f"refusing the daemon on {socket_path}: it runs as uid {uid}, "
            "not as you, root or the owner of the socket's directory",
        )


def _check_hello(result: Any) -> HelloReply:
    version = result.get("protocol") if isinstance(result, dict) else None
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.VERSION_MISMATCH,
            f"daemon speaks protocol {version}, this client {PROTOCOL_VERSION}; "
            "restart the daemon after upgrading geod",
        )
    return HelloReply.model_validate(result)


def _error(body: Any) -> ProtocolError:
    if not isinstance(body, dict):
        return ProtocolError(ErrorCode.INTERNAL_ERROR, f"malformed error response: {body!r}")
    return ProtocolError(
        body.get("code", ErrorCode.INTERNAL_ERROR), str(body.get("message")), body.get("data")
    )


def _raise_error(body: Any) -> None:
    raise _error(body)


class Client:
    """Blocking request/response client; one connection, calls one at a time.

    Notifications (if this connection subscribed) are skipped while waiting for
    a response; use :class:`AsyncClient` to consume them.
    """

    def __init__(
        self, socket_path: str | os.PathLike[str] | None = None, timeout: float = 10.0
    ) -> None:
        self.socket_path = resolve_socket_path(socket_path)
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._buffer = bytearray()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self._sock.close()
            raise DaemonNotRunning(self.socket_path, _reason(exc)) from None
        except OSError:
            self._sock.close()
            raise
        try:
            check_server(self._sock, self.socket_path)
            self.hello = self.request(Calls.hello())
        except BaseException:
            self.close()
            raise

    # -- typed methods, one per RPC ----------------------------------------------------

    def request(self, call: Call[T]) -> T:
        return call.reply(self.call(call.method, **call.params))

    def status(self) -> DaemonStatus:
        return self.request(Calls.status())

    def runs(self) -> list[RunSummary]:
        return self.request(Calls.runs())

    def run(self, run_id: str) -> RunSummary:
        return self.request(Calls.run(run_id))

    def submit(self, config: str | SubmitParams, name: str | None = None) -> RunSummary:
        return self.request(Calls.submit(config, name))

    def pause(self, selection: Selection) -> list[RunSummary]:
        return self.request(Calls.pause(selection))

    def resume(self, selection: Selection) -> list[RunSummary]:
        return self.request(Calls.resume(selection))

    def kill(self, selection: Selection, force: bool = False) -> list[RunSummary]:
        return self.request(Calls.kill(selection, force))

    def retry(self, run_id: str) -> RunSummary:
        return self.request(Calls.retry(run_id))

    def priority(self, run_id: str, priority: int) -> RunSummary:
        return self.request(Calls.priority(run_id, priority))

    def parallel(self, concurrency: int) -> QueueSettings:
        return self.request(Calls.parallel(concurrency))

    def clean(self, params: CleanParams) -> list[CleanedRun]:
        return self.request(Calls.clean(params))

    def logs(
        self,
        run_id: str,
        limit: int = DEFAULT_LOG_LIMIT,
        before_seq: int | None = None,
        level: str | None = None,
    ) -> list[LogEvent]:
        return self.request(Calls.logs(run_id, limit, before_seq, level))

    def memory(self, run_id: str, since: float | None = None) -> MemoryHistory:
        return self.request(Calls.memory(run_id, since))

    def sources(self, rule: str | None = None) -> list[WatchedSource]:
        return self.request(Calls.sources(rule))

    def subscribe(self, runs: list[str] | None = None, events: bool = True) -> Snapshot:
        return self.request(Calls.subscribe(runs, events))

    def stop_daemon(self) -> None:
        self.request(Calls.stop_daemon())

    # -- the wire ------------------------------------------------------------------------

    def call(self, method: str, **params: Any) -> Any:
        """Send one request and return its raw result; error responses raise ProtocolError."""
        request_id = next(self._ids)
        try:
            self._sock.sendall(request(method, params, request_id))
        except (BrokenPipeError, ConnectionResetError):
            # The daemon may have refused us before we spoke (peer check): read why.
            self._raise_refusal()
            raise DaemonNotRunning(self.socket_path, "connection closed") from None
        while True:
            message = self._read_message()
            if message.get("id") is None and "error" in message:
                _raise_error(message["error"])  # about the connection, e.g. PERMISSION_DENIED
            if message.get("id") != request_id:
                continue  # a notification, or a late answer to nothing we wait for
            if "error" in message:
                _raise_error(message["error"])
            return message.get("result")

    def _raise_refusal(self) -> None:
        try:
            message = self._read_message()
        except (DaemonNotRunning, OSError, ValueError):
            return
        if "error" in message:
            _raise_error(message["error"])

    def _read_message(self) -> dict[str, Any]:
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                message = json.loads(line)
                if isinstance(message, dict):
                    return message
                continue
            if len(self._buffer) > MAX_RESPONSE_BYTES:
                raise ProtocolError(ErrorCode.LINE_TOO_LONG, "daemon response too long")
            try:
                chunk = self._sock.recv(_READ_CHUNK)
            except TimeoutError:
                raise TimeoutError(
                    f"no answer from the daemon on {self.socket_path} within {self.timeout:g} s"
                ) from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise DaemonNotRunning(self.socket_path, "connection closed")
            self._buffer += chunk

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no socket"
    return "connection refused"


#: Put on the notification queue when the connection ends.
_CLOSED = object()


class AsyncClient:
    """asyncio client: concurrent calls plus a stream of subscription notifications."""

    def __init__(
        self, socket_path: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.socket_path = socket_path
        self.hello: HelloReply | None = None
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._notifications: asyncio.Queue[Any] = asyncio.Queue()
        self._closed_reason: str | None = None
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(cls, socket_path: str | os.PathLike[str] | None = None) -> AsyncClient:
        path = resolve_socket_path(socket_path)
        try:
            reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_RESPONSE_BYTES)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonNotRunning(path, _reason(exc)) from None
        try:
            check_server(writer.get_extra_info("socket"), path)
        except ProtocolError:
            writer.close()
            raise
        client = cls(path, reader, writer)
        try:
            client.hello = await client.request(Calls.hello())
        except BaseException:
            await client.close()
            raise
        return client

    # -- typed methods, one per RPC ----------------------------------------------------

    async def request(self, call: Call[T]) -> T:
        return call.reply(await self.call(call.method, **call.params))

    async def status(self) -> DaemonStatus:
        return await self.request(Calls.status())

    async def runs(self) -> list[RunSummary]:
        return await self.request(Calls.runs())

    async def run(self, run_id: str) -> RunSummary:
        return await self.request(Calls.run(run_id))

    async def submit(self, config: str | SubmitParams, name: str | None = None) -> RunSummary:
        return await self.request(Calls.submit(config, name))

    async def pause(self, selection: Selection) -> list[RunSummary]:
        return await self.request(Calls.pause(selection))

    async def resume(self, selection: Selection) -> list[RunSummary]:
        return await self.request(Calls.resume(selection))

    async def kill(self, selection: Selection, force: bool = False) -> list[RunSummary]:
        return await self.request(Calls.kill(selection, force))

    async def retry(self, run_id: str) -> RunSummary:
        return await self.request(Calls.retry(run_id))

    async def priority(self, run_id: str, priority: int) -> RunSummary:
        return await self.request(Calls.priority(run_id, priority))

    async def parallel(self, concurrency: int) -> QueueSettings:
        return await self.request(Calls.parallel(concurrency))

    async def clean(self, params: CleanParams) -> list[CleanedRun]:
        return await self.request(Calls.clean(params))

    async def logs(
        self,
        run_id: str,
        limit: int = DEFAULT_LOG_LIMIT,
        before_seq: int | None = None,
        level: str | None = None,
    ) -> list[LogEvent]:
        return await self.request(Calls.logs(run_id, limit, before_seq, level))

    async def memory(self, run_id: str, since: float | None = None) -> MemoryHistory:
        return await self.request(Calls.memory(run_id, since))

    async def sources(self, rule: str | None = None) -> list[WatchedSource]:
        return await self.request(Calls.sources(rule))

    async def subscribe(self, runs: list[str] | None = None, events: bool = True) -> Snapshot:
        return await self.request(Calls.subscribe(runs, events))

    async def unsubscribe(self) -> None:
        await self.request(Calls.unsubscribe())

    async def stop_daemon(self) -> None:
        await self.request(Calls.stop_daemon())

    async def updates(self) -> AsyncIterator[RunSummary | Event]:
        """Each notification typed (see :func:`decode_notification`), until the connection ends."""
        async for method, params in self.notifications():
            update = decode_notification(method, params)
            if update is not None:
                yield update

    # -- the wire ------------------------------------------------------------------------

    async def call(self, method: str, **params: Any) -> Any:
        """Send one request and await its raw result; error responses raise ProtocolError."""
        if self._closed_reason is not None:
            raise DaemonNotRunning(self.socket_path, self._closed_reason)
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._writer.write(request(method, params, request_id))
            await self._writer.drain()
            return await future
        except (BrokenPipeError, ConnectionResetError):
            raise DaemonNotRunning(self.socket_path, "connection closed") from None
        finally:
            self._pending.pop(request_id, None)

    async def notifications(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """``(method, params)`` of each notification, until the connection closes."""
        while True:
            item = await self._notifications.get()
            if item is _CLOSED:
                self._notifications.put_nowait(_CLOSED)  # later iterators end too
                return
            yield item

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    async def _read_loop(self) -> None:
        reason = "connection closed"
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    continue  # nothing we could route; the daemon never sends this
                if not isinstance(message, dict):
                    continue
                self._route(message)
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            reason = f"connection lost ({exc})"
        finally:
            self._closed_reason = reason
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(DaemonNotRunning(self.socket_path, reason))
            self._notifications.put_nowait(_CLOSED)

    def _route(self, message: dict[str, Any]) -> None:
        if "method" in message and "id" not in message:
            params = message.get("params")
            self._notifications.put_nowait((message["method"], params or {}))
            return
        if message.get("id") is None and "error" in message:
            # An error about the connection itself (e.g. PERMISSION_DENIED): fail every call.
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(_error(message["error"]))
            return
        future = self._pending.get(message.get("id"))  # type: ignore[arg-type]
        if future is None or future.done():
            return
        if "error" in message:
            future.set_exception(_error(message["error"]))
        else:
            future.set_result(message.get("result"))

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
