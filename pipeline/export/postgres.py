"""PostgreSQL output: COPY into a staging table, renamed over the target in one transaction.

The whole export is one transaction: the rows are COPYed (CSV produced by
Arrow's writer, so no per-row Python) into a fresh ``geod_partial_XXXXXXXX``
table, validated through the same connection, and only then is the old table
dropped and the staging table renamed to ``export.postgres.table``. A failure
or a killed worker rolls everything back: readers never see a half-loaded
table, and nothing is left behind to clean. Schema and table names are
validated by the config and always composed with ``psycopg2.sql.Identifier``,
never interpolated into SQL text.
"""

from __future__ import annotations

import contextlib
import io
import json
import secrets
from typing import Any

import numpy as np
import psycopg2
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg2 import sql
from psycopg2.extensions import parse_dsn

from pipeline.config import ExportFormat, PostgresExportOptions
from pipeline.export.atomic import ExportError
from pipeline.export.base import Exporter
from pipeline.grid import TargetGrid
from pipeline.merge import SCHEMA_METADATA_KEY

#: Arrow type → PostgreSQL column type (the narrowest type that holds every value).
_PG_TYPES: dict[pa.DataType, str] = {
    pa.float32(): "real",
    pa.float64(): "double precision",
    pa.int8(): "smallint",
    pa.uint8(): "smallint",
    pa.int16(): "smallint",
    pa.uint16(): "integer",
    pa.int32(): "integer",
    pa.uint32(): "bigint",
    pa.int64(): "bigint",
    pa.bool_(): "boolean",
}
#: Rows per COPY: bounds the CSV text held in memory (~5 MB) whatever the chunk size.
COPY_ROWS = 100_000
_STAGING_PREFIX = "geod_partial_"
_STAGING_TOKEN_BYTES = 4


def describe_url(url: str) -> str:
    """The URL without its password, for error messages."""
    try:
        params = parse_dsn(url)
    except psycopg2.ProgrammingError:
        return "<unparsable database URL>"
    host = params.get("host", "localhost")
    port = params.get("port", "5432")
    return f"{params.get('user', '')}@{host}:{port}/{params.get('dbname', '')}"


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def column_type(field: pa.Field) -> sql.Composable:
    try:
        pg_type = _PG_TYPES[field.type]
    except KeyError:
        raise ExportError(
            f"postgres export: column {field.name!r} has type {field.type}, "
            "which has no PostgreSQL mapping"
        ) from None
    not_null = "" if field.nullable else " NOT NULL"
    return sql.SQL("{} {}").format(sql.Identifier(field.name), sql.SQL(pg_type + not_null))


class PostgresExporter(Exporter):
    """Streams merged batches into ``schema.table`` with COPY, atomically."""

    format = ExportFormat.postgres

    def __init__(self, url: str, schema: pa.Schema, options: PostgresExportOptions) -> None:
        super().__init__()
        self.schema = schema
        self.options = options
        self._where = describe_url(url)
        self._schema_id = sql.Identifier(options.schema_name)
        self._staging = f"{_STAGING_PREFIX}{secrets.token_hex(_STAGING_TOKEN_BYTES)}"
        self._staging_id = sql.Identifier(options.schema_name, self._staging)
        self._columns = sql.SQL(", ").join(sql.Identifier(name) for name in schema.names)
        try:
            self._conn: Any = psycopg2.connect(url)
        except psycopg2.Error as exc:
            raise ExportError(
                f"postgres export: cannot connect to {self._where}: {first_line(exc)}"
            ) from None
        definition = sql.SQL(", ").join(column_type(field) for field in schema)
        self._execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(self._schema_id),
            sql.SQL("CREATE TABLE {} ({})").format(self._staging_id, definition),
        )

    @property
    def target(self) -> str:
        return f"{self.options.schema_name}.{self.options.table}"

    def _execute(self, *statements: sql.Composable, params: Any = None) -> list[tuple]:
        """Run statements in the export's transaction; any database error aborts it."""
        try:
            with self._conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement, params)
                return cur.fetchall() if cur.description else []
        except psycopg2.Error as exc:
            self.abort()
            raise ExportError(f"postgres export to {self.target}: {first_line(exc)}") from None

    def write(self, batch: pa.RecordBatch) -> None:
        copy = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(
            self._staging_id, self._columns
        )
        options = pacsv.WriteOptions(include_header=False)
        for start in range(0, batch.num_rows, COPY_ROWS):
            piece = batch.slice(start, COPY_ROWS)
            buffer = io.BytesIO()
            pacsv.write_csv(piece, buffer, options)
            buffer.seek(0)
            try:
                with self._conn.cursor() as cur:
                    cur.copy_expert(copy, buffer)
            except psycopg2.Error as exc:
                self.abort()
                raise ExportError(f"postgres export to {self.target}: {first_line(exc)}") from None
            self.rows += piece.num_rows

    def close(self) -> None:
        """Rows are already in the staging table; nothing is visible until commit."""

    def read_back(self, keys: np.ndarray, grid: TargetGrid) -> dict[int, dict[str, Any]]:
        t = grid.transform
        if "row" in self.schema.names:
            key = sql.SQL("{}::bigint * %(width)s + {}").format(
                sql.Identifier("row"), sql.Identifier("col")
            )
        else:
            key = sql.SQL(
                "round(({y} - %(f)s) / %(e)s - 0.5)::bigint * %(width)s"
                " + round(({x} - %(c)s) / %(a)s - 0.5)::bigint"
            ).format(x=sql.Identifier("x"), y=sql.Identifier("y"))
        query = sql.SQL("SELECT {key}, {columns} FROM {table} WHERE {key} = ANY(%(keys)s)").format(
            key=key, columns=self._columns, table=self._staging_id
        )
        params = {
            "width": grid.width,
            "a": t.a,
            "c": t.c,
            "e": t.e,
            "f": t.f,
            "keys": [int(k) for k in keys],
        }
        found: dict[int, dict[str, Any]] = {}
        for row in self._execute(query, params=params):
            if row[0] in found:
                cell_row, cell_col = divmod(row[0], grid.width)
                raise ExportError(
                    f"{self.target}: cell row {cell_row} col {cell_col} appears twice"
                )
            found[row[0]] = dict(zip(self.schema.names, row[1:], strict=True))
        return found

    def commit(self) -> dict[str, object]:
        final = sql.Identifier(self.options.schema_name, self.options.table)
        provenance = (self.schema.metadata or {}).get(SCHEMA_METADATA_KEY, b"{}").decode()
        self._execute(
            sql.SQL("DROP TABLE IF EXISTS {}").format(final),
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                self._staging_id, sql.Identifier(self.options.table)
            ),
            sql.SQL("COMMENT ON TABLE {} IS %(comment)s").format(final),
            params={"comment": json.dumps({"geod": json.loads(provenance)})},
        )
        try:
            self._conn.commit()
        except psycopg2.Error as exc:
            self.abort()
            raise ExportError(f"postgres export to {self.target}: {first_line(exc)}") from None
        self._conn.close()
        return {"rows": self.rows, "table": self.target, "database": self._where}

    def abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg2.Error):
                conn.rollback()
            conn.close()
