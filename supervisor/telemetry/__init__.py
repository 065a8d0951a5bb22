"""Telemetry store: every run's rows in PostgreSQL schema ``geod``.

The daemon opens one :class:`TelemetryWriter` with :func:`open_telemetry` and
hands it every run summary and stamped event; see ``writer`` for batching and
outage handling, ``rows`` for what each event becomes, ``migrate`` for the
schema and ``retention`` for pruning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg2

from pipeline.config import TelemetryConfig
from supervisor.database import open_database
from supervisor.telemetry.migrate import migrate_url
from supervisor.telemetry.writer import TelemetryWriter

log = logging.getLogger("geod.telemetry")

#: Subdirectory of the state directory holding the spool and rejected records.
SPOOL_DIR_NAME = "telemetry"

__all__ = ["TelemetryWriter", "open_telemetry"]


def open_telemetry(
    database_url: str | None, state_dir: Path, config: TelemetryConfig | None = None
) -> TelemetryWriter:
    """Resolve the database (embedded if none configured), migrate it, start the writer.

    ``database_url`` is the daemon's configured URL (None: embedded server in
    ``state_dir``). ``config`` gives flush_interval, batch_size and
    retention_days (defaults: :class:`pipeline.config.TelemetryConfig`). A
    database that is down now is not an error: the writer spools until it is
    back; an embedded server that dies is started again. Closing the writer
    also stops an embedded server this call started.
    Raises :class:`supervisor.embedded.EmbeddedError` if the embedded server
    cannot start and :class:`~supervisor.telemetry.migrate.MigrationError` if
    the schema does not match this geod.
    """
    telemetry = config or TelemetryConfig()
    database = open_database(database_url, state_dir)
    try:
        migrate_url(database.url)
    except psycopg2.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("telemetry database not reachable yet (%s); will retry", reason)
    except BaseException:
        database.close()
        raise
    writer = TelemetryWriter(
        database.url,
        state_dir / SPOOL_DIR_NAME,
        flush_interval=telemetry.flush_interval,
        batch_size=telemetry.batch_size,
        retention_days=telemetry.retention_days,
        on_close=database.close,
        ensure_server=None if database.embedded is None else database.embedded.start,
    )
    return writer.start()
