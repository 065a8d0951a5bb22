"""The ``:`` prompt over the runs table: hidden until asked for, gone on enter or escape."""

from __future__ import annotations

from typing import Any

from textual.widgets import Input

from tui.bindings import FILTER_BINDINGS

#: What the empty box says.
FILTER_HINT = "filter runs: running /demo (enter: apply, esc: clear)"


class FilterBox(Input):
    """Enter submits (the app parses and applies the filter); escape clears it."""

    BINDINGS = FILTER_BINDINGS

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(placeholder=FILTER_HINT, **kwargs)

    def action_clear_filter(self) -> None:
        """Leave the prompt with an empty filter: the app shows every run again."""
        self.value = ""
        self.post_message(self.Submitted(self, ""))
