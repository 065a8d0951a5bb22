"""The daemon-facing verbs when no daemon answers, and their usage errors: the installed
``geod`` in a subprocess, so exit codes and stderr are exactly what a shell sees."""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from supervisor.cli.main import EXIT_FAILED, EXIT_NO_DAEMON, EXIT_USAGE
from tests.conftest import write_demo_config

GEOD = str(Path(sysconfig.get_path("scripts")) / "geod")
#: uid and gid of ``nobody`` on Debian.
NOBODY = 65534


@pytest.fixture()
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="geod-cli-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def geod(*args: str, socket_path: Path, state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GEOD_SOCKET=str(socket_path), GEOD_STATE_DIR=str(state_dir))
    return subprocess.run(
        [GEOD, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


READ_AND_CONTROL = [
    ("status",),
    ("status", "r1", "--json"),
    ("runs", "--json"),
    ("pause", "r1"),
    ("resume", "--all"),
    ("kill", "r1", "--force"),
    ("retry", "r1"),
    ("logs", "r1"),
    ("logs", "r1", "-f"),
    ("stop",),
]


@pytest.mark.parametrize("args", READ_AND_CONTROL, ids=" ".join)
def test_no_socket_is_one_line_and_exit_3(args: tuple[str, ...], short_dir: Path) -> None:
    result = geod(*args, socket_path=short_dir / "geod.sock", state_dir=short_dir / "state")
    assert result.returncode == EXIT_NO_DAEMON
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "daemon not running" in lines[0] and str(short_dir / "geod.sock") in lines[0]


def test_stale_socket_file_is_daemon_not_running(short_dir: Path) -> None:
    """A socket file left by a SIGKILLed daemon: connection refused, same message."""
    path = short_dir / "geod.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # bound, never listening: connect() is refused
    result = geod("runs", socket_path=path, state_dir=short_dir / "state")
    assert result.returncode == EXIT_NO_DAEMON
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("pause",), "give a RUN id or --all"),
        (("kill", "r1", "--all"), "not both"),
        (("retry", "--all"), "No such option"),
        (("logs", "r1", "--level", "LOUD"), "LOUD"),
        (("logs", "r1", "-n", "0"), "0"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...], message: str, short_dir: Path) -> None:
    result = geod(*args, socket_path=short_dir / "geod.sock", state_dir=short_dir / "state")
    assert result.returncode == EXIT_USAGE
    assert message in result.stderr


def test_start_rejects_a_bad_config_before_starting_a_daemon(short_dir: Path) -> None:
    config = short_dir / "config.yml"
    config.write_text("datasetz: []\n")
    state = short_dir / "state"
    result = geod("start", str(config), socket_path=short_dir / "geod.sock", state_dir=state)
    assert result.returncode == EXIT_USAGE
    assert "datasetz" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (state / "geod.log").exists()  # no daemon was started for nothing


def test_run_rejects_a_bad_config_and_leaves_no_worker(short_dir: Path) -> None:
    """`geod run` starts its worker while it validates the config (the two overlap):
    a bad config is still one line and exit 2, and the worker is gone with it."""
    config = short_dir / "config.yml"
    config.write_text(f"datasets: 3\npaths: {{work_dir: {short_dir / 'work'}}}\n")
    stderr = short_dir / "stderr"
    # Output to a file, not a pipe: a pipe would wait for the worker too, which shares it.
    with stderr.open("w") as err:
        code = subprocess.call([GEOD, "run", str(config)], stderr=err, timeout=60)
        workers = [
            proc.pid
            for proc in psutil.process_iter(["cmdline"])
            if str(config) in (proc.info["cmdline"] or [])
        ]
    assert code == EXIT_USAGE
    assert stderr.read_text().strip().splitlines() == [
        f"geod: {config}: datasets: Input should be a valid list"
    ]
    assert workers == []
    assert not (short_dir / "work").exists()


@pytest.mark.parametrize("verb", ["check", "run", "start"])
def test_dev_zero_refused_at_once(verb: str, short_dir: Path) -> None:
    """No unbounded read: the config must be a regular file, checked before it is read."""
    state = short_dir / "state"
    result = geod(verb, "/dev/zero", socket_path=short_dir / "geod.sock", state_dir=state)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr == "geod: /dev/zero: not a regular file, expected a YAML file\n"
    assert not (state / "geod.log").exists()


def test_bad_settings_file_is_exit_2(short_dir: Path) -> None:
    settings = short_dir / "geod.yml"
    settings.write_text("concurency: 3\n")
    result = geod(
        "serve",
        "--config",
        str(settings),
        socket_path=short_dir / "geod.sock",
        state_dir=short_dir / "state",
    )
    assert result.returncode == EXIT_USAGE
    assert "concurrency" in result.stderr  # the did-you-mean hint
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_socket_of_another_user_is_permission_denied(short_dir: Path) -> None:
    """Someone else's daemon (0700 directory, 0600 socket): one line naming the socket, exit 1.

    The other user runs the real CLI code in a forked child that drops to ``nobody``
    (the venv's interpreter may live where ``nobody`` cannot exec it).
    """
    from supervisor.cli import cli

    # `geod` imports a verb's module when it runs, and ``nobody`` may not read the
    # interpreter's libraries (under /root here): import what `runs` needs beforehand.
    for module in ("supervisor.cli.run_cmds", "supervisor.client"):
        importlib.import_module(module)
    path = short_dir / "geod.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    os.chmod(short_dir, 0o700)
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 99
        try:
            sys.stderr = os.fdopen(write_fd, "w")  # pytest has replaced sys.stderr
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            cli.main(["runs", "--socket", str(path)], prog_name="geod")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 98
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as stderr:
        message = stderr.read()
    _, status = os.waitpid(child, 0)
    listener.close()
    assert os.waitstatus_to_exitcode(status) == EXIT_FAILED, message
    assert message.startswith("geod: permission denied on " + str(path)), message
    assert len(message.splitlines()) == 1


@pytest.mark.skipif(Path("/run/geod/geod.sock").exists(), reason="a geod service is running here")
def test_start_does_not_impersonate_the_system_service(short_dir: Path, demo_dir: Path) -> None:
    """With the service's socket selected and no service, start says how to start the service
    instead of launching a user daemon on /run/geod."""
    config = write_demo_config(short_dir, demo_dir)
    state = short_dir / "state"
    result = geod("start", str(config), socket_path=Path("/run/geod/geod.sock"), state_dir=state)
    assert result.returncode == EXIT_NO_DAEMON
    assert "systemctl start geod" in result.stderr
    assert not (state / "geod.log").exists()
