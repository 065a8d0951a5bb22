"""The socket protocol against a real daemon: errors, limits, slow clients, peer credentials.

Raw sockets on purpose: the client library would refuse to send most of this.
Whatever a peer sends, the daemon answers with JSON-RPC errors (or drops that
one peer) and keeps serving everyone else.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor.protocol import MAX_LINE_BYTES, PROTOCOL_VERSION, ErrorCode
from tests.as_user import call_as
from tests.daemon_harness import DaemonHarness, fake_config, running_daemon

#: Seconds a raw test socket waits for an answer.
READ_TIMEOUT = 10.0
NOBODY = 65534
NOGROUP = 65534
DAEMON_GID = 1
HELLO = {"jsonrpc": "2.0", "id": 1, "method": "hello", "params": {"protocol": PROTOCOL_VERSION}}


class Raw:
    """A line-oriented raw connection to the daemon."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(READ_TIMEOUT)
        self.sock.connect(str(path))
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, params: Any = None, id: Any = 1) -> dict[str, Any]:
        message = {"jsonrpc": "2.0", "id": id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(json.dumps(message).encode() + b"\n")
        return self.read()

    def read(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("daemon closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonHarness]:
    with running_daemon(tmp_path_factory.mktemp("protocol")) as harness:
        yield harness


@pytest.fixture()
def raw(daemon: DaemonHarness) -> Iterator[Raw]:
    connection = Raw(daemon.socket_path)
    yield connection
    connection.close()


def error_code(response: dict[str, Any]) -> int:
    assert "error" in response, response
    return response["error"]["code"]


def test_hello_and_status(raw: Raw, daemon: DaemonHarness) -> None:
    hello = raw.request("hello", {"protocol": PROTOCOL_VERSION, "client": "test"})
    assert hello["result"]["protocol"] == PROTOCOL_VERSION
    assert hello["result"]["pid"] == daemon.process.pid
    mismatch = raw.request("hello", {"protocol": PROTOCOL_VERSION + 1}, id=2)
    assert error_code(mismatch) == ErrorCode.VERSION_MISMATCH and mismatch["id"] == 2
    status = raw.request("status", id="s")["result"]
    assert status["socket"] == str(daemon.socket_path) and status["stopping"] is False


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", ErrorCode.PARSE_ERROR),
        (b"\xff\xfe\x00", ErrorCode.PARSE_ERROR),
        (b"[1, 2]", ErrorCode.INVALID_REQUEST),
        (b'"a string"', ErrorCode.INVALID_REQUEST),
        (b'{"id": 7, "method": "status"}', ErrorCode.INVALID_REQUEST),
        (b'{"jsonrpc": "2.0", "id": 7, "method": 12}', ErrorCode.INVALID_REQUEST),
        (b'{"jsonrpc": "2.0", "id": 7, "method": "nope"}', ErrorCode.METHOD_NOT_FOUND),
        (b'{"jsonrpc": "2.0", "id": 7, "method": "runs.get"}', ErrorCode.INVALID_PARAMS),
        (
            b'{"jsonrpc": "2.0", "id": 7, "method": "status", "params": [1]}',
            ErrorCode.INVALID_PARAMS,
        ),
        (
            b'{"jsonrpc": "2.0", "id": 7, "method": "status", "params": {"x": 1}}',
            ErrorCode.INVALID_PARAMS,
        ),
        (
            b'{"jsonrpc": "2.0", "id": 7, "method": "runs.pause", "params": {}}',
            ErrorCode.INVALID_PARAMS,
        ),
        (
            b'{"jsonrpc": "2.0", "id": 7, "method": "logs.tail", "params": {"run": "r1", '
            b'"limit": 0}}',
            ErrorCode.INVALID_PARAMS,
        ),
        (
            b'{"jsonrpc": "2.0", "id": 7, "method": "runs.get", "params": {"run": "r4242"}}',
            ErrorCode.UNKNOWN_RUN,
        ),
        (b'{"jsonrpc": "2.0", "id": 7, "method": "unsubscribe"}', ErrorCode.NOT_SUBSCRIBED),
    ],
)
def test_bad_requests_get_errors_and_connection_survives(
    raw: Raw, payload: bytes, code: int
) -> None:
    raw.send(payload + b"\n")
    response = raw.read()
    assert error_code(response) == code
    assert response["jsonrpc"] == "2.0"
    assert raw.request("status", id=99)["id"] == 99


@pytest.mark.parametrize("bad_id", ["{}", '{"a": 1}', "[1]", "true", "false"])
def test_invalid_id_refused_without_executing(
    raw: Raw, daemon: DaemonHarness, tmp_path: Path, bad_id: str
) -> None:
    config = fake_config(tmp_path, "idcheck")
    before = len(raw.request("runs.list")["result"])
    line = (
        f'{{"jsonrpc": "2.0", "id": {bad_id}, "method": "runs.submit", '
        f'"params": {{"config_path": {json.dumps(str(config))}}}}}'
    )
    raw.send(line.encode() + b"\n")
    response = raw.read()
    assert error_code(response) == ErrorCode.INVALID_REQUEST and response["id"] is None
    assert len(raw.request("runs.list", id=5)["result"]) == before


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_ids_never_echoed(raw: Raw, literal: str) -> None:
    raw.send(f'{{"jsonrpc": "2.0", "id": {literal}, "method": "status"}}\n'.encode())
    while b"\n" not in raw.buffer:
        raw.buffer += raw.sock.recv(65536)
    line, raw.buffer = raw.buffer.split(b"\n", 1)
    # Strict JSON: a NaN/Infinity literal anywhere in the reply fails here.
    response = json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in {line!r}"))
    assert "error" in response and response["id"] is None
    assert raw.request("status", id=6)["id"] == 6


def test_deep_nesting_is_an_error_reply(raw: Raw, daemon: DaemonHarness) -> None:
    depth = 10_000
    for payload in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        raw.send(payload + b"\n")
        assert error_code(raw.read()) == ErrorCode.PARSE_ERROR
    assert raw.request("status", id=7)["id"] == 7
    assert "Traceback" not in daemon.log()


def test_nul_byte_in_config_path_is_one_line(raw: Raw) -> None:
    response = raw.request("runs.submit", {"config_path": "/tmp/a\u0000b.yml"})
    assert error_code(response) == ErrorCode.BAD_CONFIG
    message = response["error"]["message"]
    assert "NUL byte" in message and "internal error" not in message and "\n" not in message


def test_run_names_must_match_whole(raw: Raw, tmp_path: Path) -> None:
    config = fake_config(tmp_path, "names")
    response = raw.request("runs.submit", {"config_path": str(config), "name": "ok\n"})
    assert error_code(response) == ErrorCode.INVALID_PARAMS


def test_notifications_get_no_answer(raw: Raw) -> None:
    raw.send(b'{"jsonrpc": "2.0", "method": "status"}\n')
    raw.send(b'{"jsonrpc": "2.0", "method": "nope"}\n')
    assert raw.request("status", id="after")["id"] == "after"


def test_oversized_line_rejected_without_buffering_it(raw: Raw, daemon: DaemonHarness) -> None:
    process = psutil.Process(daemon.process.pid)
    rss_before = process.memory_info().rss
    chunk = b"x" * (1024 * 1024)
    oversize_mib = 32
    for _ in range(oversize_mib):
        raw.send(chunk)
    raw.send(b"\n")
    response = raw.read()
    assert error_code(response) == ErrorCode.LINE_TOO_LONG
    growth = process.memory_info().rss - rss_before
    assert growth < oversize_mib * len(chunk) / 4, f"daemon grew {growth} bytes"
    assert raw.request("status", id=2)["id"] == 2
    # A line of exactly the limit is still a request.
    padded = b'{"jsonrpc": "2.0", "id": 3, "method": "status"}'
    raw.send(padded + b" " * (MAX_LINE_BYTES - len(padded)) + b"\n")
    assert raw.read()["id"] == 3


def test_half_closed_client_still_gets_its_answers(daemon: DaemonHarness) -> None:
    raw = Raw(daemon.socket_path)
    try:
        raw.send(b'{"jsonrpc": "2.0", "id": 1, "method": "status"}\n')
        raw.send(b'{"jsonrpc": "2.0", "id": 2, "method": "runs.list"}\n')
        raw.sock.shutdown(socket.SHUT_WR)
        assert [raw.read()["id"], raw.read()["id"]] == [1, 2]
        with pytest.raises(EOFError):
            raw.read()
    finally:
        raw.close()


def test_slow_subscriber_dropped_others_served(tmp_path: Path) -> None:
    with running_daemon(tmp_path, client_queue_limit=20) as daemon:
        slow = Raw(daemon.socket_path)
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert "result" in slow.request("subscribe", {"runs": None})
        run_id = daemon.submit(fake_config(tmp_path / "a", "steps20000-slow1-chatty"))
        deadline = time.monotonic() + 60
        while "dropping client" not in daemon.log():
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.1)
        assert "too slow" in daemon.log()
        # The dropped client reads what was sent, then EOF.
        with pytest.raises((EOFError, ConnectionResetError)):
            while True:
                slow.read()
        slow.close()
        assert daemon.run(run_id)["state"] == "running"
        daemon.call("runs.kill", run=run_id, force=True)


def _connect_as(path: Path, uid: int, gid: int) -> dict[str, Any] | str:
    """Send hello as uid/gid; the answer, or the EOF/OSError seen, as text."""

    def hello() -> dict[str, Any] | str:
        raw = Raw(path)
        with contextlib.suppress(BrokenPipeError):  # a refused peer may be cut off early
            raw.send(json.dumps(HELLO).encode() + b"\n")
        try:
            return raw.read()
        except EOFError as exc:
            return f"EOF: {exc}"

    return call_as(uid, gid, hello)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to setuid to another user")
def test_peer_credentials_refuse_other_users(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "user") as daemon:
        assert daemon.socket_path.stat().st_mode & 0o777 == 0o600
        # Open the file-system gate so only SO_PEERCRED stands between nobody and the daemon.
        os.chmod(daemon.socket_dir, 0o755)
        os.chmod(daemon.socket_path, 0o666)
        answer = _connect_as(daemon.socket_path, NOBODY, NOGROUP)
        assert isinstance(answer, dict) and error_code(answer) == ErrorCode.PERMISSION_DENIED
        assert "refused connection from uid 65534" in daemon.log()
        assert daemon.call("status")["pid"] == daemon.process.pid


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to setuid to another user")
def test_socket_group_members_allowed(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "group", socket_group="nogroup") as daemon:
        info = daemon.socket_path.stat()
        assert info.st_mode & 0o777 == 0o660 and info.st_gid == NOGROUP
        os.chmod(daemon.socket_dir, 0o755)
        member = _connect_as(daemon.socket_path, NOBODY, NOGROUP)
        assert isinstance(member, dict) and member["result"]["protocol"] == PROTOCOL_VERSION
        os.chmod(daemon.socket_path, 0o666)
        outsider = _connect_as(daemon.socket_path, NOBODY, DAEMON_GID)
        assert isinstance(outsider, dict)
        assert error_code(outsider) == ErrorCode.PERMISSION_DENIED
