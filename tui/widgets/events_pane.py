"""The events pane: every run's state changes, one line each, newest at the bottom.

``14:02:11 r0007 ✘ failed at export, retry 1/3`` — what happened while the user
looked elsewhere (or before they attached: the daemon records each change in
the run's history and a snapshot brings the newest), the same lines on every
dashboard attached to the daemon. The wording is :func:`formatting.state_change`,
shared with the CLI.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual import events
from textual.widgets import RichLog

from pipeline.events import RunStateEvent
from supervisor import formatting
from tui.state import TRANSITIONS_KEPT, DashboardState


def change_line(event: RunStateEvent) -> Text:
    """One change as a coloured line: clock time, run, state glyph, what happened."""
    words = formatting.state_change(event)
    # A failure the restart policy queues again is a failure to the reader.
    shown = "failed" if words.startswith("failed") else event.state
    line = Text()
    line.append(time.strftime("%H:%M:%S ", time.localtime(event.time)), style="bright_black")
    line.append(f"{event.run or formatting.MISSING} ", style="bold")
    line.append(f"{formatting.state_glyph(shown)} ", style=formatting.state_style(shown))
    line.append(words)
    return line


class EventsPane(RichLog):
    """Run-state changes of every run, as :class:`DashboardState` holds them."""

    def __init__(self, state: DashboardState, **kwargs: Any) -> None:
        super().__init__(max_lines=TRANSITIONS_KEPT, wrap=False, markup=False, **kwargs)
        self._state = state
        self.border_title = "Events"

    def on_resize(self, event: events.Resize) -> None:
        super().on_resize(event)  # RichLog writes what waited for a width
        # The newest change stays in view when the layout changes the pane's height.
        self.scroll_end(animate=False)

    def reload(self) -> None:
        """Redraw from the state's list (attach or resync brought the daemon's history)."""
        self.clear()
        self.add(self._state.transitions)

    def add(self, events: Iterable[RunStateEvent]) -> None:
        for event in events:
            self.write(change_line(event))
