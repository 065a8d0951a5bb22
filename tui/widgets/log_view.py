"""The log of the selected run: level colours, level/stage filters, search, follow, paging back.

The view holds a bounded window of records (:data:`LOG_VIEW_LINES`), one
screen row per record so a record's index is its row (search hits and paging
keep the position exact). Not following freezes the picture like ``less``
without ``+F``: new records are only counted in the subtitle, and scrolling past
the top asks the app for an older page from the daemon (``logs.tail
before_seq``), which is prepended without moving what the user is reading.

Why not ``RichLog``: it renders every line through Rich when it is written
(measured: ~0.4 ms a line, so 2,000 lines/s would need most of a core, and a
filter change re-rendering 5,000 lines froze the app for two seconds). This is
Textual's Line API instead (a ``ScrollView`` with ``render_line``, as Textual's
own ``Log`` does): appending is a list append, and only the rows on screen are
turned into segments, cached per record. Level colours, search highlighting and
horizontal scrolling are kept.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.cache import LRUCache
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from pipeline.contract import LOG_LEVELS, level_rank
from supervisor.formatting import LEVEL_STYLE
from tui.state import DashboardState, LogLine

#: Records kept in the widget; older ones stay in the state buffer and the daemon.
LOG_VIEW_LINES = 5_000
#: Rendered rows cached (a few screens' worth: scrolling back and forth is free).
_ROW_CACHE = 1_024
_STAGE_WIDTH = 12
#: Five-cell level names keep the message column where the eye expects it.
_LEVEL_SHORT = {"WARNING": "WARN", "CRITICAL": "CRIT"}
_DIM = Style.parse("bright_black")
_SEARCH = Style.parse("reverse bold")
_LEVEL_STYLES = {level: Style.parse(style) for level, style in LEVEL_STYLE.items()}
#: Cells before the message: "HH:MM:SS " + level (6) + stage column + space.
_PREFIX_CELLS = 9 + 6 + _STAGE_WIDTH + 1


def row_segments(line: LogLine, pattern: re.Pattern[str] | None = None) -> list[Segment]:
    """``12:00:03 WARN  bio1         window 2048 → 1024 …`` as styled segments, one row."""
    stamp = time.strftime("%H:%M:%S", time.localtime(line.time))
    # The dataset is the most specific thing a line is about; else its stage.
    where = line.dataset or line.stage or ""
    if len(where) > _STAGE_WIDTH:
        where = "…" + where[-(_STAGE_WIDTH - 1) :]
    level = _LEVEL_SHORT.get(line.level, line.level)
    segments = [
        Segment(f"{stamp} ", _DIM),
        Segment(f"{level:<6}", _LEVEL_STYLES.get(line.level)),
        Segment(f"{where:<{_STAGE_WIDTH}} ", _DIM),
    ]
    message = line.message.replace("\n", " ↵ ")
    position = 0
    for match in pattern.finditer(message) if pattern is not None else ():
        if match.start() > position:
            segments.append(Segment(message[position : match.start()]))
        segments.append(Segment(match.group(), _SEARCH))
        position = match.end()
    segments.append(Segment(message[position:]))
    return segments


class LogView(ScrollView, can_focus=True):
    """Filtered, searchable log records of one run."""

    class NeedOlder(Message):
        """The user scrolled past the oldest record shown: fetch a page before ``before_seq``."""

        def __init__(self, run_id: str, before_seq: int) -> None:
            super().__init__()
            self.run_id = run_id
            self.before_seq = before_seq

    def __init__(self, state: DashboardState, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._state = state
        # Rendered rows by record seq; cleared whenever what a row looks like changes.
        self._rows: LRUCache[int, Strip] = LRUCache(_ROW_CACHE)
        self._widest = 0
        self.run_id: str | None = None
        self.min_level = "DEBUG"
        self.stage_filter: str | None = None
        #: Keep the stage filter when another run is selected.
        self.pinned = False
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
        """Point at another run: follow it; a stage filter (another run's stage id) is
        dropped unless pinned (the level is a viewing preference and stays)."""
        self.run_id = run_id
        self.follow = True
        if not self.pinned:
            self.stage_filter = None
        self._rebuild_tail()

    def wants(self, line: LogLine) -> bool:
        if level_rank(line.level) < level_rank(self.min_level):
            return False
        return self.stage_filter is None or line.matches_stage(self.stage_filter)

    def append(self, lines: Iterable[LogLine]) -> None:
        """New records of the shown run (one frame's worth)."""
        # Records painted by a rebuild in the same frame are already on screen.
        last = self._shown[-1].seq if self._shown else 0
        fresh = [line for line in lines if line.seq > last and self.wants(line)]
        if not fresh:
            return
        # Held (not following): new records still join the view below what is being
        # read, without moving it, so a search counts and reaches them too.
        self._shown.extend(fresh)
        excess = len(self._shown) - LOG_VIEW_LINES
        if excess > 0:
            del self._shown[:excess]
            self._hit -= excess
            if not self.follow:
                self.scroll_to(y=max(0, self.scroll_y - excess), animate=False, immediate=True)
        self._resize(fresh)
        if self.follow:
            self._stick_to_end()
        else:
            self._pending += len(fresh)
        self._update_subtitle()
        self.refresh()

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
        # Cycles DEBUG → … → ERROR (CRITICAL alone is never worth a filter).
        self.min_level = LOG_LEVELS[(level_rank(self.min_level) + 1) % (len(LOG_LEVELS) - 1)]
        self._refilter()
        return self.min_level

    def set_stage_filter(self, stage: str | None) -> None:
        self.stage_filter = stage
        self._refilter()

    def set_search(self, term: str | None) -> int:
        """Highlight ``term`` (case-insensitive); freezes the view; returns the number of hits."""
        self.search = term or None
        self._pattern = re.compile(re.escape(term), re.IGNORECASE) if term else None
        self._rows.clear()
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
        self._update_subtitle()

    def _paint(self, lines: list[LogLine]) -> None:
        self._shown = list(lines)
        self._asked_before = None
        self._rows.clear()
        self._widest = 0
        self._resize(self._shown)
        if self.follow:
            self._stick_to_end()
        self.refresh()

    def _stick_to_end(self) -> None:
        # After the next layout: the new virtual size (and, at mount, our own size)
        # is only known then.
        self.scroll_end(animate=False, immediate=False, x_axis=False)

    def on_resize(self, event: events.Resize) -> None:
        if self.follow:
            self._stick_to_end()
        self._update_subtitle()

    def _resize(self, added: list[LogLine]) -> None:
        """Grow the virtual width to the widest row seen (for horizontal scrolling)."""
        for line in added:
            width = cell_len(line.message) + _PREFIX_CELLS
            if width > self._widest:
                self._widest = width
        self.virtual_size = Size(self._widest, len(self._shown))

    # -- Line API: only rows on screen are ever rendered ------------------------------

    def row_strip(self, index: int) -> Strip:
        """The whole (uncropped) row of record ``index`` of the view, cached."""
        line = self._shown[index]
        strip = self._rows.get(line.seq)
        if strip is None:
            strip = Strip(row_segments(line, self._pattern))
            self._rows[line.seq] = strip
        return strip

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.scrollable_content_region.width
        style = self.rich_style
        if not self._shown and y == 0 and self.run_id is not None:
            return Strip([Segment(self.empty_message(), _DIM)]).crop_extend(0, width, style)
        if index >= len(self._shown):
            return Strip.blank(width, style)
        strip = self.row_strip(index).crop_extend(scroll_x, scroll_x + width, style)
        return strip.apply_style(style)

    def empty_message(self) -> str:
        """What an empty view says: no lines yet, or none pass the filters (and the way out)."""
        if self.min_level == LOG_LEVELS[0] and self.stage_filter is None:
            return "no log lines yet"
        what = [f"≥{self.min_level}"] if self.min_level != LOG_LEVELS[0] else []
        if self.stage_filter:
            what.append(f"in stage {self.stage_filter}")
        keys = " · ".join(
            hint
            for hint, active in (
                ("l cycles the level", self.min_level != LOG_LEVELS[0]),
                ("s clears the stage", self.stage_filter is not None),
            )
            if active
        )
        return f"no lines {' '.join(what)} — {keys}"

    def watch_scroll_x(self, old: float, new: float) -> None:
        super().watch_scroll_x(old, new)
        self._update_subtitle()

    def _update_subtitle(self) -> None:
        parts = [f"≥{self.min_level}"]
        if self.stage_filter:
            parts.append(f"stage {self.stage_filter}" + (" (pinned)" if self.pinned else ""))
        if self.search:
            parts.append(f"/{self.search} ({plural(len(self.hits()), 'hit')})")
        # About the scroll, not the run: "held" never reads as "the run is paused".
        parts.append("following" if self.follow else "scroll held · f follows")
        if self._pending:
            parts.append(f"+{self._pending} new")
        if self._widest > self.scrollable_content_region.width + self.scroll_x:
            parts.append("→ more")
        elif self.scroll_x > 0:
            parts.append("← more")
        self.border_subtitle = " · ".join(parts)


def plural(count: int, noun: str) -> str:
    """'1 hit', '0 hits', '3 hits'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
