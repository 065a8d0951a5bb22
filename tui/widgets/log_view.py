"""The log of the selected run: level colours, level/stage filters, search, follow, paging back.

The view holds a bounded window of records (:data:`LOG_VIEW_LINES`), one
screen row per record so a record's index is its row (search hits and paging
keep the position exact). While following, each frame appends the new records
in one ``write`` (one Rich render per frame, not per line — this is what keeps
2,000 lines/s cheap). Not following freezes the picture like ``less`` without
``+F``: new records are only counted in the subtitle, and scrolling past the
top asks the app for an older page from the daemon (``logs.tail before_seq``),
which is prepended without moving what the user is reading.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual import events
from textual.message import Message
from textual.widgets import RichLog

from tui.formatting import LEVEL_STYLE
from tui.state import LEVELS, DashboardState, LogLine

#: Records kept in the widget; older ones stay in the state buffer and the daemon.
LOG_VIEW_LINES = 5_000
_SEARCH_STYLE = "reverse bold"
_STAGE_WIDTH = 14
#: Five-cell level names keep the message column where the eye expects it.
_LEVEL_SHORT = {"WARNING": "WARN", "CRITICAL": "CRIT"}


def line_text(line: LogLine, pattern: re.Pattern[str] | None = None) -> Text:
    """``12:00:03 WARNING resample/bio1   window 2048 → 1024 …`` on one row."""
    stamp = time.strftime("%H:%M:%S", time.localtime(line.time))
    stage = line.stage or ""
    if line.dataset:
        stage = f"{stage}/{line.dataset}" if stage else line.dataset
    text = Text(f"{stamp} ", style="bright_black")
    level = _LEVEL_SHORT.get(line.level, line.level)
    text.append(f"{level:<6}", style=LEVEL_STYLE.get(line.level, ""))
    text.append(f"{stage[-_STAGE_WIDTH:]:<{_STAGE_WIDTH}} ", style="bright_black")
    text.append(line.message.replace("\n", " ↵ "))
    if pattern is not None:
        text.highlight_regex(pattern, style=_SEARCH_STYLE)
    return text


class LogView(RichLog):
    """Filtered, searchable log records of one run."""

    class NeedOlder(Message):
        """The user scrolled past the oldest record shown: fetch a page before ``before_seq``."""

        def __init__(self, run_id: str, before_seq: int) -> None:
            super().__init__()
            self.run_id = run_id
            self.before_seq = before_seq

    def __init__(self, state: DashboardState, **kwargs: Any) -> None:
        super().__init__(max_lines=LOG_VIEW_LINES, wrap=False, markup=False, **kwargs)
        self._state = state
        self.run_id: str | None = None
        self.min_level = "DEBUG"
        self.stage_filter: str | None = None
        self.search: str | None = None
        self._pattern: re.Pattern[str] | None = None
        self.follow = True
        self._shown: list[LogLine] = []
        self._pending = 0
        self._hit = -1
        self._asked_before: int | None = None
        self.border_title = "Log"
        self._update_subtitle()

    # -- what to show -----------------------------------------------------------------

    @property
    def shown(self) -> list[LogLine]:
        return self._shown

    def show_run(self, run_id: str | None) -> None:
        self.run_id = run_id
        self.follow = True
        self._rebuild_tail()

    def wants(self, line: LogLine) -> bool:
        if LEVELS.index(line.level) < LEVELS.index(self.min_level):
            return False
        return self.stage_filter is None or line.matches_stage(self.stage_filter)

    def append(self, lines: Iterable[LogLine]) -> None:
        """New records of the shown run (one frame's worth)."""
        # Records painted by a rebuild in the same frame are already on screen.
        last = self._shown[-1].seq if self._shown else 0
        fresh = [line for line in lines if line.seq > last and self.wants(line)]
        if not fresh:
            return
        if not self.follow:
            self._pending += len(fresh)
            self._update_subtitle()
            return
        self._shown.extend(fresh)
        if len(self._shown) > LOG_VIEW_LINES:
            del self._shown[: len(self._shown) - LOG_VIEW_LINES]
        self.write(Text("\n").join(line_text(line, self._pattern) for line in fresh))

    def reload(self) -> None:
        """The state's buffer was replaced (older page, resync): repaint keeping the position."""
        if self.follow:
            self._rebuild_tail()
            return
        first = self._shown[0].seq if self._shown else None
        last = self._shown[-1].seq if self._shown else 0
        view = self._state.runs.get(self.run_id) if self.run_id else None
        records = list(view.logs) if view else []
        # Frozen: keep the same newest record, take in anything older that arrived.
        wanted = [r for r in records if self.wants(r)]
        older = [r for r in wanted if first is not None and r.seq < first]
        kept = [r for r in wanted if first is None or first <= r.seq <= last]
        shown = (older + kept)[:LOG_VIEW_LINES]
        self._paint(shown)
        self.scroll_to(y=len(older), animate=False, immediate=True)

    # -- user controls ----------------------------------------------------------------

    def toggle_follow(self) -> bool:
        self.set_follow(not self.follow)
        return self.follow

    def set_follow(self, follow: bool) -> None:
        if follow == self.follow:
            return
        self.follow = follow
        if follow:
            self._rebuild_tail()
        self._update_subtitle()

    def cycle_level(self) -> str:
        self.min_level = LEVELS[(LEVELS.index(self.min_level) + 1) % (len(LEVELS) - 1)]
        self._refilter()
        return self.min_level

    def set_stage_filter(self, stage: str | None) -> None:
        self.stage_filter = stage
        self._refilter()

    def set_search(self, term: str | None) -> int:
        """Highlight ``term`` (case-insensitive); freezes the view; returns the number of hits."""
        self.search = term or None
        self._pattern = re.compile(re.escape(term), re.IGNORECASE) if term else None
        self._hit = len(self._shown)
        if self._pattern is not None:
            self.follow = False
        self._paint(self._shown)
        hits = self.hits()
        if hits:
            self.jump(-1)
        self._update_subtitle()
        return len(hits)

    @property
    def current_hit(self) -> int | None:
        """Row of the hit last jumped to (None before any jump)."""
        return self._hit if 0 <= self._hit < len(self._shown) else None

    def hits(self) -> list[int]:
        if self._pattern is None:
            return []
        return [i for i, line in enumerate(self._shown) if self._pattern.search(line.message)]

    def jump(self, direction: int) -> int | None:
        """Scroll to the next (1) or previous (-1) hit; returns its row."""
        hits = self.hits()
        if not hits:
            return None
        if direction > 0:
            after = [row for row in hits if row > self._hit]
            self._hit = after[0] if after else hits[0]
        else:
            before = [row for row in hits if row < self._hit]
            self._hit = before[-1] if before else hits[-1]
        self.scroll_to(
            y=max(0, self._hit - self.scrollable_content_region.height // 2),
            animate=False,
            immediate=True,
        )
        return self._hit

    # -- scrolling: leaving the bottom stops following; the top pages back ------------

    def _on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        self._leave_bottom()

    def action_scroll_up(self) -> None:
        self._leave_bottom()
        super().action_scroll_up()

    def action_page_up(self) -> None:
        self._leave_bottom()
        super().action_page_up()

    def action_scroll_home(self) -> None:
        self._leave_bottom()
        super().action_scroll_home()

    def _leave_bottom(self) -> None:
        if self.follow:
            self.follow = False
            self._update_subtitle()
        if self.scroll_y <= 0:
            self._ask_older()

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if new <= 0 < old and not self.follow:
            self._ask_older()

    def _ask_older(self) -> None:
        if self.run_id is None or not self._shown:
            return
        before = self._shown[0].seq
        if before <= 1 or before == self._asked_before:
            return
        self._asked_before = before
        self.post_message(self.NeedOlder(self.run_id, before))

    # -- internals --------------------------------------------------------------------

    def _refilter(self) -> None:
        if self.follow:
            self._rebuild_tail()
        else:
            self.reload()
        self._update_subtitle()

    def _rebuild_tail(self) -> None:
        view = self._state.runs.get(self.run_id) if self.run_id else None
        records = [line for line in view.logs if self.wants(line)] if view else []
        self._pending = 0
        self._paint(records[-LOG_VIEW_LINES:])
        self.scroll_end(animate=False, immediate=True)
        self._update_subtitle()

    def _paint(self, lines: list[LogLine]) -> None:
        self._shown = list(lines)
        self._asked_before = None
        self.clear()
        if lines:
            self.write(
                Text("\n").join(line_text(line, self._pattern) for line in lines),
                scroll_end=self.follow,
            )

    def _update_subtitle(self) -> None:
        parts = [f"≥{self.min_level}"]
        if self.stage_filter:
            parts.append(f"stage {self.stage_filter}")
        if self.search:
            parts.append(f"/{self.search} ({len(self.hits())})")
        parts.append("following" if self.follow else "paused")
        if self._pending:
            parts.append(f"+{self._pending} new")
        self.border_subtitle = " · ".join(parts)
