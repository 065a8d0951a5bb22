"""Retention: drop telemetry older than ``telemetry.retention_days``.

Append-only series are cut by row time. A run's own row and its stage tree go
only once the run has finished (done/failed/killed) and has not changed since
the cutoff, so a run that is still going, or interrupted and waiting to be
resumed, keeps its tree however old it is.
"""

from __future__ import annotations

import time

import psycopg2
from psycopg2.extensions import connection as Connection

from supervisor.protocol import FINAL_STATES

SECONDS_PER_DAY = 86_400
#: Tables whose rows are cut by their own ``time`` column.
SERIES_TABLES = (
    "events",
    "progress",
    "memory_samples",
    "log_records",
    "checkpoints",
    "raster_sources",
)


def prune(conn: Connection, retention_days: int, now: float | None = None) -> dict[str, int]:
    """Delete rows older than ``retention_days``; return deleted row counts per table."""
    if retention_days < 1:
        raise ValueError(f"retention_days must be at least 1, got {retention_days}")
    cutoff = (time.time() if now is None else now) - retention_days * SECONDS_PER_DAY
    deleted: dict[str, int] = {}
    with conn.cursor() as cur:
        for table in SERIES_TABLES:
            cur.execute(f"DELETE FROM geod.{table} WHERE time < to_timestamp(%s)", (cutoff,))
            deleted[table] = cur.rowcount
        cur.execute(
            "DELETE FROM geod.runs WHERE updated < to_timestamp(%s) AND state = ANY(%s)",
            (cutoff, sorted(FINAL_STATES)),
        )
        deleted["runs"] = cur.rowcount
        cur.execute(
            "DELETE FROM geod.stages s WHERE s.updated < to_timestamp(%s)"
            " AND NOT EXISTS (SELECT 1 FROM geod.runs r WHERE r.run_key = s.run_key)",
            (cutoff,),
        )
        deleted["stages"] = cur.rowcount
    conn.commit()
    return deleted


def prune_url(url: str, retention_days: int) -> dict[str, int]:
    """:func:`prune` on a fresh connection (for callers outside the writer thread)."""
    conn = psycopg2.connect(url)
    try:
        return prune(conn, retention_days)
    finally:
        conn.close()
