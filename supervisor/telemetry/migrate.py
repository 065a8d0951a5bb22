"""Versioned migrations of the ``geod`` schema.

Each ``migrations/NNNN_name.sql`` file is applied once, in version order, inside
its own transaction, and recorded in ``geod.schema_migrations`` with a checksum.
The whole run holds a PostgreSQL advisory lock so a daemon starting while
``geod db migrate`` runs (or two daemons racing) serialise instead of both
trying to create the same tables. An applied file whose text later changed is
an error rather than silently ignored: the database would no longer match the
code that reads it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from psycopg2.extensions import connection as Connection

SCHEMA = "geod"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
#: Arbitrary but fixed advisory-lock key shared by every geod process ("geod" in ASCII).
ADVISORY_LOCK_KEY = 0x67656F64


class MigrationError(RuntimeError):
    """The database's migration history does not match the migration files."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Migration files in version order; a misnamed or duplicate version is an error."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files must be named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path}: duplicate migration version {version}")
        found[version] = Migration(version, match.group(2), path.read_text())
    return [found[v] for v in sorted(found)]


def applied(conn: Connection) -> dict[int, str]:
    """version → checksum of the migrations recorded in the database ({} if none)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.schema_migrations",))
        if cur.fetchone()[0] is None:
            conn.rollback()
            return {}
        cur.execute(f"SELECT version, checksum FROM {SCHEMA}.schema_migrations")
        rows = dict(cur.fetchall())
    conn.rollback()
    return rows


def migrate(conn: Connection, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply every pending migration; return the versions applied by this call.

    Safe to call on every connect: with nothing pending it costs two queries.
    The connection is left idle (not in a transaction) and in its original
    autocommit mode.
    """
    migrations = available(directory)
    autocommit = conn.autocommit
    conn.autocommit = False
    done: list[int] = []
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        conn.commit()
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
                cur.execute(
                    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations (
                        version    integer PRIMARY KEY,
                        name       text NOT NULL,
                        checksum   text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now())"""
                )
            conn.commit()
            recorded = applied(conn)
            unknown = sorted(set(recorded) - {m.version for m in migrations})
            if unknown:
                raise MigrationError(
                    f"database has migrations {unknown} that this geod does not know "
                    "(written by a newer version?)"
                )
            for migration in migrations:
                checksum = recorded.get(migration.version)
                if checksum is not None:
                    if checksum != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version:04d}_{migration.name} was changed "
                            "after it was applied to this database"
                        )
                    continue
                with conn.cursor() as cur:
                    cur.execute(migration.sql)
                    cur.execute(
                        f"INSERT INTO {SCHEMA}.schema_migrations (version, name, checksum)"
                        " VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                conn.commit()
                done.append(migration.version)
        finally:
            conn.rollback()
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
            conn.commit()
    finally:
        conn.autocommit = autocommit
    return done


def migrate_url(url: str) -> list[int]:
    """Connect to ``url``, apply pending migrations, disconnect."""
    conn = psycopg2.connect(url)
    try:
        return migrate(conn)
    finally:
        conn.close()
