"""Who wrote a telemetry row: the daemon's instance id and each run's global key.

A shared database (a team's ``database_url``) holds the rows of many daemons,
each with its own ``r0001``. The instance id is a random UUID created once per
state directory (so two users, two hosts or a reinstalled state directory are
different instances); a run's key is a UUID derived from the instance id and
its short id, so it needs no storage of its own and is the same in every
process of that daemon, through restarts and spool replays.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

#: File in the telemetry directory holding the instance id.
INSTANCE_FILE = "instance_id"


def load_instance(directory: Path) -> uuid.UUID:
    """This state directory's instance id, created on first use (0600, atomically)."""
    path = directory / INSTANCE_FILE
    with contextlib.suppress(FileNotFoundError, ValueError):
        return uuid.UUID(path.read_text().strip())
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    candidate = uuid.uuid4()
    tmp = directory / f".{INSTANCE_FILE}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{candidate}\n")
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(tmp, path)  # never replaces an id another process created meanwhile
    except FileExistsError:
        candidate = uuid.UUID(path.read_text().strip())
    finally:
        tmp.unlink()
    return candidate


def run_key(instance: uuid.UUID, run_id: str) -> uuid.UUID:
    """The run's global key: unique across daemons, stable for the life of the run."""
    return uuid.uuid5(instance, run_id)
