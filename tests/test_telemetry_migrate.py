"""Schema migrations on a real PostgreSQL: from empty, re-run, concurrent, tampered."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg2
import pytest

from supervisor.telemetry.migrate import (
    MIGRATIONS_DIR,
    MigrationError,
    available,
    migrate,
    migrate_url,
)

TABLES = {
    "runs",
    "stages",
    "progress",
    "memory_samples",
    "log_records",
    "events",
    "checkpoints",
    "raster_sources",
    "schema_migrations",
}


def _catalog(url: str) -> tuple[set[str], set[str], list[int]]:
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT table_name, table_type FROM information_schema.tables"
            " WHERE table_schema = 'geod'"
        )
        rows = cur.fetchall()
        cur.execute("SELECT version FROM geod.schema_migrations ORDER BY version")
        versions = [v for (v,) in cur.fetchall()]
    conn.close()
    tables = {name for name, kind in rows if kind == "BASE TABLE"}
    views = {name for name, kind in rows if kind == "VIEW"}
    return tables, views, versions


def test_from_empty_then_rerun_is_a_noop(database_url: str) -> None:
    everything = [m.version for m in available()]
    assert migrate_url(database_url) == everything
    tables, views, versions = _catalog(database_url)
    assert tables == TABLES
    assert views == {"v_memory_by_stage", "v_memory_timeline", "v_watched_sources"}
    assert versions == everything

    assert migrate_url(database_url) == []
    assert _catalog(database_url)[2] == everything


def test_racing_migrations_apply_each_version_once(database_url: str) -> None:
    results: list[list[int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def run() -> None:
        conn = psycopg2.connect(database_url)
        try:
            start.wait()
            results.append(migrate(conn))
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    applied = sorted(v for result in results for v in result)
    assert applied == [m.version for m in available()], "each version applied by exactly one"


def test_changed_applied_migration_is_refused(database_url: str, tmp_path: Path) -> None:
    copy = tmp_path / "migrations"
    copy.mkdir()
    for source in MIGRATIONS_DIR.glob("*.sql"):
        (copy / source.name).write_text(source.read_text())
    conn = psycopg2.connect(database_url)
    try:
        migrate(conn, copy)
        first = sorted(copy.glob("*.sql"))[0]
        first.write_text(first.read_text() + "\n-- edited after the fact\n")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            migrate(conn, copy)
        (copy / "0999_later.sql").write_text("CREATE TABLE geod.later (x int);")
        first.write_text(first.read_text().replace("\n-- edited after the fact\n", ""))
        assert migrate(conn, copy) == [999], "a new file is applied after the old ones"
    finally:
        conn.close()


def test_misnamed_migration_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "1_first.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        available(tmp_path)


def test_upgrade_keeps_rows_written_under_the_older_schema(
    database_url: str, tmp_path: Path
) -> None:
    first, *later = available()
    old = tmp_path / "old"
    old.mkdir()
    for source in MIGRATIONS_DIR.glob(f"{first.version:04d}_*.sql"):
        (old / source.name).write_text(source.read_text())
    conn = psycopg2.connect(database_url)
    try:
        assert migrate(conn, old) == [first.version]
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO geod.memory_samples (run, seq, time, rss) VALUES ('r', 1, now(), 42)"
            )
        conn.commit()
        assert migrate(conn) == [m.version for m in later]
        with conn.cursor() as cur:
            cur.execute("SELECT rss, warning FROM geod.v_memory_timeline WHERE run = 'r'")
            assert cur.fetchall() == [(42, None)]
    finally:
        conn.close()


def test_run_identity_migration_keeps_rows_under_a_legacy_key(
    database_url: str, tmp_path: Path
) -> None:
    """Rows written before run keys existed survive 0003 with a key from their short id,
    and afterwards a second daemon's r0001 (another key) no longer collides with them."""
    before = [m for m in available() if m.version < 3]
    old = tmp_path / "old"
    old.mkdir()
    for migration in before:
        for source in MIGRATIONS_DIR.glob(f"{migration.version:04d}_*.sql"):
            (old / source.name).write_text(source.read_text())
    conn = psycopg2.connect(database_url)
    try:
        migrate(conn, old)
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO geod.runs (id, name, state, summary, rev, updated)"
                " VALUES ('r0001', 'demo', 'done', '{}', 1, now())"
            )
            cur.execute(
                "INSERT INTO geod.events (run, seq, time, type, payload)"
                " VALUES ('r0001', 1, now(), 'log', '{}')"
            )
        conn.commit()
        assert 3 in migrate(conn)
        with conn.cursor() as cur:
            cur.execute("SELECT md5('geod-legacy:r0001')::uuid::text")
            [(legacy,)] = cur.fetchall()
            cur.execute("SELECT run_key::text, instance FROM geod.runs WHERE id = 'r0001'")
            assert cur.fetchall() == [(legacy, None)]
            cur.execute("SELECT run_key::text FROM geod.events WHERE run = 'r0001'")
            assert cur.fetchall() == [(legacy,)]
            cur.execute(
                "INSERT INTO geod.events (run, seq, time, type, payload, run_key)"
                " VALUES ('r0001', 1, now(), 'log', '{}', gen_random_uuid())"
            )
            cur.execute("SELECT count(*) FROM geod.events WHERE run = 'r0001'")
            assert cur.fetchall() == [(2,)]
        conn.commit()
    finally:
        conn.close()
