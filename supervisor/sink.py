"""What the daemon hands telemetry: every run summary change and every stamped event.

A Protocol rather than a base class so the PostgreSQL writer (supervisor.telemetry)
stays independent of the daemon, and the daemon runs without one (tests, no DB).
Calls come from the daemon's event loop and must not block: implementations
queue and write from their own thread.
"""

from __future__ import annotations

from typing import Protocol

from pipeline.events import Event
from supervisor.protocol import RunSummary


class TelemetrySink(Protocol):
    def record_run(self, run: RunSummary) -> None: ...

    def record_event(self, event: Event) -> None: ...

    def close(self) -> None: ...
