"""Which PostgreSQL geod's telemetry goes to.

Order: the settings' ``database_url``, else ``GEOD_DATABASE_URL``, else the
embedded server in ``STATE_DIR/postgres`` (started on demand, stopped by
:meth:`Database.close` when no other live process uses it). The daemon and ``geod db``
both resolve through here, so they always talk to the same database.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.contract import DATABASE_URL_ENV
from supervisor.embedded import EmbeddedPostgres


@dataclass
class Database:
    """A resolved database: its URL and, if embedded, the server handle."""

    url: str
    embedded: EmbeddedPostgres | None = None

    def close(self) -> None:
        """Stop the embedded server unless another live process still uses it."""
        if self.embedded is not None:
            self.embedded.release()


def configured_url(settings_url: str | None) -> str | None:
    """The explicitly configured URL, if any (settings win over the environment)."""
    return settings_url or os.environ.get(DATABASE_URL_ENV) or None


def open_database(
    settings_url: str | None, state_dir: Path, keep_running: bool = False
) -> Database:
    """Resolve the telemetry database, starting the embedded server if none is configured.

    ``keep_running`` leaves an embedded server this call starts running after this
    process exits (``geod db url``: the printed URL must stay usable).
    """
    url = configured_url(settings_url)
    if url is not None:
        return Database(url)
    server = EmbeddedPostgres.in_state_dir(state_dir, keep_running=keep_running)
    return Database(server.start(), server)
