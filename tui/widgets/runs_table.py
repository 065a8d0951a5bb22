"""The runs table: one row per run, updated cell by cell, sortable, and the panels' selector.

Rows are keyed by run id and only the cells of runs that changed are
rewritten, so a busy run does not repaint the whole table. Highlighting a row
(keyboard or mouse) posts :class:`RunsTable.RunChosen`; the app points the
stage tree, memory chart and log at that run.

Runs still going (queued, running, paused, stopping) are pinned above finished
ones whatever the sort column, so a long history never hides the live run; the
sort column's header carries ▲ or ▼. A queued run says WHY it waits (a slot,
its ``--after`` runs, what the daemon reports), a scheduled one when it starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from rich.text import Text
from textual.message import Message
from textual.widgets import DataTable

from supervisor import formatting
from supervisor.protocol import FINAL_STATES, RunSummary
from tui.bindings import RUNS_TABLE_BINDINGS
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
        # (a rewritten cell re-renders its row).
        self._shown: dict[str, dict[str, str]] = {}

    def on_mount(self) -> None:
        for key, label in _COLUMNS:
            self.add_column(label, key=key)
        self._mark_sort_column()

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
            if view is None:
                if exists:
                    self.remove_row(run_id)
                    self._shown.pop(run_id, None)
                continue
            cells = self._cells(view.summary)
            plain = {column: _plain(value) for column, value in cells.items()}
            if not exists:
                self.add_row(*cells.values(), key=run_id)
                self._shown[run_id] = plain
                added = True
                continue
            shown = self._shown[run_id]
            for column, value in cells.items():
                if shown.get(column) != plain[column]:
                    self.update_cell(run_id, column, value, update_width=True)
            self._shown[run_id] = plain
        self._resort(selected, post=added and selected is None)

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
                "why": self._why(summary, now),
            }
            for column, value in ticking.items():
                if shown.get(column) != value:
                    self.update_cell(run_id, column, value, update_width=True)
                    shown[column] = value

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
            "name": run.name,
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
            "why": self._why(run, now),
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
