"""Shared helpers of the TUI tests: sync wrappers for Pilot coroutines and a replayed state."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

from pipeline.events import decode_dict
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
        state.apply_event(decode_dict(event))
    return state


def replay_app() -> GeodApp:
    return GeodApp(state=loaded_state(), connect=False)


#: How long a test waits for the app's timed batch redraws (4–10 Hz) to show a change.
REDRAW_TIMEOUT = 5.0
#: Poll step while waiting for a redraw.
REDRAW_STEP = 0.05


async def until(pilot: Any, predicate: Callable[[], bool], timeout: float = REDRAW_TIMEOUT) -> None:
    """Let the app run until ``predicate()`` holds; fail after ``timeout`` seconds.

    The dashboard batches updates on timers, so a fixed pause races a busy
    machine; waiting for the condition itself does not.
    """
    waited = 0.0
    while not predicate():
        assert waited < timeout, f"condition not met within {timeout}s"
        await pilot.pause(REDRAW_STEP)
        waited += REDRAW_STEP
