"""``geod report RUN [-o FILE]`` and ``geod open RUN``: a run's report and its merged stack.

RUN is a daemon run id (``r0003``), a daemon run directory (``config.yml`` +
``work/``), or the ``config.yml`` of a ``geod run``. For a daemon run the events
come from telemetry when its database answers (plus the daemon's memory samples
and the run's recorded state and times), else from the run directory's
``events.ndjson``; a ``geod run`` has only the worker's own history in its work
directory. Both verbs spawn a pipeline module (``python -m pipeline.report`` /
``python -m pipeline.stack``) like every other verb: the supervisor does not
import pipeline internals.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import psycopg2

from supervisor.cli.main import EXIT_UNKNOWN_RUN, EXIT_USAGE
from supervisor.database import configured_url, open_database
from supervisor.embedded import EmbeddedPostgres
from supervisor.runs import CONFIG_NAME, EVENTS_NAME, RUN_ID_PATTERN, WORK_NAME
from supervisor.settings import SettingsError, load_settings
from supervisor.telemetry import SPOOL_DIR_NAME
from supervisor.telemetry.identity import load_instance, run_key

#: Seconds to wait for the telemetry database before using the run directory instead.
CONNECT_TIMEOUT = 5


@dataclass(frozen=True)
class RunLocation:
    """Where a run's config, work directory and (daemon runs) history are."""

    config: Path
    work_dir: Path | None
    run_id: str | None
    events: Path | None


def locate_run(run: str) -> RunLocation:
    """Resolve RUN (id, run directory or config file); exits 2/4 with one line if unknown."""
    path = Path(run)
    if path.is_file():
        return RunLocation(path, None, None, None)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            click.echo(f"geod: {path}: no {CONFIG_NAME}; is it a run directory?", err=True)
            sys.exit(EXIT_USAGE)
        return RunLocation(path / CONFIG_NAME, path / WORK_NAME, path.name, path / EVENTS_NAME)
    if not RUN_ID_PATTERN.match(run):
        click.echo(f"geod: {run}: no such run id, run directory or config file", err=True)
        sys.exit(EXIT_USAGE)
    try:
        state_dir = load_settings().state_dir
    except SettingsError as exc:
        click.echo(f"geod: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    run_dir = state_dir / "runs" / run
    if not (run_dir / CONFIG_NAME).is_file():
        click.echo(f"geod: unknown run {run} (no {run_dir})", err=True)
        sys.exit(EXIT_UNKNOWN_RUN)
    return RunLocation(run_dir / CONFIG_NAME, run_dir / WORK_NAME, run, run_dir / EVENTS_NAME)


def telemetry_url() -> str | None:
    """The telemetry database if one is configured or already running; never starts one."""
    settings = load_settings()
    if configured_url(settings.database_url) is None and not (
        EmbeddedPostgres.in_state_dir(settings.state_dir).running()
    ):
        return None
    return open_database(settings.database_url, settings.state_dir).url


def fetch_telemetry(url: str, run_id: str, folder: Path) -> list[str] | None:
    """Write the run's events, memory samples and times from telemetry into ``folder``.

    Rows are selected by the run's global key (this state directory's daemon and
    ``run_id``), so another daemon's run of the same short id in a shared
    database is never mixed in.

    Returns the extra worker arguments, or None when telemetry has no events of it.
    """
    with (
        psycopg2.connect(url, connect_timeout=CONNECT_TIMEOUT) as conn,
        conn.cursor() as cur,
    ):
        key = str(run_key(load_instance(load_settings().state_dir / SPOOL_DIR_NAME), run_id))
        cur.execute("SELECT payload FROM geod.events WHERE run_key = %s ORDER BY seq", (key,))
        events = [row[0] for row in cur.fetchall()]
        if not events:
            return None
        cur.execute(
            "SELECT extract(epoch FROM time), rss, window_size FROM geod.memory_samples "
            "WHERE run_key = %s ORDER BY seq",
            (key,),
        )
        samples = [
            {"time": float(t), "rss": int(rss), "window_size": window}
            for t, rss, window in cur.fetchall()
        ]
        cur.execute(
            "SELECT state, extract(epoch FROM started), extract(epoch FROM finished) "
            "FROM geod.runs WHERE run_key = %s",
            (key,),
        )
        row = cur.fetchone()
    (folder / "events.ndjson").write_text("".join(json.dumps(e) + "\n" for e in events))
    (folder / "memory.ndjson").write_text("".join(json.dumps(s) + "\n" for s in samples))
    args = ["--events", str(folder / "events.ndjson"), "--memory", str(folder / "memory.ndjson")]
    if row is not None:
        state, started, finished = row
        times = {"started": started and float(started), "finished": finished and float(finished)}
        (folder / "times.json").write_text(json.dumps(times))
        args += ["--state", state, "--times", str(folder / "times.json")]
    return [*args, "--origin", "telemetry"]


@contextlib.contextmanager
def report_arguments(location: RunLocation) -> Iterator[list[str]]:
    """Worker arguments naming the run's history: telemetry first, else its files."""
    args = [str(location.config)]
    if location.work_dir is not None:
        args += ["--work-dir", str(location.work_dir)]
    if location.run_id is not None:
        args += ["--run-id", location.run_id]
    with tempfile.TemporaryDirectory(prefix="geod-report-") as folder:
        extra: list[str] | None = None
        reason = "no telemetry database configured or running"
        if location.events is not None:
            try:
                url = telemetry_url()
                if url is not None and location.run_id is not None:
                    extra = fetch_telemetry(url, location.run_id, Path(folder))
                    reason = "telemetry has no events of this run"
            except (psycopg2.Error, OSError, SettingsError) as exc:
                reason = f"telemetry unreachable: {str(exc).strip().splitlines()[0]}"
        if extra is None and location.events is not None:
            extra = ["--events", str(location.events), "--origin", f"run directory ({reason})"]
        yield args + (extra or [])


@click.command("report")
@click.argument("run")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Default: OUTPUT_DIR/report.html."
)
def report(run: str, output: Path | None) -> None:
    """Write the self-contained HTML report of RUN (finished or not)."""
    location = locate_run(run)
    with report_arguments(location) as args:
        if output is not None:
            args += ["--output", str(output)]
        sys.exit(subprocess.call([sys.executable, "-m", "pipeline.report", *args]))


@click.command("open")
@click.argument("run")
def open_stack(run: str) -> None:
    """Show RUN's merged stack as xarray sees it (pipeline.stack.open_stack in Python)."""
    location = locate_run(run)
    args = [str(location.config)]
    if location.work_dir is not None:
        args += ["--work-dir", str(location.work_dir)]
    sys.exit(subprocess.call([sys.executable, "-m", "pipeline.stack", *args]))
