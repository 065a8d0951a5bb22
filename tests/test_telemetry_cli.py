"""``geod db migrate|url|psql`` as real processes: on a configured URL and on the embedded one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from supervisor.embedded import EmbeddedPostgres
from supervisor.telemetry.identity import load_instance
from supervisor.telemetry.migrate import available
from tests.telemetry_helpers import embedded_scratch_dir


def _geod(tmp_path: Path, *args: str, url: str | None = None) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, GEOD_STATE_DIR=str(tmp_path / "state"), XDG_CONFIG_HOME=str(tmp_path / "config")
    )
    env.pop("GEOD_DATABASE_URL", None)
    if url is not None:
        env["GEOD_DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-c", "from supervisor.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_migrate_url_psql_on_a_configured_database(database_url: str, tmp_path: Path) -> None:
    first = _geod(tmp_path, "db", "migrate", url=database_url)
    assert first.returncode == 0, first.stderr
    names = [f"{m.version:04d}_{m.name}" for m in available()]
    assert first.stdout.splitlines() == [f"applied {name}" for name in names]
    again = _geod(tmp_path, "db", "migrate", url=database_url)
    assert again.stdout.strip() == f"schema geod is up to date ({names[-1]})"

    url = _geod(tmp_path, "db", "url", url=database_url)
    assert url.stdout.strip() == database_url

    psql = _geod(
        tmp_path,
        "db",
        "psql",
        "-tAc",
        "SELECT count(*) FROM geod.schema_migrations",
        url=database_url,
    )
    assert (psql.returncode, psql.stdout.strip()) == (0, str(len(names)))
    failing = _geod(
        tmp_path,
        "db",
        "psql",
        "-c",
        "SELECT * FROM no_such_table",
        "-v",
        "ON_ERROR_STOP=1",
        url=database_url,
    )
    assert failing.returncode != 0, "psql's exit code is passed through"
    assert not (tmp_path / "state" / "postgres").exists(), "no embedded server was started"


def test_psql_names_this_daemon_for_the_views(database_url: str, tmp_path: Path) -> None:
    instance = load_instance(tmp_path / "state" / "telemetry")
    query = ("-tAc", "SELECT current_setting('geod.instance', true)")
    mine = _geod(tmp_path, "db", "psql", *query, url=database_url)
    assert (mine.returncode, mine.stdout.strip()) == (0, str(instance)), mine.stderr
    every = _geod(tmp_path, "db", "psql", "--all-daemons", *query, url=database_url)
    assert (every.returncode, every.stdout.strip()) == (0, ""), every.stderr


def test_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    down = _geod(tmp_path, "db", "migrate", url="postgresql://nobody@127.0.0.1:1/none")
    assert down.returncode == 1
    [line] = down.stderr.strip().splitlines()
    assert line.startswith("geod: cannot connect to") and "port=1" in line


def test_embedded_default_for_migrate_psql_and_url() -> None:
    with embedded_scratch_dir() as directory:
        _embedded_default(directory)


def _embedded_default(tmp_path: Path) -> None:
    migrated = _geod(tmp_path, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    latest = available()[-1]
    assert f"applied {latest.version:04d}_{latest.name}" in migrated.stdout
    server = EmbeddedPostgres.in_state_dir(tmp_path / "state")
    assert not server.running(), "a server geod db started for one command is stopped after it"

    psql = _geod(tmp_path, "db", "psql", "-tAc", "SELECT max(version) FROM geod.schema_migrations")
    assert (psql.returncode, psql.stdout.strip()) == (0, str(latest.version)), psql.stderr
    assert not server.running()

    url = _geod(tmp_path, "db", "url")
    try:
        assert url.returncode == 0 and "started the embedded PostgreSQL" in url.stderr
        assert url.stdout.strip().endswith(f"host={(tmp_path / 'state' / 'postgres').resolve()}")
        assert server.running(), "the printed URL stays usable"
    finally:
        server.start()
        server.stop()
