"""Times typed on the command line: a span (``30m``, ``1h30m``, ``7d``) or a moment
(``2026-12-24T02:00``, ``02:00``), as click parameter types with one-line errors.

A span is what ``at``, ``sleep`` and pueue's ``--delay`` users type: whole
days, hours, minutes and seconds in that order, or bare seconds. A moment is
an ISO 8601 date and time (local time unless it names its zone) or a clock
time ``HH:MM``, meaning its next occurrence, so ``--at 02:00`` is tonight's.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta
from typing import Any

import click

_SPAN = re.compile(r"^(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+(?:\.\d+)?)s?)?$")
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_CLOCK = re.compile(r"^\d{1,2}:\d{2}$")


def parse_span(text: str) -> float:
    """``'1h30m'`` → 5400.0; ValueError for anything else (empty included)."""
    match = _SPAN.fullmatch(text.strip())
    if match is None or not any(match.groupdict().values()):
        raise ValueError(f"{text!r} is not a duration like 45s, 30m, 2h, 1h30m or 7d")
    return sum(float(value) * _SECONDS[unit] for unit, value in match.groupdict().items() if value)


def parse_moment(text: str, now: float | None = None) -> float:
    """A Unix time from ISO 8601 (local unless zoned) or ``HH:MM`` (its next occurrence)."""
    now = time.time() if now is None else now
    text = text.strip()
    try:
        if _CLOCK.fullmatch(text):
            clock = datetime.strptime(text, "%H:%M").time()
            today = datetime.fromtimestamp(now)
            moment = datetime.combine(today.date(), clock)
            if moment.timestamp() <= now:
                moment += timedelta(days=1)
            return moment.timestamp()
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time like 2026-12-24T02:00 or 02:00 (the next one)"
        ) from None


class _Parsed(click.ParamType):
    """A parameter read by :meth:`parse`, whose ValueError becomes click's usage error."""

    def parse(self, text: str) -> float:
        raise NotImplementedError

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):
            return value
        try:
            return self.parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Span(_Parsed):
    """``--delay 30m``: seconds as a float."""

    name = "duration"

    def parse(self, text: str) -> float:
        return parse_span(text)


class Moment(_Parsed):
    """``--at 2026-12-24T02:00``: a Unix time, which must lie ahead."""

    name = "time"

    def parse(self, text: str) -> float:
        moment = parse_moment(text)
        if moment <= time.time():
            raise ValueError(f"{text!r} is in the past")
        return moment
