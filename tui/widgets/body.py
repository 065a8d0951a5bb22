"""The dashboard's body (stage tree | memory or map, log): its layout follows its own width.

At or below :data:`NARROW_COLUMNS` it shows one panel at a time (the app's tab
switches which, as lazygit's zoom does); at or above :data:`WIDE_COLUMNS` the
tree and log get the extra room. The body spans the terminal, so its width is
the terminal's; deciding here, from the body's own resize, never asks the app
for a size before the terminal has reported one.
"""

from __future__ import annotations

from textual import events
from textual.containers import Horizontal

#: At or below this many columns one panel at a time: side by side, each would be
#: too narrow to read.
NARROW_COLUMNS = 100
#: At or above this many columns the tree and the log get the extra room.
WIDE_COLUMNS = 200
#: The panel a narrow body shows before the user picks one.
DEFAULT_PANEL = "stages"


class Body(Horizontal):
    """Sets ``-narrow``/``-wide`` from its width; ``-show-<id>`` names the panel shown narrow."""

    def on_resize(self, event: events.Resize) -> None:
        width = event.size.width
        self.set_class(width <= NARROW_COLUMNS, "-narrow")
        self.set_class(width >= WIDE_COLUMNS, "-wide")
        if not any(name.startswith("-show-") for name in self.classes):
            self.add_class(f"-show-{DEFAULT_PANEL}")

    def show(self, panel_id: str, panel_ids: list[str]) -> None:
        """In the narrow layout, show ``panel_id`` alone (the others stay built)."""
        for other in panel_ids:
            self.set_class(other == panel_id, f"-show-{other}")
