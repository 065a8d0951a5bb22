"""The "daemon unreachable" banner: shown while the link is down, over a still-visible last state.

Users must never mistake a frozen picture for a quiet run, so while the daemon
is away the banner says so, when the next attempt is, and that what they see is
the last known state.
"""

from __future__ import annotations

from textual.widgets import Static

from tui.state import ConnectionInfo


class ConnectionBanner(Static):
    """Hidden while connected; a one-line warning otherwise."""

    def show_info(self, info: ConnectionInfo) -> None:
        if info.state in ("connected", "offline"):
            self.display = False
            return
        self.display = True
        if info.state == "connecting" and info.attempts == 0:
            self.update(f"connecting to the daemon at {info.socket} …")
            return
        reason = f" ({info.error})" if info.error else ""
        retry = f"; retrying in {info.retry_in:.1f}s" if info.retry_in is not None else ""
        self.update(
            f"daemon unreachable at {info.socket}{reason}{retry} "
            f"(attempt {info.attempts}) — showing the last known state"
        )
