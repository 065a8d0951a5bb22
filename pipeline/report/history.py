"""A run's event history on disk, so a report can be made with no daemon and no database.

The daemon keeps every event of a supervised run in ``events.ndjson`` of its run
directory (and in telemetry); ``geod run`` has neither. So the worker itself
appends every event it emits to ``WORK_DIR/events.ndjson`` (:class:`EventRecorder`):
a rerun that resumes the same work directory appends to it, and the report shows
each worker start as a resume. Lines are whole JSON objects written with one
``write``; a torn last line (a killed worker) is skipped when reading.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from pydantic import ValidationError

from pipeline.events import Event, decode, encode

log = logging.getLogger("geod.report")

#: The worker's own event history inside the work directory.
HISTORY_NAME = "events.ndjson"


class EventRecorder:
    """An EventSink callback appending each event as one line to ``path``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115  (closed in close())
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        line = encode(event) + "\n"
        with self._lock:
            if self._handle.closed:
                return
            self._handle.write(line)
            self._handle.flush()

    def close(self) -> None:
        with self._lock:
            self._handle.close()


def read_history(path: Path) -> list[Event]:
    """Every decodable event of an ``events.ndjson`` file, in file order."""
    events: list[Event] = []
    bad = 0
    with open(path, "rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                events.append(decode(line))
            except (ValidationError, json.JSONDecodeError, ValueError):
                bad += 1
    if bad:
        log.warning("%s: skipped %d damaged line(s)", path, bad)
    return events
