"""What every daemon-facing verb shares: the socket option, the client call, the error → exit
code mapping and the ``RUN|--all`` selection.

Keeping these in one place is what makes the verbs behave alike: one "daemon not running"
message and exit code, one way to name a run, one set of options (as pueue's subcommands do).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from pipeline.contract import SOCKET_ENV
from supervisor.cli.main import (
    EXIT_BAD_STATE,
    EXIT_FAILED,
    EXIT_NO_DAEMON,
    EXIT_UNKNOWN_RUN,
    EXIT_USAGE,
)
from supervisor.protocol import ErrorCode, ProtocolError, Selection

#: Environment variable naming the daemon socket, like pueue's ``--config`` or ``DOCKER_HOST``.

#: Daemon error code → the documented exit code of the command that received it.
_EXIT_BY_ERROR: dict[int, int] = {
    ErrorCode.UNKNOWN_RUN: EXIT_UNKNOWN_RUN,
    ErrorCode.BAD_STATE: EXIT_BAD_STATE,
    ErrorCode.BAD_CONFIG: EXIT_USAGE,
    ErrorCode.INVALID_PARAMS: EXIT_USAGE,
}

if TYPE_CHECKING:
    from supervisor.client import Client

F = TypeVar("F", bound=Callable[..., Any])


class GeodError(click.ClickException):
    """One line on stderr and a documented exit code; never a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"geod: {self.format_message()}", err=True, file=file)


def fail(message: str, exit_code: int = EXIT_FAILED) -> NoReturn:
    raise GeodError(message, exit_code)


socket_option = click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=SOCKET_ENV,
    show_envvar=True,
    help="Daemon socket (default: from the geod settings, usually "
    "$XDG_RUNTIME_DIR/geod/geod.sock).",
)

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON for scripts instead of tables."
)


def resolve_socket(socket_path: Path | None) -> Path:
    """The socket to talk to: ``--socket``/``$GEOD_SOCKET``, else what the settings say."""
    if socket_path is not None:
        return socket_path
    # The settings bring yaml, psutil and the pipeline config models (~0.15 s to import):
    # only for finding the socket, which --socket or $GEOD_SOCKET already names.
    from supervisor.settings import SettingsError, load_settings

    try:
        return load_settings().socket_path
    except SettingsError as exc:
        fail(str(exc), EXIT_USAGE)


@contextmanager
def daemon_errors(socket_path: Path) -> Iterator[None]:
    """Turn client failures into the documented exit codes with one clear line."""
    from supervisor.client import DaemonNotRunning

    try:
        yield
    except DaemonNotRunning as exc:
        fail(f"{exc}; start one with `geod start CONFIG` or `geod serve`", EXIT_NO_DAEMON)
    except ProtocolError as exc:
        fail(exc.message, _EXIT_BY_ERROR.get(exc.code, EXIT_FAILED))
    except TimeoutError as exc:  # the daemon accepted but did not answer in time
        fail(str(exc), EXIT_FAILED)
    except PermissionError:
        fail(
            f"permission denied on {socket_path}: the daemon belongs to another user "
            "(for the system service, join its socket group)",
            EXIT_FAILED,
        )
    except OSError as exc:
        fail(f"cannot connect to {socket_path}: {exc.strerror or exc}", EXIT_FAILED)


@contextmanager
def connect(socket_path: Path | None) -> Iterator[Client]:
    """A connected client (``hello`` done) for several calls; errors mapped to exit codes."""
    from supervisor.client import Client

    path = resolve_socket(socket_path)
    with daemon_errors(path), Client(path) as client:
        yield client


def daemon_answers(socket_path: Path) -> bool:
    """Does a daemon accept connections and say ``hello`` on ``socket_path``?"""
    from supervisor.client import Client, DaemonNotRunning

    try:
        with Client(socket_path):
            return True
    except DaemonNotRunning:
        return False


def run_selection(*, allow_all: bool = True) -> Callable[[F], F]:
    """The ``RUN|--all`` argument pair of every control verb, passed on as ``selection``.

    ``selection`` is the protocol's :class:`~supervisor.protocol.Selection`: one run
    or all of them. Exactly one of a run id or ``--all`` must be given (the
    daemon checks the same rule). With ``allow_all=False`` the verb takes just
    ``RUN`` (retry: re-running every run at once is never meant).
    """

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, run: str | None, all_runs: bool = False, **kwargs: Any) -> Any:
            if (run is None) == (not all_runs):
                raise click.UsageError(
                    "give a RUN id or --all, not both" if run else "give a RUN id or --all"
                )
            selection = Selection(all=True) if all_runs else Selection(run=run)
            return func(*args, selection=selection, **kwargs)

        command = wrapper
        if allow_all:
            command = click.option("--all", "all_runs", is_flag=True, help="Every run.")(command)
        command = click.argument("run", required=not allow_all)(command)
        return command  # type: ignore[return-value]

    return decorate
