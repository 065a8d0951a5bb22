"""Kill confirmation: a kill loses the work since the last checkpoint, so it is never one key."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label

from tui.bindings import CONFIRM_BINDINGS


class ConfirmKill(ModalScreen[bool]):
    """Dismisses with True (kill) or False (keep running)."""

    BINDINGS = CONFIRM_BINDINGS

    def __init__(self, run_id: str, *, force: bool) -> None:
        super().__init__()
        self.run_id = run_id
        self.force = force

    def compose(self) -> ComposeResult:
        if self.force:
            question = f"Force-kill run {self.run_id}? SIGKILL, no checkpoint is written."
        else:
            question = f"Kill run {self.run_id}? It stops after the current window (checkpoint)."
        with Vertical(id="confirm-dialog"):
            yield Label(question, id="confirm-question")
            with Horizontal(id="confirm-buttons"):
                yield Button("Kill (y)", variant="error", id="confirm-yes")
                yield Button("Cancel (n)", variant="primary", id="confirm-no")

    def on_mount(self) -> None:
        self.query_one("#confirm-no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm-yes")

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)
