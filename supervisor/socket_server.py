"""The daemon's socket: JSON-RPC 2.0 over newline-delimited JSON on a Unix socket.

Robustness rules, each because a dashboard or a script may misbehave while
long runs must not notice:

* every connection is checked with ``SO_PEERCRED`` (same uid, root, or a member
  of ``socket_group``) before anything is read;
* a line longer than ``MAX_LINE_BYTES`` is answered with ``LINE_TOO_LONG`` and
  its rest discarded without being buffered; bad JSON, unknown methods and bad
  params get their JSON-RPC errors and the connection stays open;
* each client has a bounded outgoing queue: one that stops reading is dropped
  once the queue is full, so daemon memory does not grow with a stuck client.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import pwd
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from pipeline.contract import SOCKET_ENV
from supervisor import protocol
from supervisor.process import read_line
from supervisor.protocol import ErrorCode, ProtocolError

log = logging.getLogger("geod.daemon.server")

#: sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107
_PEERCRED = struct.Struct("3i")
#: Seconds a connection to an existing socket file may take to prove a live daemon.
STALE_PROBE_TIMEOUT = 1.0
#: On daemon stop, how long clients get to receive their queued answers (daemon.stop's own).
CLOSE_FLUSH_TIMEOUT = 1.0


class SocketError(RuntimeError):
    """The socket cannot be set up; one line for the user."""


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return Peer(*_PEERCRED.unpack(raw))


def _peer_groups(peer: Peer) -> set[int]:
    """The peer's primary and supplementary groups (from /proc, falling back to the group db)."""
    groups = {peer.gid}
    try:
        with open(f"/proc/{peer.pid}/status") as handle:
            for line in handle:
                if line.startswith("Groups:"):
                    groups.update(int(g) for g in line.split()[1:])
                    return groups
    except OSError:
        pass
    with contextlib.suppress(KeyError):
        name = pwd.getpwuid(peer.uid).pw_name
        groups.update(g.gr_gid for g in grp.getgrall() if name in g.gr_mem)
    return groups


def peer_allowed(peer: Peer, group_gid: int | None) -> bool:
    """Same user as the daemon, root, or a member of the configured socket group."""
    if peer.uid in (os.getuid(), 0):
        return True
    return group_gid is not None and group_gid in _peer_groups(peer)


class Connection:
    """One client: its peer, subscription and bounded outgoing queue."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        queue_limit: int,
        peer: Peer,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=queue_limit)
        self.subscribed = False
        self.subscribed_runs: set[str] | None = None
        self.subscribed_events = True
        self.dropped: str | None = None
        self.write_task: asyncio.Task[None] | None = None

    def send(self, data: bytes) -> None:
        """Queue one line; a client whose queue is full is dropped (it stopped reading)."""
        if self.dropped is not None:
            return
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            self.drop(f"too slow: more than {self.queue.maxsize} messages queued")

    def wants(self, run_id: str, is_event: bool) -> bool:
        if not self.subscribed or self.dropped is not None:
            return False
        if is_event and not self.subscribed_events:
            return False
        return self.subscribed_runs is None or run_id in self.subscribed_runs

    def drop(self, reason: str) -> None:
        if self.dropped is None:
            self.dropped = reason
            log.warning("dropping client pid %d: %s", self.peer.pid, reason)
            self.writer.transport.abort()

    async def write_loop(self) -> None:
        while True:
            data = await self.queue.get()
            if data is None:
                return
            self.writer.write(data)
            await self.writer.drain()


Handler = Callable[[Connection, str, BaseModel], Awaitable[Any]]


def check_socket_path(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise SocketError(
            f"socket path too long ({len(os.fsencode(path))} bytes, Unix sockets allow "
            f"{MAX_SOCKET_PATH_BYTES}): {path}; set socket_path or {SOCKET_ENV} to a shorter one"
        )


def _remove_stale(path: Path) -> None:
    """Remove a socket file left by a dead daemon; refuse if anything still answers on it."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketError(f"{path} exists and is not a socket; not touching it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(STALE_PROBE_TIMEOUT)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale socket %s (nothing listens on it)", path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    except OSError as exc:
        raise SocketError(f"cannot probe existing socket {path}: {exc}") from None
    finally:
        probe.close()
    raise SocketError(f"another daemon is listening on {path}")


def bind_socket(path: Path, group: str | None) -> socket.socket:
    """A listening socket at ``path``: 0600, or 0660 owned by ``group``, in a private dir."""
    check_socket_path(path)
    gid = grp.getgrnam(group).gr_gid if group else None
    parent = path.parent
    if not parent.exists():
        parent.mkdir(parents=True, mode=0o750 if gid is not None else 0o700)
        if gid is not None:
            os.chown(parent, -1, gid)
            os.chmod(parent, 0o750)  # mkdir's mode is masked by the umask
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        # Between bind and chmod the umask decides the mode; SO_PEERCRED still guards it.
        if gid is not None:
            os.chown(path, -1, gid)
        os.chmod(path, 0o660 if gid is not None else 0o600)
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        raise SocketError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


class Server:
    """Accepts clients, dispatches requests to ``handler``, fans notifications out."""

    def __init__(self, handler: Handler, queue_limit: int, group: str | None) -> None:
        self.handler = handler
        self.queue_limit = queue_limit
        self.group_gid = grp.getgrnam(group).gr_gid if group else None
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self._path: Path | None = None

    async def start(self, path: Path, group: str | None) -> None:
        sock = bind_socket(path, group)
        self._path = path
        self._server = await asyncio.start_unix_server(
            self._serve, sock=sock, limit=protocol.MAX_LINE_BYTES
        )

    def notify(self, run_id: str, method: str, params: dict[str, Any]) -> None:
        """Send a notification to every client subscribed to ``run_id``."""
        is_event = method == protocol.NOTIFY_EVENT
        data: bytes | None = None
        for conn in list(self.connections):
            if conn.wants(run_id, is_event):
                data = data or protocol.notification(method, params)
                conn.send(data)

    async def close(self) -> None:
        """Stop listening, let each client receive what is queued for it, then disconnect."""
        if self._server is not None:
            self._server.close()
        flushes = []
        for conn in list(self.connections):
            try:
                conn.queue.put_nowait(None)
                if conn.write_task is not None:
                    flushes.append(conn.write_task)
            except asyncio.QueueFull:
                conn.drop("daemon stopping")
        if flushes:
            await asyncio.wait(flushes, timeout=CLOSE_FLUSH_TIMEOUT)
        for conn in list(self.connections):
            conn.writer.transport.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = peer_credentials(writer.get_extra_info("socket"))
        except OSError:  # gone before we could ask who it was
            writer.close()
            return
        conn = Connection(reader, writer, self.queue_limit, peer)
        if not peer_allowed(peer, self.group_gid):
            log.warning("refused connection from uid %d gid %d", peer.uid, peer.gid)
            writer.write(
                protocol.error(
                    None, ErrorCode.PERMISSION_DENIED, f"uid {peer.uid} may not use this daemon"
                )
            )
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return
        self.connections.add(conn)
        writer_task = conn.write_task = asyncio.create_task(conn.write_loop())
        try:
            await self._read_loop(conn)
            if conn.dropped is None:
                try:
                    conn.queue.put_nowait(None)  # flush what is queued, then close
                except asyncio.QueueFull:
                    conn.drop("closed its side with a full queue")
            if conn.dropped is None:
                await writer_task
        except ConnectionError:
            pass
        finally:
            self.connections.discard(conn)
            writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await writer_task
            writer.close()

    async def _read_loop(self, conn: Connection) -> None:
        while conn.dropped is None:
            line, cut = await read_line(conn.reader, protocol.MAX_LINE_BYTES)
            if cut:
                conn.send(
                    protocol.error(
                        None,
                        ErrorCode.LINE_TOO_LONG,
                        f"request line longer than {protocol.MAX_LINE_BYTES} bytes; discarded",
                    )
                )
                continue
            if not line.strip():
                if conn.reader.at_eof():
                    return
                continue
            await self._handle_line(conn, line)

    async def _handle_line(self, conn: Connection, line: bytes) -> None:
        try:
            message = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            conn.send(protocol.error(None, ErrorCode.PARSE_ERROR, f"invalid JSON: {exc}"))
            return
        request_id = message.get("id") if isinstance(message, dict) else None
        if not isinstance(request_id, int | float | str | None) or isinstance(request_id, bool):
            request_id = None
        try:
            method, params = _validate_request(message)
            value = await self.handler(conn, method, params)
        except ProtocolError as exc:
            if request_id is not None or exc.code == ErrorCode.INVALID_REQUEST:
                conn.send(protocol.error(request_id, exc.code, exc.message, exc.data))
            return
        except Exception as exc:  # a handler bug must cost one request, not the daemon
            log.exception("internal error handling %r", line[:200])
            conn.send(
                protocol.error(request_id, ErrorCode.INTERNAL_ERROR, f"internal error: {exc}")
            )
            return
        if request_id is not None:
            conn.send(protocol.result(request_id, value))


def _validate_request(message: Any) -> tuple[str, BaseModel]:
    if not isinstance(message, dict):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "a request must be a JSON object")
    if message.get("jsonrpc") != "2.0":
        raise ProtocolError(ErrorCode.INVALID_REQUEST, 'missing "jsonrpc": "2.0"')
    method = message.get("method")
    if not isinstance(method, str):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, '"method" must be a string')
    model = protocol.METHODS.get(method)
    if model is None:
        raise ProtocolError(ErrorCode.METHOD_NOT_FOUND, f"unknown method {method!r}")
    raw = message.get("params", {})
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ProtocolError(ErrorCode.INVALID_PARAMS, "params must be an object (by-name)")
    try:
        return method, model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors()
        )
        raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{method}: {problems}") from None
