"""Shared helpers of the TUI tests: sync wrappers for Pilot coroutines and a replayed state."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

from tests import tui_recording as rec
from tui.app import GeodApp
from tui.state import DashboardState


def pilot_test(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an ``async`` test in a fresh event loop (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def loaded_state() -> DashboardState:
    """The recorded demo run applied as a live attach would: snapshot, then every event."""
    state = DashboardState(clock=lambda: rec.T0 + 60)
    events = rec.events()
    state.apply_snapshot(rec.snapshot_before(events, 0))
    for event in events:
        state.apply_event_dict(event)
    return state


def replay_app() -> GeodApp:
    return GeodApp(state=loaded_state(), connect=False)
