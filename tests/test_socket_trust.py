"""Socket trust against real processes: the daemon refuses a socket directory others can
write to, and the client refuses a server that is not its daemon before sending a byte.

The attack these close: another user pre-creates a world-writable ``$XDG_RUNTIME_DIR/geod``,
renames the daemon's socket away and binds a fake server that answers submissions.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import DaemonHarness

GEOD = str(Path(sysconfig.get_path("scripts")) / "geod")
NOBODY = 65534
#: Seconds the fake server waits for a client to send something.
FAKE_WAIT = 5.0
#: A hello answer the fake server would give, were it asked.
FAKE_HELLO = b'{"jsonrpc":"2.0","id":1,"result":{"protocol":1,"server":"geod","pid":1}}\n'


@pytest.fixture()
def shared_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="geod-trust-", dir="/tmp"))
    path.chmod(0o755)  # the second user must reach the directory inside
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize(
    ("mode", "owner", "expected"),
    [
        (0o777, None, "{dir} is writable by others (mode 0777)"),
        (0o770, None, "{dir} is writable by others (mode 0770)"),
        (0o700, NOBODY, f"{{dir}} belongs to uid {NOBODY}, not to this user or root"),
    ],
)
def test_daemon_refuses_an_untrusted_socket_directory(
    tmp_path: Path, shared_dir: Path, mode: int, owner: int | None, expected: str
) -> None:
    if owner is not None and os.geteuid() != 0:
        pytest.skip("another user's directory needs root to make")
    socket_dir = shared_dir / "geod"
    socket_dir.mkdir()
    socket_dir.chmod(mode)
    if owner is not None:
        os.chown(socket_dir, owner, owner)
    daemon = DaemonHarness(tmp_path, socket_path=str(socket_dir / "geod.sock"))
    process = daemon.spawn()
    try:
        assert process.wait(60) != 0
    finally:
        daemon.cleanup()
    reason = expected.format(dir=socket_dir)
    assert f"refusing the socket directory: {reason}" in daemon.log()
    assert not (socket_dir / "geod.sock").exists()


def _fake_server(path: Path) -> tuple[int, int]:
    """Fork a server running as ``nobody`` on ``path``; returns (pid, fd of its report).

    It answers any connection with a hello and reports how many bytes it received.
    """
    ready_r, ready_w = os.pipe()
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        received = -1
        try:
            os.close(ready_r)
            os.close(report_r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(str(path))
            os.chmod(path, 0o777)
            server.listen()
            os.write(ready_w, b"1")
            server.settimeout(FAKE_WAIT * 6)
            conn, _ = server.accept()
            received = 0
            conn.settimeout(FAKE_WAIT)
            try:  # a client that refuses us may already have hung up
                conn.sendall(FAKE_HELLO)
                while chunk := conn.recv(65536):
                    received += len(chunk)
            except OSError:  # timeout, reset or broken pipe: what arrived is counted
                pass
        finally:
            os.write(report_w, str(received).encode())
            os._exit(0)
    os.close(ready_w)
    os.close(report_w)
    assert os.read(ready_r, 1) == b"1"
    os.close(ready_r)
    return pid, report_r


def _fake_server_report(pid: int, report: int) -> int:
    with os.fdopen(report) as pipe:
        received = int(pipe.read())
    os.waitpid(pid, 0)
    return received


@pytest.mark.skipif(os.geteuid() != 0, reason="a second uid for the fake server needs root")
def test_client_refuses_a_fake_server_before_sending(shared_dir: Path) -> None:
    socket_dir = shared_dir / "geod"
    socket_dir.mkdir()
    socket_dir.chmod(0o777)  # the pre-created, world-writable runtime directory
    path = socket_dir / "geod.sock"
    pid, report = _fake_server(path)
    result = subprocess.run(
        [GEOD, "runs", "--socket", str(path)], capture_output=True, text=True, timeout=60
    )
    received = _fake_server_report(pid, report)
    assert result.returncode == 1, result
    assert result.stderr == (
        f"geod: refusing the daemon on {path}: it runs as uid {NOBODY}, "
        "not as you, root or the owner of the socket's directory\n"
    )
    assert "r6666" not in result.stdout and received == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="a second uid for the server needs root")
def test_client_trusts_the_service_owning_a_private_directory(shared_dir: Path) -> None:
    """The system service's case: /run/geod belongs to the service user, nobody else writes."""
    socket_dir = shared_dir / "geod"
    socket_dir.mkdir(mode=0o755)
    os.chown(socket_dir, NOBODY, NOBODY)
    path = socket_dir / "geod.sock"
    pid, report = _fake_server(path)
    result = subprocess.run(
        [GEOD, "runs", "--socket", str(path), "--json"], capture_output=True, text=True, timeout=60
    )
    received = _fake_server_report(pid, report)
    assert "refusing the daemon" not in result.stderr
    assert received > 0  # it talked: hello went out
