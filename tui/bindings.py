"""Every key binding of geo-tui, in one table.

One module so the help screen, the footer, the command palette and the
tests all read the same source: a key is changed here and nowhere else.
Each :class:`Command` is an app action with its key and the text the help
screen and the palette show.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Command:
    """An app-level action: ``action`` names ``GeodApp.action_<action>``."""

    key: str
    action: str
    title: str
    help: str
    show: bool = True
    #: The key as the help screen prints it (Textual key names are not always the glyph).
    glyph: str = ""
    #: Checked before the focused widget's own bindings (tab must beat the screen's focus_next).
    priority: bool = False

    @property
    def display(self) -> str:
        """The key as printed; a command without a key is reached from the palette."""
        return self.glyph or self.key or "ctrl+p"


COMMANDS: tuple[Command, ...] = (
    # First, so the footer keeps it visible however narrow the terminal (htop's F1).
    Command("question_mark", "help", "Help", "Show every key", glyph="?"),
    Command("p", "pause", "Pause", "Pause the selected run at its next window boundary"),
    Command("r", "resume", "Resume", "Resume the selected run"),
    Command("k", "kill", "Kill", "Stop the selected run with a checkpoint (asks first)"),
    Command("K", "force_kill", "Force kill", "SIGKILL the run's process group (asks first)"),
    Command("R", "retry", "Retry", "Start a failed, killed or interrupted run again"),
    Command("plus", "priority(1)", "Priority +", "Raise the run's priority", show=False, glyph="+"),
    Command(
        "minus", "priority(-1)", "Priority -", "Lower the run's priority", show=False, glyph="-"
    ),
    Command("f", "follow", "Follow", "Toggle following the newest log lines"),
    Command("slash", "search", "Search", "Search the log; n / N jump between hits", glyph="/"),
    Command("n", "search_next", "Next hit", "Jump to the next search hit", show=False),
    Command("N", "search_prev", "Previous hit", "Jump to the previous search hit", show=False),
    Command("l", "level", "Level", "Cycle the log's minimum level"),
    Command("s", "stage_filter", "Stage", "Show only logs of the stage highlighted in the tree"),
    Command(
        "S",
        "pin_stage",
        "Pin stage",
        "Keep the log's stage filter when another run is selected",
        show=False,
    ),
    Command("w", "map", "Map", "Show or hide the map of the run's windows"),
    Command("m", "memory_span", "Span", "Memory chart span: 5 min / 1 h / whole run"),
    Command(
        "M",
        "memory_series",
        "Memory of",
        "Memory chart: the run's own, or one of its Dask workers (cycles)",
        show=False,
    ),
    Command("o", "sort", "Sort", "Cycle the runs table's sort column", show=False),
    Command(
        "colon",
        "filter",
        "Filter",
        "Filter the runs: ':running' by state, ':/demo' by name; esc clears",
        glyph=":",
    ),
    Command(
        "tab", "cycle_panel", "Panel", "Move focus to the next panel", show=False, priority=True
    ),
    Command(
        "shift+tab", "cycle_panel_back", "Panel back", "Previous panel", show=False, priority=True
    ),
    Command("q", "detach", "Detach", "Leave the dashboard; runs keep going"),
    Command("", "pause_all", "Pause all", "Pause every running run (command palette)"),
    Command("", "resume_all", "Resume all", "Resume every paused run (command palette)"),
    Command("", "sources", "Watched sources", "Files the watched folders took (command palette)"),
)

APP_BINDINGS: list[Binding] = [
    Binding(
        command.key, command.action, command.title, show=command.show, priority=command.priority
    )
    for command in COMMANDS
    if command.key
]

#: The confirmation dialog: y/enter confirm, n/escape cancel.
CONFIRM_BINDINGS: list[Binding] = [
    Binding("y", "confirm", "Yes"),
    Binding("n", "cancel", "No"),
    Binding("escape", "cancel", "Cancel"),
]

#: The help screen closes on any of these.
HELP_BINDINGS: list[Binding] = [
    Binding("escape", "close", "Close"),
    Binding("question_mark", "close", "Close", show=False),
    Binding("q", "close", "Close", show=False),
]

#: The runs table: Home/End go to the first/last run (DataTable's own move sideways);
#: escape drops the ``:`` filter.
RUNS_TABLE_BINDINGS: list[Binding] = [
    Binding("home", "scroll_top", "First run", show=False),
    Binding("end", "scroll_bottom", "Last run", show=False),
    Binding("escape", "clear_filter", "Clear filter", show=False),
]

#: The Map panel: choose the dataset drawn.
MAP_BINDINGS: list[Binding] = [
    Binding("left_square_bracket", "dataset(-1)", "Previous dataset", show=False),
    Binding("right_square_bracket", "dataset(1)", "Next dataset", show=False),
]

#: The runs filter box: escape leaves it with no filter.
FILTER_BINDINGS: list[Binding] = [
    Binding("escape", "clear_filter", "Clear filter"),
]

#: The log search box.
SEARCH_BINDINGS: list[Binding] = [
    Binding("escape", "cancel_search", "Cancel search"),
]
