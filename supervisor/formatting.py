"""How states, glyphs, durations and sizes read, for the ``geod`` CLI and the dashboard alike.

One wording for both, so a user reads the same fact the same way wherever it
is shown ("paused (hard)", "1m 15s", "1.5 KiB"). Every state has a glyph as
well as a colour (the dashboard must read on a monochrome terminal and for
colour-blind users), and colours are ANSI names, never true colour, so the
picture survives SSH and ``TERM=screen``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.text import Text

if TYPE_CHECKING:
    from pipeline.events import RunStateEvent

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
_KIB = 1024
_SECONDS_PER_MINUTE = 60
_SECONDS_PER_HOUR = 3600
_SECONDS_PER_DAY = 86400
#: What a missing value (no RSS yet, no ETA) reads as.
MISSING = "-"

#: run/stage state → (glyph, ANSI style). Single-cell glyphs only: wide emoji break columns.
STATE_STYLE: dict[str, tuple[str, str]] = {
    "scheduled": ("◷", "blue"),
    "queued": ("◌", "bright_black"),
    "pending": ("◌", "bright_black"),
    "running": ("▶", "green"),
    "paused": ("‖", "yellow"),
    "stopping": ("■", "yellow"),
    "done": ("✔", "bright_green"),
    "failed": ("✘", "bold red"),
    "killed": ("✖", "magenta"),
    "interrupted": ("↯", "yellow"),
    "skipped": ("↷", "bright_black"),
}
_UNKNOWN_STATE = ("?", "white")

LEVEL_STYLE: dict[str, str] = {
    "DEBUG": "bright_black",
    "INFO": "cyan",
    "WARNING": "yellow",
    "ERROR": "bold red",
    "CRITICAL": "bold white on red",
}

#: Longest error text in a one-line state change (the run's log has all of it).
CHANGE_ERROR_CHARS = 60

_BAR_FULL = "█"
_BAR_EMPTY = "░"


def size(value: int | float | None) -> str:
    """1536 → '1.5 KiB'; None → '-'."""
    if value is None:
        return MISSING
    amount, unit = float(value), 0
    while abs(amount) >= _KIB and unit < len(_BYTE_UNITS) - 1:
        amount /= _KIB
        unit += 1
    return f"{amount:.0f} B" if unit == 0 else f"{amount:.1f} {_BYTE_UNITS[unit]}"


def duration(seconds: float | None) -> str:
    """``1d 2h``, ``3h 04m``, ``5m 06s``, ``7s``: two units at most, like pueue's table."""
    if seconds is None:
        return MISSING
    total = max(0, round(seconds))
    days, rest = divmod(total, _SECONDS_PER_DAY)
    hours, rest = divmod(rest, _SECONDS_PER_HOUR)
    minutes, secs = divmod(rest, _SECONDS_PER_MINUTE)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def state_glyph(state: str) -> str:
    return STATE_STYLE.get(state, _UNKNOWN_STATE)[0]


def state_style(state: str) -> str:
    return STATE_STYLE.get(state, _UNKNOWN_STATE)[1]


def state_label(state: str, *, paused_hard: bool = False) -> str:
    """'paused (hard)' for a SIGSTOP pause (the worker did not acknowledge), else the state."""
    return f"{state} (hard)" if paused_hard and state == "paused" else state


def state_text(state: str, *, paused_hard: bool = False, glyph: bool = True) -> Text:
    """'▶ running' in green (or plain 'running' with ``glyph=False``, for tables scripts parse)."""
    label = state_label(state, paused_hard=paused_hard)
    return Text(f"{state_glyph(state)} {label}" if glyph else label, style=state_style(state))


def bar(fraction: float, width: int, style: str = "green") -> Text:
    """A text progress bar ``width`` cells wide (no half-blocks: they misrender in some fonts)."""
    filled = round(max(0.0, min(1.0, fraction)) * width)
    text = Text(_BAR_FULL * filled, style=style)
    text.append(_BAR_EMPTY * (width - filled), style="bright_black")
    return text


def rate(value: float | None, unit: str) -> str:
    """Progress per second, or per minute when slower than one a second ('3.1/s' unitless)."""
    if value is None:
        return ""
    per = f" {unit}/" if unit else "/"
    if value >= 1:
        return f"{value:.1f}{per}s"
    return f"{value * _SECONDS_PER_MINUTE:.1f}{per}min"


def approx_span(seconds: float) -> str:
    """A range's half-width, rounded as a person says it: '±40 s', '±10 min', '±1h 20m'."""
    total = max(1, round(seconds))
    if total < _SECONDS_PER_MINUTE:
        return f"±{total} s"
    if total < _SECONDS_PER_HOUR:
        return f"±{round(total / _SECONDS_PER_MINUTE)} min"
    hours, rest = divmod(total, _SECONDS_PER_HOUR)
    return f"±{hours}h {rest // _SECONDS_PER_MINUTE:02d}m"


def eta(eta_at: float | None, spread: float | None, now: float, *, compact: bool = False) -> str:
    """When a run should be done as a clock time with its range: 'done ≈ 20:40 (±10 min)'.

    Tomorrow or later the date is added; ``compact`` drops the words for a table
    cell ('≈ 20:40 ±10 min'). Without an estimate, '-'.
    """
    if eta_at is None:
        return MISSING
    when = time.localtime(eta_at)
    clock = time.strftime("%H:%M", when)
    if time.strftime("%Y%m%d", when) != time.strftime("%Y%m%d", time.localtime(now)):
        clock = time.strftime("%a %H:%M", when)
    if compact:
        return f"≈ {clock}" + (f" {approx_span(spread)}" if spread is not None else "")
    return f"done ≈ {clock}" + (f" ({approx_span(spread)})" if spread is not None else "")


def state_change(event: RunStateEvent) -> str:
    """One run-state change in words: 'failed at export, retry 1/3', 'done in 4m 12s'.

    A run the restart policy queues again after a failure is told as the failure
    and its retry; a run running again after a pause as "resumed".
    """
    state, previous = event.state, event.previous
    where = f" at {event.stage}" if event.stage else ""
    bound = f"/{event.max_retries}" if event.max_retries is not None else ""
    if state == "queued" and previous == "running" and event.retries:
        return f"failed{where}, retry {event.retries}{bound}"
    if state == "running" and previous == "paused":
        return "resumed"
    if state == "running":
        return f"started (retry {event.retries}{bound})" if event.retries else "started"
    if state == "done":
        return f"done in {duration(event.running_time)}"
    # Where it stopped matters for a run that stopped; a queued one has not begun again.
    text = state if state == "queued" else f"{state}{where}"
    if state in ("failed", "interrupted") and event.error:
        error = event.error
        if len(error) > CHANGE_ERROR_CHARS:
            error = error[: CHANGE_ERROR_CHARS - 1] + "…"
        text += f": {error}"
    return text
