"""What a watched folder has seen, kept in the state directory across daemon restarts.

``STATE_DIR/watch/RULE.json`` holds, per file, the size and mtime it was taken
at and what came of it; and the rule's event sequence number (its telemetry
stream is keyed like a run's). A file that arrived or changed while the daemon
was down differs from this record, so the scan at start takes it, and a file
already taken is not taken (or submitted) again. Written atomically, at most
once per settle tick, so 1,000 arrivals cost one write, not 1,000.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from pipeline.durable import write_atomic
from supervisor.protocol import WatchedSource

log = logging.getLogger("geod.daemon.watch")

WATCH_DIR_NAME = "watch"


class RuleState(BaseModel):
    """The persisted record of one rule."""

    seq: int = 0
    files: dict[str, WatchedSource] = Field(default_factory=dict)
    #: Files taken for a ``submit`` rule that no submitted run includes yet.
    waiting: list[str] = Field(default_factory=list)
    #: The rule's latest run: while it is still queued, no second run is queued.
    last_run: str | None = None


class StateFile:
    """Load and save one rule's :class:`RuleState` under the state directory."""

    def __init__(self, state_dir: Path, rule: str) -> None:
        self.path = state_dir / WATCH_DIR_NAME / f"{rule}.json"

    def load(self) -> RuleState:
        with contextlib.suppress(FileNotFoundError):
            try:
                return RuleState.model_validate_json(self.path.read_bytes())
            except (ValidationError, ValueError) as exc:
                log.error("watch state %s unreadable (%s); rescanning", self.path, exc)
        return RuleState()

    @staticmethod
    def encode(state: RuleState) -> str:
        """The file's new content (built on the event loop, written by another thread)."""
        return json.dumps(state.model_dump(mode="json"), separators=(",", ":"))

    def write(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.path, text)
