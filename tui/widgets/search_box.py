"""The ``/`` prompt under the log: hidden until asked for, gone again on enter or escape."""

from __future__ import annotations

from typing import Any

from textual.widgets import Input

from tui.bindings import SEARCH_BINDINGS
from tui.widgets.log_view import LogView

#: What the empty box says.
SEARCH_HINT = "search the log (enter: find, esc: cancel)"


class SearchBox(Input):
    """Enter submits (the app applies the term to the log); escape cancels."""

    BINDINGS = SEARCH_BINDINGS

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(placeholder=SEARCH_HINT, **kwargs)

    def action_cancel_search(self) -> None:
        self.value = ""
        self.display = False
        self.screen.query_one(LogView).focus()
