"""Start the daemon in the background for ``geod start`` (python-daemon, PEP 3143).

The CLI forks; the child becomes a well-behaved Unix daemon through
``daemon.DaemonContext`` (second fork, own session, no controlling terminal,
stdin from /dev/null, stdout/stderr appended to ``state_dir/geod.log``, a PID
file) and runs the same ``run_daemon`` as ``geod serve``.

The parent must not guess when the daemon is usable, so it waits on a pipe the
daemon inherits: the daemon's ``ready`` callback (called once its socket
accepts connections) writes one byte; if the daemon dies first the pipe just
closes. Either way ``geod start`` knows within milliseconds instead of polling
a socket until a timeout, and can point at the log with the daemon's last words.

The single-instance guarantee is the daemon's lock on its state directory; the
PID file is for humans and tools (``kill $(cat …/geod.pid)``), so a stale one
left by a SIGKILLed daemon is removed rather than blocking every later start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import daemon
from daemon.pidfile import TimeoutPIDLockFile
from lockfile import LockError

from supervisor.logsetup import configure_logging

if TYPE_CHECKING:
    from supervisor.settings import Settings
    from supervisor.sink import TelemetrySink

log = logging.getLogger("geod.daemon.start")

LOG_FILE = "geod.log"
PID_FILE = "geod.pid"
#: What the daemon writes on the start pipe once its socket accepts connections.
READY_BYTE = b"R"
#: Lines of the log shown when a background start fails (the daemon's last words).
LOG_TAIL_LINES = 15
#: ``acquire`` timeout of the PID file: fail at once, waiting cannot help.
_PIDFILE_NO_WAIT = 0


class DaemonStartError(RuntimeError):
    """The background daemon died or did not become ready; the message names the log."""


def log_path(settings: Settings) -> Path:
    return settings.state_dir / LOG_FILE


def pid_path(settings: Settings) -> Path:
    return settings.state_dir / PID_FILE


def start_background(settings: Settings, timeout: float) -> None:
    """Fork a detached daemon and return once it is ready; raise DaemonStartError otherwise."""
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = log_path(settings)
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked process, exits there
        os.close(read_fd)
        _become_daemon(settings, write_fd)
    os.close(write_fd)
    # The child exits as soon as DaemonContext has forked the real daemon; reap it.
    os.waitpid(child, 0)
    try:
        ready = _wait_ready(read_fd, timeout)
    finally:
        os.close(read_fd)
    if ready is None:
        raise DaemonStartError(
            f"the daemon did not become ready within {timeout:g} s; see {log}{_tail(log)}"
        )
    if not ready:
        raise DaemonStartError(f"the daemon exited during start-up; see {log}{_tail(log)}")


def _wait_ready(read_fd: int, timeout: float) -> bool | None:
    """True when the ready byte arrives, False on EOF (daemon gone), None on timeout."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([read_fd], [], [], left)
        if readable:
            return os.read(read_fd, len(READY_BYTE)) == READY_BYTE
    return None


def _tail(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError:
        return ""
    return "".join(f"\n  {line}" for line in lines)


def _become_daemon(settings: Settings, ready_fd: int) -> NoReturn:  # pragma: no cover
    """Runs in the forked child: never returns into the CLI's stack, whatever happens."""
    code = 1
    try:
        pidfile = TimeoutPIDLockFile(str(pid_path(settings)), acquire_timeout=_PIDFILE_NO_WAIT)
        _remove_stale_pidfile(pidfile)
        umask = os.umask(0)
        os.umask(umask)
        with open(log_path(settings), "a", buffering=1) as log:
            context = daemon.DaemonContext(
                # Always detach: python-daemon would not if stdin happened to be a socket.
                detach_process=True,
                working_directory="/",
                umask=umask,
                pidfile=pidfile,
                stdout=log,
                stderr=log,
                files_preserve=[ready_fd],
                # run_daemon installs its own handlers; python-daemon's default map
                # would make SIGTERM raise SystemExit and ignore SIGTSTP in workers.
                signal_map={},
            )
            with context:
                code = _serve(settings, ready_fd)
    except LockError as exc:
        print(f"geod: cannot take the PID file {pid_path(settings)}: {exc}", file=sys.stderr)
    except BaseException:  # report anything in the log, then exit
        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _serve(settings: Settings, ready_fd: int) -> int:  # pragma: no cover - daemon process
    def ready() -> None:
        with contextlib.suppress(OSError):  # geod start gave up waiting: nothing to tell
            os.write(ready_fd, READY_BYTE)
        with contextlib.suppress(OSError):
            os.close(ready_fd)

    return serve(settings, ready)


def serve(settings: Settings, ready: Callable[[], None] | None = None) -> int:
    """The daemon process's main, in the foreground (``geod serve``) or once detached.

    Logging goes to stderr. Telemetry (PostgreSQL, embedded unless a URL is
    configured) is opened by the daemon once it holds the state directory's lock —
    so a refused second daemon never touches the database — and in the process
    that will own its writer thread, never before a fork.
    """
    from supervisor.lifecycle import run_daemon

    configure_logging(settings.log_level)
    log.info("geod daemon starting, pid %d, state %s", os.getpid(), settings.state_dir)
    return run_daemon(settings, ready=ready, telemetry_factory=lambda: _open_telemetry(settings))


def _open_telemetry(settings: Settings) -> TelemetrySink | None:
    if not settings.telemetry:
        return None
    from supervisor.telemetry import open_telemetry

    # The writer's batching uses TelemetryConfig's documented defaults; the per-run
    # telemetry section governs each run's sampling interval.
    return open_telemetry(settings.database_url, settings.state_dir)


def _remove_stale_pidfile(pidfile: TimeoutPIDLockFile) -> None:
    """Break a PID file whose process is gone (SIGKILLed daemon) or that holds no PID."""
    if not pidfile.is_locked():
        return
    pid = pidfile.read_pid()
    if pid is not None and process_alive(pid):
        return  # acquiring will fail and say so
    pidfile.break_lock()


def process_alive(pid: int) -> bool:
    """Is ``pid`` a live process? A zombie counts as gone: it has exited and only awaits its
    reaper (a daemon is reparented to init, which in a container may never reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's (the system daemon, seen by its group)
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" not in status
