"""``geod serve``, ``geod start`` and ``geod stop``: the daemon's life cycle.

``serve`` is the foreground daemon systemd runs; ``start`` is what a user types
(pueue-style: make sure a daemon answers, starting one in the background if
needed, then submit); ``stop`` asks it to checkpoint its runs and exit, and
waits until it has.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from supervisor.cli.connection import (
    connect,
    daemon_answers,
    daemon_errors,
    fail,
    socket_option,
)
from supervisor.cli.follow import wait_for_final_state
from supervisor.cli.main import EXIT_FAILED, EXIT_NO_DAEMON, EXIT_OK, EXIT_USAGE, cli
from supervisor.settings import SYSTEM_SOCKET, Settings, SettingsError, load_settings

#: How long ``geod start`` waits for a new background daemon to accept connections.
#: Generous because a first start may initialise the embedded PostgreSQL (initdb).
DEFAULT_START_TIMEOUT = 60.0
#: Extra wait of ``geod stop`` beyond the daemon's ``kill_grace``: after SIGKILLing
#: leftover workers it still flushes telemetry and stops the embedded database.
STOP_MARGIN = 30.0
#: How often ``geod stop`` checks whether the daemon has gone.
STOP_POLL_INTERVAL = 0.1

_settings_option = click.option(
    "--config",
    "settings_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Daemon settings file (default: the user's or, with --system, the system one).",
)
_system_option = click.option(
    "--system",
    is_flag=True,
    help="System service layout: /var/lib/geod, /run/geod/geod.sock (what systemd uses).",
)


def _load_settings(settings_path: Path | None, system: bool) -> Settings:
    try:
        return load_settings(settings_path, system=system)
    except SettingsError as exc:
        fail(str(exc), EXIT_USAGE)


@cli.command()
@_settings_option
@_system_option
def serve(settings_path: Path | None, system: bool) -> None:
    """Run the daemon in the foreground until SIGTERM or Ctrl-C (what systemd runs).

    Logs go to stderr (the journal under systemd). With Type=notify, systemd is told
    READY=1 once the socket accepts connections.
    """
    from supervisor.detach import serve as serve_foreground

    sys.exit(serve_foreground(_load_settings(settings_path, system)))


@cli.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Run name shown by status (default: from the config).")
@click.option(
    "--wait",
    is_flag=True,
    help="Block until the run ends; exit 0 if it is done, 1 if it failed or was killed.",
)
@click.option(
    "--start-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_START_TIMEOUT,
    show_default=True,
    help="Seconds to wait for a newly started daemon to answer.",
)
@_settings_option
@socket_option
def start(
    config: Path,
    name: str | None,
    wait: bool,
    start_timeout: float,
    settings_path: Path | None,
    socket_path: Path | None,
) -> None:
    """Submit CONFIG as a new run, starting the daemon in the background if none answers.

    Prints only the run id on stdout, so RUN=$(geod start config.yml) works.
    """
    from pipeline.config import ConfigError, load_config

    config = config.resolve()
    try:
        load_config(config)  # fail fast, before a daemon is started for nothing
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    settings = _load_settings(settings_path, system=False)
    if socket_path is not None:
        settings = settings.model_copy(update={"socket_path": socket_path})
    _ensure_daemon(settings, start_timeout)
    with connect(settings.socket_path) as client:
        run = client.submit(str(config), name or None)
    click.echo(run.id)
    if wait:
        final = wait_for_final_state(settings.socket_path, run.id)
        sys.exit(EXIT_OK if final.state == "done" else EXIT_FAILED)


def _ensure_daemon(settings: Settings, timeout: float) -> None:
    """Answering daemon, or a new background one (told on stderr, stdout stays the id)."""
    from supervisor.detach import DaemonStartError, log_path, start_background

    with daemon_errors(settings.socket_path):
        if daemon_answers(settings.socket_path):
            return
        if settings.socket_path == SYSTEM_SOCKET:
            # A user daemon on the service's socket would only confuse both.
            fail(
                f"the geod service is not running (nothing answers on {SYSTEM_SOCKET}); "
                "start it with `sudo systemctl start geod`",
                EXIT_NO_DAEMON,
            )
        try:
            start_background(settings, timeout)
        except DaemonStartError as exc:
            # Lost a race with another `geod start`? Then its daemon answers now.
            if not daemon_answers(settings.socket_path):
                fail(str(exc), EXIT_FAILED)
            return
    click.echo(f"geod: daemon started (log: {log_path(settings)})", err=True)


@cli.command()
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help=f"Seconds to wait for the daemon to exit (default: its kill grace + {STOP_MARGIN:g} s).",
)
@socket_option
def stop(timeout: float | None, socket_path: Path | None) -> None:
    """Stop the daemon gracefully: runs stop at a checkpoint, then it exits. Waits for it.

    "Exited" means the process is gone, not merely the socket closed: telemetry is
    flushed and an embedded database stopped only after the socket closes.
    """
    from supervisor.detach import process_alive

    if timeout is None:
        timeout = _load_settings(None, system=False).kill_grace + STOP_MARGIN
    with connect(socket_path) as client:
        pid = client.hello.pid
        client.stop_daemon()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid):
            click.echo("geod: daemon stopped", err=True)
            return
        time.sleep(STOP_POLL_INTERVAL)
    fail(f"the daemon (pid {pid}) is still stopping after {timeout:g} s (runs checkpointing?)")
