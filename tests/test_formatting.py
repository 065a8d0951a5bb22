"""How numbers and states read in the CLI and the dashboard (and that reconnects back off)."""

from __future__ import annotations

import pytest

from supervisor import formatting
from tui.connection import Backoff


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (3 * 1024**3, "3.0 GiB")],
)
def test_size(value, text) -> None:
    assert formatting.size(value) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0, "0s"),
        (7.4, "7s"),
        (75, "1m 15s"),
        (306, "5m 06s"),
        (3725, "1h 02m"),
        (90000, "1d 1h"),
    ],
)
def test_duration(seconds, text) -> None:
    assert formatting.duration(seconds) == text


def test_every_state_has_a_symbol_not_only_a_colour() -> None:
    symbols = {symbol for symbol, _ in formatting.STATE_STYLE.values()}
    # Distinct glyphs for the states a user must tell apart at a glance.
    for state in ("running", "paused", "done", "failed", "killed", "interrupted"):
        text = formatting.state_text(state)
        assert text.plain.startswith(formatting.STATE_STYLE[state][0])
    assert len(symbols) >= 8
    assert formatting.state_text("paused", paused_hard=True).plain == "‖ paused (hard)"
    assert formatting.state_text("paused", paused_hard=True, glyph=False).plain == "paused (hard)"
    assert formatting.state_text("running", paused_hard=True).plain == "▶ running"


def test_bar_is_clamped_and_exact_width() -> None:
    assert formatting.bar(0.5, 10).plain == "█████░░░░░"
    assert formatting.bar(1.7, 4).plain == "████"
    assert formatting.bar(-1, 4).plain == "░░░░"


def test_rate_switches_to_per_minute_when_slow() -> None:
    assert formatting.rate(None, "windows") == ""
    assert formatting.rate(12.34, "windows") == "12.3 windows/s"
    assert formatting.rate(0.05, "windows") == "3.0 windows/min"


def test_backoff_doubles_up_to_its_ceiling() -> None:
    backoff = Backoff(first=0.25, ceiling=2.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
