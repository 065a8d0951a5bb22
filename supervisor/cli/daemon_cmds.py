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
from supervisor.cli.main import EXIT_FAILED, EXIT_NO_DAEMON, EXIT_OK, EXIT_USAGE
from supervisor.cli.timespec import Moment, Span
from supervisor.protocol import LABEL_KEY, SubmitParams
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


@click.command()
@_settings_option
@_system_option
def serve(settings_path: Path | None, system: bool) -> None:
    """Run the daemon in the foreground until SIGTERM or Ctrl-C (what systemd runs).

    Logs go to stderr (the journal under systemd). With Type=notify, systemd is told
    READY=1 once the socket accepts connections.
    """
    from supervisor.detach import serve as serve_foreground

    sys.exit(serve_foreground(_load_settings(settings_path, system)))


@click.command()
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
@click.option(
    "--priority",
    type=int,
    default=0,
    show_default=True,
    help="Higher starts first among queued runs (ties: submission order).",
)
@click.option(
    "--after",
    "after",
    multiple=True,
    metavar="RUN[,RUN...]",
    help="Start only once these runs ended done; fail if one fails or is killed. Repeatable.",
)
@click.option("--delay", type=Span(), help="Start no earlier than this from now (30m, 2h, 1d).")
@click.option(
    "--at", "at", type=Moment(), help="Start no earlier than this time (2026-12-24T02:00, 02:00)."
)
@click.option(
    "--label", "labels", multiple=True, metavar="KEY=VALUE", help="Tag the run. Repeatable."
)
@_settings_option
@socket_option
def start(
    config: Path,
    name: str | None,
    wait: bool,
    start_timeout: float,
    priority: int,
    after: tuple[str, ...],
    delay: float | None,
    at: float | None,
    labels: tuple[str, ...],
    settings_path: Path | None,
    socket_path: Path | None,
) -> None:
    """Submit CONFIG as a new run, starting the daemon in the background if none answers.

    Prints only the run id on stdout, so RUN=$(geod start config.yml) works. With
    --delay or --at the run is "scheduled" until then; with --after it waits in the
    queue for the runs it names.
    """
    from pipeline.config import ConfigError, load_config

    if delay is not None and at is not None:
        raise click.UsageError("give --delay or --at, not both")
    request = SubmitParams(
        config_path=str(config.resolve()),
        name=name or None,
        priority=priority,
        after=[run for value in after for run in value.split(",") if run],
        start_at=time.time() + delay if delay is not None else at,
        labels=_labels(labels),
    )
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
        run = client.submit(request)
    click.echo(run.id)
    if wait:
        final = wait_for_final_state(settings.socket_path, run.id)
        sys.exit(EXIT_OK if final.state == "done" else EXIT_FAILED)


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    """``KEY=VALUE`` options as a mapping; a malformed one is a usage error naming it."""
    labels: dict[str, str] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not LABEL_KEY.fullmatch(key):
            raise click.BadParameter(
                f"{value!r} is not KEY=VALUE with a word as KEY", param_hint="'--label'"
            )
        labels[key] = text
    return labels


def _ensure_daemon(settings: Settings, timeout: float) -> None:
    """Answering daemon, or a new background one (told on stderr, stdout stays the id)."""
    from supervisor.detach import DaemonStartError, log_path, start_background, start_lock

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
            with start_lock(settings, timeout):
                # Another `geod start` may have started it while this one waited.
                if daemon_answers(settings.socket_path):
                    return
                start_background(settings, timeout)
        except DaemonStartError as exc:
            # A daemon started by other means (geod serve) answers now? Then use it.
            if not daemon_answers(settings.socket_path):
                fail(str(exc), EXIT_FAILED)
            return
        except OSError as exc:
            fail(f"cannot use state directory {settings.state_dir}: {exc.strerror or exc}")
    click.echo(f"geod: daemon started (log: {log_path(settings)})", err=True)


@click.command()
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
