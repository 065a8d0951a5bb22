"""How numbers and states look on screen: sizes, durations, progress bars, run-state glyphs.

Every state has a symbol as well as a colour (the dashboard must read on a
monochrome terminal and for colour-blind users), and colours are ANSI names,
never true colour, so the picture survives SSH and ``TERM=screen``.
"""

from __future__ import annotations

from rich.text import Text

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
_STEP = 1024
_MINUTE = 60
_HOUR = 3600
_DAY = 86400

#: run/stage state → (symbol, ANSI style). Single-cell glyphs only: wide emoji break columns.
STATE_STYLE: dict[str, tuple[str, str]] = {
    "queued": ("◌", "bright_black"),
    "pending": ("◌", "bright_black"),
    "running": ("▶", "green"),
    "paused": ("‖", "yellow"),
    "stopping": ("■", "yellow"),
    "done": ("✔", "bright_green"),
    "failed": ("✘", "bold red"),
    "killed": ("✖", "magenta"),
    "interrupted": ("↯", "yellow"),
    "skipped": ("»", "bright_black"),
}

LEVEL_STYLE: dict[str, str] = {
    "DEBUG": "bright_black",
    "INFO": "cyan",
    "WARNING": "yellow",
    "ERROR": "bold red",
    "CRITICAL": "bold white on red",
}

_BAR_FULL = "█"
_BAR_EMPTY = "░"


def size(value: int | float | None) -> str:
    """1536 → '1.5 KiB'; None → '–'."""
    if value is None:
        return "–"
    amount = float(value)
    for unit in _UNITS:
        if abs(amount) < _STEP or unit == _UNITS[-1]:
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= _STEP
    raise AssertionError("unreachable")


def duration(seconds: float | None) -> str:
    """75 → '1m15s', 3725 → '1h02m'; None → '–'."""
    if seconds is None:
        return "–"
    whole = int(seconds)
    if whole < _MINUTE:
        return f"{whole}s"
    if whole < _HOUR:
        return f"{whole // _MINUTE}m{whole % _MINUTE:02d}s"
    if whole < _DAY:
        return f"{whole // _HOUR}h{whole % _HOUR // _MINUTE:02d}m"
    return f"{whole // _DAY}d{whole % _DAY // _HOUR:02d}h"


def state_text(state: str, *, paused_hard: bool = False) -> Text:
    """'▶ running' in green; a SIGSTOP pause says so."""
    symbol, style = STATE_STYLE.get(state, ("?", "white"))
    label = f"{symbol} {state}"
    if paused_hard and state == "paused":
        label += " (stop)"
    return Text(label, style=style)


def bar(fraction: float, width: int, style: str = "green") -> Text:
    """A text progress bar ``width`` cells wide (no half-blocks: they misrender in some fonts)."""
    filled = round(max(0.0, min(1.0, fraction)) * width)
    text = Text(_BAR_FULL * filled, style=style)
    text.append(_BAR_EMPTY * (width - filled), style="bright_black")
    return text


def rate(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if value >= 1:
        return f"{value:.1f} {unit}/s"
    return f"{value * _MINUTE:.1f} {unit}/min"
