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

    def __init__(self, run_id: str, *, force: bool, state: str = "running") -> None:
        super().__init__()
        self.run_id = run_id
        self.force = force
        self.state = state

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-dialog"):
            question = kill_question(self.run_id, self.state, force=self.force)
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


def kill_question(run_id: str, state: str, *, force: bool) -> str:
    """What killing does to a run in ``state``: a waiting run has no window to finish."""
    if state in ("queued", "scheduled"):
        return f"Cancel {state} run {run_id}? It has not started, so nothing is lost."
    if force:
        return f"Force-kill run {run_id}? SIGKILL: work since the last checkpoint is lost."
    if state == "paused":
        return (
            f"Kill paused run {run_id}? It stops at its checkpoint; "
            "`geod retry` resumes from there."
        )
    return f"Kill run {run_id}? It stops after the current window (checkpoint)."
