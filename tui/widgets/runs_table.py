"""The runs table: one row per run, updated cell by cell, sortable, and the panels' selector.

Rows are keyed by run id and only the cells of runs that changed are
rewritten, so a busy run does not repaint the whole table. Highlighting a row
(keyboard or mouse) posts :class:`RunsTable.RunChosen`; the app points the
stage tree, memory chart and log at that run.

Runs still going (queued, running, paused, stopping) are pinned above finished
ones whatever the sort column, so a long history never hides the live run; the
sort column's header carries ▲ or ▼. A queued run says WHY it waits (a slot,
its ``--after`` runs, what the daemon reports), a scheduled one when it starts.

``:`` filters the rows (:class:`~tui.run_filter.RunFilter`: ``:running`` by
state, ``:/demo`` by name); the border title says so and how many runs it
hides, and escape shows every run again.

The table never scrolls sideways: when its columns do not fit the terminal the
least needed ones are left out (:data:`DROP_ORDER`: peak RSS first, then the
stage, which the tree shows anyway), and come back when there is room.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from rich.text import Text
from textual import events
from textual.message import Message
from textual.widgets import DataTable

from supervisor import formatting
from supervisor.protocol import FINAL_STATES, RunSummary
from tui.bindings import RUNS_TABLE_BINDINGS
from tui.run_filter import RunFilter
from tui.state import DashboardState

#: (column key, header, sort key of a run). Order is the on-screen order.
_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "Run"),
    ("name", "Name"),
    ("state", "State"),
    ("priority", "Prio"),
    ("progress", "Done"),
    ("elapsed", "Elapsed"),
    ("eta", "ETA"),
    ("stage", "Stage"),
    ("rss", "RSS"),
    ("peak", "Peak"),
    ("why", "Why"),
)
_LABELS = dict(_COLUMNS)
#: Header marks of the sort column, ascending and descending.
SORT_UP, SORT_DOWN = "▲", "▼"
SORT_COLUMNS: tuple[str, ...] = tuple(key for key, _ in _COLUMNS)
#: Width of the stage cell; longer stage ids keep their tail (the most specific part).
_STAGE_WIDTH = 18
#: Longest run name and wait reason shown; longer ones end in "…".
_NAME_WIDTH = 16
_WHY_WIDTH = 28
#: Narrowest WHY: on a narrow panel a wait reason is cut, down to this, before the
#: columns of WAITING_DROP_ORDER after "stage" are left out for it.
_WHY_MIN_WIDTH = 12
#: Columns left out, in this order, while the table is wider than its panel. An empty
#: WHY column (nothing queued) goes before any of them; Run, State and Done always stay.
DROP_ORDER: tuple[str, ...] = (
    "peak",
    "priority",
    "stage",
    "rss",
    "elapsed",
    "eta",
    "name",
    "why",
)
#: The same while a run waits (its WHY is shown): ETA goes before RSS and Elapsed, which a
#: narrow panel keeps beside the wait reason (the selected run's ETA is in its stage tree).
WAITING_DROP_ORDER: tuple[str, ...] = (
    "peak",
    "priority",
    "stage",
    "eta",
    "rss",
    "elapsed",
    "name",
    "why",
)


class RunsTable(DataTable[Any]):
    """All runs the daemon knows, newest state first in each cell."""

    BINDINGS = RUNS_TABLE_BINDINGS

    class RunChosen(Message):
        def __init__(self, run_id: str) -> None:
            super().__init__()
            self.run_id = run_id

    def __init__(self, state: DashboardState, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._state = state
        self.sort_column: str = "id"
        self.sort_reverse = False
        self.border_title = "Runs"
        # What each cell shows now: only cells whose text changes are rewritten
        # (a rewritten cell re-renders its row). Kept for hidden columns too: their
        # widths decide whether they fit again.
        self._shown: dict[str, dict[str, str]] = {}
        #: Columns on screen, in on-screen order (see DROP_ORDER).
        self.shown_columns: tuple[str, ...] = SORT_COLUMNS
        #: Width the WHY cells are cut to now (narrower on a narrow panel, see fit_columns).
        self.why_width = _WHY_WIDTH
        #: Which runs have a row (all, until ``:`` sets a filter).
        self.run_filter = RunFilter()

    def on_mount(self) -> None:
        for key in self.shown_columns:
            self.add_column(_LABELS[key], key=key)
        self._mark_sort_column()

    def on_resize(self, event: events.Resize) -> None:
        self._fit()

    @property
    def selected_run(self) -> str | None:
        if not self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key((self.cursor_row, 0))
        return row_key.value

    def sync(self, changed: Iterable[str]) -> None:
        """Add, update or remove the rows of ``changed`` runs, then restore order and cursor."""
        selected = self.selected_run
        added = False
        for run_id in sorted(changed):
            view = self._state.runs.get(run_id)
            exists = run_id in self.rows
            if view is None or not self.run_filter.matches(view.summary):
                if exists:
                    self.remove_row(run_id)
                    self._shown.pop(run_id, None)
                continue
            cells = self._cells(view.summary)
            plain = {column: _plain(value) for column, value in cells.items()}
            cells["why"] = _clip(cells["why"], self.why_width)
            if not exists:
                self.add_row(*(cells[column] for column in self.shown_columns), key=run_id)
                self._shown[run_id] = plain
                added = True
                continue
            shown = self._shown[run_id]
            for column in self.shown_columns:
                if shown.get(column) != plain[column]:
                    self.update_cell(run_id, column, cells[column], update_width=True)
            self._shown[run_id] = plain
        self._resort(selected, post=added and selected is None)
        self._fit()
        self._show_filter()

    def set_filter(self, run_filter: RunFilter) -> None:
        """Keep only the runs ``run_filter`` matches (an empty filter keeps all)."""
        self.run_filter = run_filter
        self.sync(set(self._state.runs) | set(self._shown))

    def action_clear_filter(self) -> None:
        if self.run_filter:
            self.set_filter(RunFilter())

    def _show_filter(self) -> None:
        """The border title says a filter is on, which, and how many runs it leaves."""
        if not self.run_filter:
            self.border_title = "Runs"
            return
        total = len(self._state.runs)
        self.border_title = f"Runs · {self.run_filter} ({self.row_count} of {total}) · esc clears"

    def tick(self) -> None:
        """Once a second: running time of runs going, and a queued run's countdown."""
        now = self._state.clock()
        for run_id, view in self._state.runs.items():
            summary = view.summary
            shown = self._shown.get(run_id)
            if shown is None or summary.state in FINAL_STATES:
                continue
            ticking = {
                "elapsed": formatting.duration(self._state.elapsed(summary)),
                "why": _clip(self._why(summary, now), _WHY_WIDTH),
            }
            for column, value in ticking.items():
                if shown.get(column) != value:
                    if column in self.shown_columns:
                        cell = _clip(value, self.why_width) if column == "why" else value
                        self.update_cell(run_id, column, cell, update_width=True)
                    shown[column] = value
        self._fit()

    def cycle_sort(self, column: str | None = None) -> None:
        """Sort by ``column`` (a click on its header; again = reversed), or the next column."""
        if column is None:
            index = SORT_COLUMNS.index(self.sort_column)
            self.sort_column = SORT_COLUMNS[(index + 1) % len(SORT_COLUMNS)]
            self.sort_reverse = False
        elif column == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = column, False
        self._mark_sort_column()
        self._resort(self.selected_run, post=False)
        self._fit()  # the mark makes its header wider

    def _mark_sort_column(self) -> None:
        """▲/▼ after the sort column's header, nothing after the others."""
        mark = SORT_DOWN if self.sort_reverse else SORT_UP
        for key, column in self.columns.items():
            label = _LABELS[str(key.value)]
            column.label = Text(f"{label} {mark}" if key.value == self.sort_column else label)
            # A column is as wide as its widest cell or label: room for the mark too.
            column.content_width = max(column.content_width, column.label.cell_len)
        self.refresh_columns()

    def refresh_columns(self) -> None:
        """Re-measure and repaint the header after a label changed.

        DataTable has no public call for a new label: its render caches must go
        and its dimensions be recomputed, as ``add_column`` does.
        """
        self._clear_caches()
        self._require_update_dimensions = True
        self.refresh()

    def select(self, run_id: str) -> None:
        if run_id in self.rows:
            self.move_cursor(row=self.get_row_index(run_id))

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.cycle_sort(str(event.column_key.value))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.post_message(self.RunChosen(event.row_key.value))

    # -- internals ------------------------------------------------------------------

    def _fit(self) -> None:
        """Show the columns that fit the panel's width; rebuild the table if that set changed."""
        width = self.size.width
        if not width or not self.is_mounted:
            return
        visible, why_width = fit_columns(width, self._column_widths(), self.cell_padding)
        if (visible, why_width) == (self.shown_columns, self.why_width):
            return
        selected = self.selected_run
        self.shown_columns, self.why_width = visible, why_width
        self.clear(columns=True)
        for key in visible:
            self.add_column(_LABELS[key], key=key)
        for run_id in self._shown:
            view = self._state.runs.get(run_id)
            if view is not None:
                cells = self._cells(view.summary)
                cells["why"] = _clip(cells["why"], why_width)
                self.add_row(*(cells[column] for column in visible), key=run_id)
        self._mark_sort_column()
        self._resort(selected, post=False)

    def _column_widths(self) -> dict[str, int]:
        """Each column's widest text (its header with a sort mark, or a cell), every run;
        WHY as wide as its uncut text up to _WHY_WIDTH, however narrow it is shown now."""
        mark = len(f" {SORT_UP}")
        widths = {
            key: len(label) + (mark if key == self.sort_column else 0) for key, label in _COLUMNS
        }
        for cells in self._shown.values():
            for key, text in cells.items():
                widths[key] = max(widths[key], Text(text).cell_len)
        return widths

    def _resort(self, selected: str | None, *, post: bool) -> None:
        sort_key = _SORT_KEYS[self.sort_column]
        state = self._state

        def by_column(run_id: str) -> Any:
            view = state.runs.get(run_id)
            return sort_key(view.summary, state) if view else 0

        def finished(run_id: str) -> bool:
            view = state.runs.get(run_id)
            return view is None or view.summary.state in FINAL_STATES

        ids = sorted((key.value for key in self.rows), key=by_column, reverse=self.sort_reverse)
        order = sorted(ids, key=finished)  # stable: live runs first, each group in column order
        rank = {run_id: index for index, run_id in enumerate(order)}

        def by_run(run_id_cell: Text | str) -> int:
            run_id = run_id_cell.plain if isinstance(run_id_cell, Text) else run_id_cell
            return rank.get(run_id, len(rank))

        # Sorting clears the table's render caches: only when the order really changes.
        if order != [row.key.value for row in self.ordered_rows]:
            self.sort("id", key=by_run)
        if selected is not None and selected in self.rows:
            self.move_cursor(row=self.get_row_index(selected), animate=False)
        elif post and self.row_count:
            self.move_cursor(row=0)
            run_id = self.selected_run
            if run_id is not None:
                self.post_message(self.RunChosen(run_id))

    def _cells(self, run: RunSummary) -> dict[str, Any]:
        stage = run.stage or formatting.MISSING
        if len(stage) > _STAGE_WIDTH:
            stage = "…" + stage[-(_STAGE_WIDTH - 1) :]
        final = run.state in FINAL_STATES
        now = self._state.clock()
        return {
            "id": run.id,
            "name": _clip(run.name, _NAME_WIDTH),
            "state": formatting.state_text(run.state, paused_hard=run.paused_hard),
            "priority": Text(str(run.priority), justify="right"),
            "progress": Text(f"{run.progress * 100:5.1f}%", justify="right"),
            "elapsed": formatting.duration(self._state.elapsed(run)),
            "eta": formatting.eta(run.eta_at, run.eta_range, now, compact=True)
            if run.state == "running"
            else "",
            "stage": stage if not final else "",
            "rss": Text(formatting.size(None if final else run.rss), justify="right"),
            "peak": Text(formatting.size(run.peak_rss), justify="right"),
            "why": _clip(self._why(run, now), _WHY_WIDTH),
        }

    def _why(self, run: RunSummary, now: float) -> str:
        """Why a waiting run waits: its start time, retry backoff, dependencies, a slot,
        memory; or why the daemon paused it (host memory pressure, low disk)."""
        if run.state == "paused" and run.wait_reason:
            return run.wait_reason
        if run.state == "scheduled" and run.start_at is not None:
            return f"starts in {formatting.duration(run.start_at - now)}"
        if run.state != "queued":
            return ""
        if run.retry_at is not None and run.retry_at > now:
            return f"retry {run.retries} in {formatting.duration(run.retry_at - now)}"
        if run.wait_reason:
            return run.wait_reason
        if run.after:
            return f"after {', '.join(run.after)}"
        slots = self._state.connection.concurrency
        busy = sum(1 for view in self._state.runs.values() if view.summary.state in _HOLD_SLOT)
        if slots is not None and busy >= slots:
            return f"slot {busy}/{slots} busy"
        return "starting"


def _plain(value: Any) -> str:
    return value.plain if isinstance(value, Text) else str(value)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def fit_columns(width: int, widths: dict[str, int], padding: int) -> tuple[tuple[str, ...], int]:
    """The columns (on-screen order) whose cells, padded, fit ``width``, and the width WHY
    is cut to. An empty WHY (only its header is that wide) goes first, then DROP_ORDER.
    While a run waits, its WHY counts as _WHY_MIN_WIDTH wide and WAITING_DROP_ORDER
    decides; it then gets whatever room is left, up to its whole text, so a long wait
    reason never costs Elapsed and RSS."""
    widths = dict(widths)
    visible = list(SORT_COLUMNS)
    whole_why = widths.get("why", 0)
    waiting = whole_why > len(f"{_LABELS['why']} {SORT_UP}")
    order = list(WAITING_DROP_ORDER if waiting else DROP_ORDER)
    if waiting:
        widths["why"] = min(whole_why, _WHY_MIN_WIDTH)
    else:
        order.remove("why")
        order.insert(0, "why")

    def total() -> int:
        return sum(widths[key] + 2 * padding for key in visible)

    for key in order:
        if total() <= width:
            break
        visible.remove(key)
    room = widths["why"] + width - total()
    if not waiting or "why" not in visible or room >= whole_why:
        return tuple(visible), _WHY_WIDTH
    return tuple(visible), room


_SortKey = Callable[[RunSummary, DashboardState], Any]
_SORT_KEYS: dict[str, _SortKey] = {
    "id": lambda run, _: run.id,
    "name": lambda run, _: (run.name, run.id),
    "state": lambda run, _: (run.state, run.id),
    "priority": lambda run, _: (run.priority, run.id),
    "progress": lambda run, _: run.progress,
    "elapsed": lambda run, state: state.elapsed(run) or 0.0,
    "eta": lambda run, _: run.eta_at if run.eta_at is not None else float("inf"),
    "stage": lambda run, _: run.stage or "",
    "rss": lambda run, _: run.rss or 0,
    "peak": lambda run, _: run.peak_rss or 0,
    "why": lambda run, _: (run.start_at or run.retry_at or 0.0, run.id),
}
#: States whose worker holds one of the daemon's concurrency slots.
_HOLD_SLOT = frozenset({"running", "paused", "stopping"})
