"""``geod db migrate|url|psql``: the telemetry database the daemon writes to.

The database is resolved exactly as the daemon does (settings file, then
``GEOD_DATABASE_URL``, else the embedded server in the state directory), so
``geod db psql`` always opens the tables of the runs ``geod status`` shows.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import click
import psycopg2
from psycopg2.extensions import make_dsn, parse_dsn

from supervisor.cli.connection import fail
from supervisor.cli.main import EXIT_FAILED, EXIT_USAGE
from supervisor.database import Database, configured_url, open_database
from supervisor.embedded import EmbeddedError, EmbeddedPostgres, psql_path
from supervisor.settings import Settings, SettingsError, load_settings
from supervisor.telemetry import SPOOL_DIR_NAME
from supervisor.telemetry.identity import INSTANCE_FILE
from supervisor.telemetry.migrate import MigrationError, available, migrate


def _settings(ctx: click.Context) -> Settings:
    try:
        return load_settings(ctx.obj["settings_path"], system=ctx.obj["system"])
    except SettingsError as exc:
        fail(str(exc), EXIT_USAGE)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        params = parse_dsn(url)
    except psycopg2.ProgrammingError:
        return "<unparsable database URL>"
    params.pop("password", None)
    return make_dsn(**params)


def _open(settings: Settings, keep_running: bool = False) -> Database:
    try:
        return open_database(settings.database_url, settings.state_dir, keep_running=keep_running)
    except EmbeddedError as exc:
        fail(str(exc), EXIT_FAILED)


@click.group("db")
@click.option(
    "--config",
    "settings_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Daemon settings file (default: the user's or, with --system, the system one).",
)
@click.option("--system", is_flag=True, help="Use the system service's settings and state.")
@click.pass_context
def db(ctx: click.Context, settings_path: Path | None, system: bool) -> None:
    """The telemetry database: migrate it, print its URL, or open psql on it."""
    ctx.obj = {"settings_path": settings_path, "system": system}


@db.command("migrate")
@click.pass_context
def migrate_cmd(ctx: click.Context) -> None:
    """Create or upgrade the geod schema (the daemon also does this when it starts)."""
    database = _open(_settings(ctx))
    try:
        conn = psycopg2.connect(database.url)
    except psycopg2.OperationalError as exc:
        database.close()
        fail(f"cannot connect to {_redacted(database.url)}: {_first_line(exc)}", EXIT_FAILED)
    try:
        applied = migrate(conn)
    except (MigrationError, psycopg2.Error) as exc:
        fail(f"migration failed on {_redacted(database.url)}: {_first_line(exc)}", EXIT_FAILED)
    finally:
        conn.close()
        database.close()
    names = {m.version: f"{m.version:04d}_{m.name}" for m in available()}
    for version in applied:
        click.echo(f"applied {names[version]}")
    if not applied:
        click.echo(f"schema geod is up to date ({names[max(names)]})")


@db.command("url")
@click.pass_context
def url_cmd(ctx: click.Context) -> None:
    """Print the connection URL (starting the embedded server if it is the one in use).

    An embedded server started here keeps running so the URL can be used; the
    daemon stops it when it exits.
    """
    settings = _settings(ctx)
    if configured_url(settings.database_url) is None:
        was_running = EmbeddedPostgres.in_state_dir(settings.state_dir).running()
        database = _open(settings, keep_running=True)
        if not was_running:
            click.echo(
                f"geod: started the embedded PostgreSQL in {database.embedded.data_dir}",
                err=True,
            )
    else:
        database = _open(settings)
    click.echo(database.url)


def _instance_options(settings: Settings, every_daemon: bool) -> dict[str, str]:
    """PGOPTIONS naming this daemon's instance, so the geod views show its runs only."""
    path = settings.state_dir / SPOOL_DIR_NAME / INSTANCE_FILE
    if every_daemon or not path.exists():
        return {}
    options = os.environ.get("PGOPTIONS", "")
    return {"PGOPTIONS": f"{options} -c geod.instance={path.read_text().strip()}".strip()}


@db.command("psql", context_settings={"ignore_unknown_options": True})
@click.option(
    "--all-daemons",
    is_flag=True,
    help="Views show every daemon's runs (default: this daemon's, in a shared database).",
)
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def psql_cmd(ctx: click.Context, all_daemons: bool, psql_args: tuple[str, ...]) -> None:
    """Open psql on the telemetry database (extra arguments go to psql).

    Uses the psql on PATH, else the one shipped with the embedded server. The
    session's ``geod.instance`` setting names this daemon, so the ``geod.v_*``
    views select its runs; tables hold every daemon's rows (``run_key``,
    ``geod.runs.instance``).
    """
    executable = shutil.which("psql")
    if executable is None:
        bundled = Path(psql_path())
        if not bundled.exists():
            fail(
                "psql is not installed (install the PostgreSQL client, e.g. "
                "apt-get install postgresql-client)",
                EXIT_FAILED,
            )
        executable = str(bundled)
    settings = _settings(ctx)
    env = {**os.environ, **_instance_options(settings, all_daemons)}
    database = _open(settings)
    # psql owns the terminal: Ctrl-C cancels its query, it must not kill us (we
    # still have to stop an embedded server started for this session).
    try:
        child = subprocess.Popen([executable, *psql_args, database.url], env=env)
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            code = child.wait()
        finally:
            signal.signal(signal.SIGINT, previous)
    finally:
        database.close()
    sys.exit(code)
