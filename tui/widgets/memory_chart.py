"""Memory over time for the selected run: worker RSS against its budget and the governor's levels.

Series: RSS and system-available memory (MiB, left axis), the governor's
window size (pixels, right axis) and flat lines at the budget and at the
warning/critical fractions of it, over time before the newest sample (x axis
ticks read as durations with their unit: ``-4m 00s`` … ``now``), so one glance
says how close the run is to being throttled. The span cycles between the last
5 minutes, the last hour and the whole run. Drawing is cheap but not free, so
the app redraws it only when a new sample arrived, at most a few times a second.
"""

from __future__ import annotations

from typing import Any

from textual_plotext import PlotextPlot

from supervisor.formatting import duration, size
from tui.state import DashboardState, MemorySample

_MIB = 1024 * 1024
_MINUTE = 60.0
#: Labelled ticks on the time axis (its two ends included).
TIME_TICKS = 5
#: (label, seconds or None for the whole run) cycled by the ``m`` key.
SPANS: tuple[tuple[str, float | None], ...] = (
    ("5 min", 5 * _MINUTE),
    ("1 h", 60 * _MINUTE),
    ("whole run", None),
)
#: Most points drawn per series: a chart is at most a couple of hundred cells wide,
#: so hours of 1 s samples are thinned to this before plotting.
MAX_POINTS = 400
#: Room above the highest of RSS and budget so the top line is not on the frame.
HEADROOM = 1.15


class MemoryChart(PlotextPlot):
    """RSS / available / window size of one run over the chosen span."""

    def __init__(self, state: DashboardState, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._state = state
        self.run_id: str | None = None
        self.span_index = 0
        self.can_focus = True
        self.border_title = "Memory MiB · window px →"

    @property
    def span_label(self) -> str:
        return SPANS[self.span_index][0]

    def show_run(self, run_id: str | None) -> None:
        self.run_id = run_id
        self.redraw()

    def cycle_span(self) -> str:
        self.span_index = (self.span_index + 1) % len(SPANS)
        self.redraw()
        return self.span_label

    def redraw(self) -> None:
        plt = self.plt
        plt.clear_data()
        view = self._state.runs.get(self.run_id) if self.run_id else None
        # RSS from the daemon's samples of the whole worker tree when there are any
        # (children included); a replay of worker events only has the worker's own.
        tree = list(view.memory) if view else []
        readings = list(view.worker_memory) if view else []
        rss = self._window(tree or readings)
        if view is None or not rss:
            self.border_subtitle = f"no samples · {self.span_label}"
            self.refresh()
            return
        now = max(rss[-1].time, readings[-1].time if readings else 0.0)
        start = rss[0].time

        def ago(t: float) -> float:
            return t - now

        xs = [ago(s.time) for s in rss]
        rss_mib = [s.rss / _MIB for s in rss]
        levels = view.levels
        # The y range is the worker's world (its RSS and budget): the machine's free
        # memory is usually far above it and would flatten everything else, so it is
        # drawn only once it comes down into that range, and stated in the border.
        top = max([*rss_mib, (levels.budget or 0) / _MIB]) * HEADROOM
        plt.ylim(0, top)
        plt.plot(xs, rss_mib, label="RSS", color="green")
        available = [s for s in rss if s.system_available is not None]
        low = [s for s in available if (s.system_available or 0) / _MIB < top]
        if low:
            plt.plot(
                [ago(s.time) for s in available],
                [min(top, (s.system_available or 0) / _MIB) for s in available],
                label="avail",
                color="blue",
            )
        windows = [s for s in self._window(readings) if s.window_size and s.time >= start]
        if windows:
            plt.plot(
                [ago(s.time) for s in windows],
                [float(s.window_size or 0) for s in windows],
                label="window px",
                color="magenta",
                yside="right",
            )
        span = [xs[0], 0.0] if xs[0] < 0 else [-_MINUTE, 0.0]
        plt.xlim(*span)
        plt.xticks(*time_ticks(span[0]))
        if levels.budget:
            budget = levels.budget / _MIB
            plt.plot(span, [budget, budget], label="budget", color="red")
            for fraction, color, name in (
                (levels.critical, "orange", "critical"),
                (levels.warning, "yellow", "warning"),
            ):
                if fraction:
                    value = budget * fraction
                    plt.plot(span, [value, value], label=name, color=color)
        # Axis names live in the border, not in plot rows: at 80×24 every row counts.
        free = f"avail {size(available[-1].system_available)} · " if available else ""
        self.border_subtitle = f"{free}{levels.level} · {self.span_label}"
        self.refresh()

    def _window(self, samples: list[MemorySample]) -> list[MemorySample]:
        seconds = SPANS[self.span_index][1]
        if samples and seconds is not None:
            start = samples[-1].time - seconds
            samples = [sample for sample in samples if sample.time >= start]
        if len(samples) > MAX_POINTS:
            step = len(samples) / MAX_POINTS
            samples = [samples[int(i * step)] for i in range(MAX_POINTS - 1)] + [samples[-1]]
        return samples


def time_ticks(oldest: float, count: int = TIME_TICKS) -> tuple[list[float], list[str]]:
    """Tick positions from ``oldest`` (seconds, negative) to 0 and their labels with a unit.

    Plotext would label the axis with bare numbers (``-0.155``): nobody can tell
    minutes from seconds or hours. Each tick reads as a duration before the newest
    sample instead (``-2m 30s``), the last one as ``now``.
    """
    ticks = [oldest * (count - 1 - index) / (count - 1) for index in range(count)]
    labels = [f"-{duration(-tick)}" if tick < 0 else "now" for tick in ticks]
    return ticks, labels
