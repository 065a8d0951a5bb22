"""The "daemon unreachable" banner: shown while the link is down, over a still-visible last state.

Users must never mistake a frozen picture for a quiet run, so while the daemon
is away the banner says so, when the next attempt is, and that what they see is
the last known state.
"""

from __future__ import annotations

from rich.markup import escape
from textual.widgets import Static

from tui.state import ConnectionInfo


class ConnectionBanner(Static):
    """Hidden while connected; otherwise what is wrong on the first line, details on the second.

    The first line fits 80 columns and says what matters ("showing the last known
    state"); the socket path appears once, with the error and the next attempt,
    on the dimmer second line.
    """

    def show_info(self, info: ConnectionInfo) -> None:
        if info.state in ("connected", "offline"):
            self.display = False
            return
        self.display = True
        if info.state == "connecting" and info.attempts == 0:
            self.update(f"connecting to the daemon …\n[dim]socket {info.socket}[/]")
            return
        # The client's error often names the socket already: the path is said once.
        details = [] if info.error and info.socket in info.error else [f"socket {info.socket}"]
        if info.error:
            details.append(info.error)
        if info.retry_in is not None:
            details.append(f"next try in {info.retry_in:.1f}s")
        headline = f"daemon unreachable — showing the last known state, retrying ({info.attempts})"
        self.update(f"{headline}\n[dim]{escape(' · '.join(details))}[/]")
