"""The "Watched sources" screen (command palette): what the daemon's watched folders took."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from supervisor.cli.sources_cmd import sources_table
from supervisor.protocol import WatchedSource
from tui.bindings import HELP_BINDINGS


class SourcesScreen(ModalScreen[None]):
    """The ``geod sources`` table, closed like the help screen."""

    BINDINGS = HELP_BINDINGS

    def __init__(self, sources: list[WatchedSource]) -> None:
        super().__init__()
        self.sources = sources

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="sources-dialog"):
            yield Static("Watched sources (geod.yml watch:)", id="help-title")
            if self.sources:
                yield Static(sources_table(self.sources))
            else:
                yield Static("No watched folder has recorded a file.", id="help-intro")

    def action_close(self) -> None:
        self.dismiss()
