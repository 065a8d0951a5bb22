"""Which PostgreSQL geod's telemetry goes to.

Order: the settings' ``database_url``, else ``GEOD_DATABASE_URL``, else the
embedded server in ``STATE_DIR/postgres`` (started on demand, stopped by
:meth:`Database.close` when this process started it). The daemon and ``geod db``
both resolve through here, so they always talk to the same database.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from supervisor.embedded import EmbeddedPostgres

DATABASE_URL_ENV = "GEOD_DATABASE_URL"


@dataclass
class Database:
    """A resolved database: its URL and, if embedded, the server handle."""

    url: str
    embedded: EmbeddedPostgres | None = None
    #: Whether this process started the embedded server (and so should stop it).
    started_here: bool = False

    def close(self) -> None:
        """Stop the embedded server if this process started it; no-op otherwise."""
        if self.embedded is not None and self.started_here:
            self.embedded.stop()


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
    was_running = server.running()
    started_here = not was_running and not keep_running
    return Database(server.start(), server, started_here=started_here)
