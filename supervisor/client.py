"""Clients of the daemon's socket: a blocking one for ``geod`` verbs, an asyncio one for the TUI.

Both say ``hello`` first and refuse a daemon speaking another protocol version,
so a CLI from a newer install fails with one line instead of misreading
answers. A socket nobody answers on becomes :class:`DaemonNotRunning` (one line
naming the path), never a raw ``ConnectionRefusedError`` traceback.

The asyncio client multiplexes: one reader task routes responses to the
waiting ``call`` by id and subscription notifications to
:meth:`AsyncClient.notifications`, so a TUI can steer runs on the same
connection it watches them on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

from supervisor.protocol import PROTOCOL_VERSION, ErrorCode, ProtocolError, request

#: Largest response line accepted. Requests are capped at protocol.MAX_LINE_BYTES,
#: but answers such as ``logs.tail`` with a high limit legitimately run to megabytes.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
#: Bytes read from the socket at once by the blocking client.
_READ_CHUNK = 65536
CLIENT_NAME = "geod-client"


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


def _check_hello(result: Any) -> None:
    version = result.get("protocol") if isinstance(result, dict) else None
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.VERSION_MISMATCH,
            f"daemon speaks protocol {version}, this client {PROTOCOL_VERSION}; "
            "restart the daemon after upgrading geod",
        )


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
            self.hello = self.call("hello", protocol=PROTOCOL_VERSION, client=CLIENT_NAME)
            _check_hello(self.hello)
        except BaseException:
            self.close()
            raise

    def call(self, method: str, **params: Any) -> Any:
        """Send one request and return its result; error responses raise ProtocolError."""
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
        self.hello: Any = None
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
        client = cls(path, reader, writer)
        try:
            client.hello = await client.call("hello", protocol=PROTOCOL_VERSION, client=CLIENT_NAME)
            _check_hello(client.hello)
        except BaseException:
            await client.close()
            raise
        return client

    async def call(self, method: str, **params: Any) -> Any:
        """Send one request and await its result; error responses raise ProtocolError."""
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
