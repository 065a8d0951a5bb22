"""Memory over time for the selected run: worker RSS against its budget and the governor's levels.

Series: RSS and system-available memory (MiB, left axis), the governor's
window size (pixels, right axis) and flat lines at the budget and at the
warning/critical fractions of it, so one glance says how close the run is to
being throttled. The span cycles between the last 5 minutes, the last hour and
the whole run. Drawing is cheap but not free, so the app redraws it only when
a new sample arrived, at most a few times a second.
"""

from __future__ import annotations

from typing import Any

from textual_plotext import PlotextPlot

from tui.state import DashboardState, MemorySample

_MIB = 1024 * 1024
_MINUTE = 60.0
#: (label, seconds or None for the whole run) cycled by the ``m`` key.
SPANS: tuple[tuple[str, float | None], ...] = (
    ("5 min", 5 * _MINUTE),
    ("1 h", 60 * _MINUTE),
    ("whole run", None),
)
#: Most points drawn per series: a chart is at most a couple of hundred cells wide,
#: so hours of 1 s samples are thinned to this before plotting.
MAX_POINTS = 400


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
        samples = self._window(list(view.memory)) if view else []
        if view is None or not samples:
            self.border_subtitle = f"no samples · {self.span_label}"
            self.refresh()
            return
        now = samples[-1].time
        xs = [(sample.time - now) / _MINUTE for sample in samples]
        plt.plot(xs, [sample.rss / _MIB for sample in samples], label="RSS", color="green")
        available = [(x, s.system_available) for x, s in zip(xs, samples, strict=True)]
        available = [(x, value) for x, value in available if value is not None]
        if available:
            plt.plot(
                [x for x, _ in available],
                [value / _MIB for _, value in available],
                label="avail",
                color="blue",
            )
        windows = [(x, s.window_size) for x, s in zip(xs, samples, strict=True) if s.window_size]
        if windows:
            plt.plot(
                [x for x, _ in windows],
                [float(value) for _, value in windows],
                label="window px",
                color="magenta",
                yside="right",
            )
        levels = view.levels
        span = [xs[0], xs[-1]] if len(xs) > 1 else [xs[0] - 1.0, xs[0]]
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
        self.border_subtitle = f"{levels.level} · {self.span_label}"
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
