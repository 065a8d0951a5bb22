"""The ``?`` screen: every key, generated from the one binding table."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

from tui.bindings import COMMANDS, HELP_BINDINGS

_INTRO = (
    "Runs table: arrows or mouse select a run; click a header to sort. "
    "Stage tree: enter/space open a node. Log: scroll up to page back through history."
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = HELP_BINDINGS

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for command in COMMANDS:
            table.add_row(command.display, command.help)
        table.add_row("ctrl+p", "Command palette: every action by name")
        with Vertical(id="help-dialog"):
            yield Static("geo-tui keys", id="help-title")
            yield Static(table)
            yield Static(_INTRO, id="help-intro")

    def on_click(self) -> None:
        self.dismiss()

    def action_close(self) -> None:
        self.dismiss()
