"""Memory over time for the selected run: worker RSS against its budget and the governor's levels.

Series: RSS and system-available memory (left axis, ticks read as sizes:
``1.0 GiB``), the governor's window size (pixels, right axis) and flat lines at
the budget and at the warning/critical fractions of it, over clock time (ticks
read ``15:42:10``, local time, as the log's timestamps do). Each series has its
own ANSI colour, and the legend sits in the panel's bottom border, never over
the lines. The top border is a readout a user can quote:
``RSS 174.0 MiB · peak 732.0 MiB · budget 1.0 GiB (17 %)``. The span cycles
between the last 5 minutes, the last hour and the whole run. A run on Dask workers
can show one worker instead (its samples against its memory limit, Dask's spill and
pause fractions as warning and critical), named in the title: ``worker
127.0.0.1:39001 · RSS …``. Drawing is cheap
but not free, so the app redraws it only when a new sample arrived, at most a
few times a second.
"""

from __future__ import annotations

import time
from typing import Any

from textual_plotext import Plot, PlotextPlot

from supervisor.formatting import size
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
#: Labelled ticks on the size axis (zero included).
SIZE_TICKS = 4
#: Spans up to this long label their ticks with seconds.
SECONDS_LABELS_UP_TO = 15 * _MINUTE
#: One ANSI colour per series, all distinct, as the 16 standard colour numbers: plotext
#: and Rich read a number the same way, while their colour names differ (plotext has
#: no "yellow", and silently paints an unknown name in its next default colour).
COLORS: dict[str, int] = {
    "RSS": 2,  # green
    "avail": 4,  # blue
    "budget": 15,  # bright white
    "warning": 3,  # yellow
    "critical": 1,  # red
    "window px": 6,  # cyan
}
#: The standard colour numbers as Textual markup names (the legend in the border).
_ANSI_NAMES = tuple(
    f"ansi_{bright}{name}"
    for bright in ("", "bright_")
    for name in ("black", "red", "green", "yellow", "blue", "magenta", "cyan", "white")
)


class MemoryChart(PlotextPlot):
    """RSS / available / window size of one run over the chosen span."""

    def __init__(self, state: DashboardState, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._state = state
        self.run_id: str | None = None
        self.span_index = 0
        #: The Dask worker shown (its address), or None for the run's own memory.
        self.series: str | None = None
        self.can_focus = True
        self.border_title = "Memory"

    @property
    def span_label(self) -> str:
        return SPANS[self.span_index][0]

    def show_run(self, run_id: str | None) -> None:
        if run_id != self.run_id:
            self.series = None  # another run's workers are other workers
        self.run_id = run_id
        self.redraw()

    def cycle_span(self) -> str:
        self.span_index = (self.span_index + 1) % len(SPANS)
        self.redraw()
        return self.span_label

    def series_names(self) -> list[str | None]:
        """What the panel can show for its run: the run's own memory (None), then each
        Dask worker by address."""
        view = self._state.runs.get(self.run_id) if self.run_id else None
        return [None, *sorted(view.workers if view else ())]

    def cycle_series(self) -> str:
        """Show the next series (the run's own after the last worker); returns its name."""
        names = self.series_names()
        position = names.index(self.series) if self.series in names else 0
        self.series = names[(position + 1) % len(names)]
        self.redraw()
        return series_title(self.series)

    def redraw(self) -> None:
        plt = self.plt
        plt.clear_data()
        view = self._state.runs.get(self.run_id) if self.run_id else None
        worker = view.workers.get(self.series) if view and self.series else None
        if worker is not None:
            # A Dask worker: its samples against its own limit; it has no window size.
            tree, readings, levels = list(worker.samples), [], worker.levels
        else:
            # RSS from the daemon's samples of the whole worker tree when there are any
            # (children included); a replay of worker events only has the worker's own.
            tree = list(view.memory) if view else []
            readings = list(view.worker_memory) if view else []
            levels = view.levels if view else None
        rss = self._window(tree or readings)
        # The series is named once the run has Dask workers to choose from.
        named = f"{series_title(self.series)} · " if view and view.workers else ""
        if view is None or levels is None or not rss:
            self.border_title = f"{named}Memory"
            self.border_subtitle = f"no samples · {self.span_label}"
            self.refresh()
            return
        now = max(rss[-1].time, readings[-1].time if readings else 0.0)
        start = rss[0].time
        drawn: list[str] = []

        def ago(t: float) -> float:
            return t - now

        def line(xs: list[float], ys: list[float], name: str, **options: Any) -> None:
            plt.plot(xs, ys, color=COLORS[name], **options)
            drawn.append(name)

        xs = [ago(s.time) for s in rss]
        rss_mib = [s.rss / _MIB for s in rss]
        # The y range is the worker's world (its RSS and budget): the machine's free
        # memory is usually far above it and would flatten everything else, so it is
        # drawn only once it comes down into that range, and stated in the border.
        top = max([*rss_mib, (levels.budget or 0) / _MIB]) * HEADROOM
        plt.ylim(0, top)
        set_yticks(plt, *size_ticks(top))
        line(xs, rss_mib, "RSS")
        available = [s for s in rss if s.system_available is not None]
        low = [s for s in available if (s.system_available or 0) / _MIB < top]
        if low:
            avail_mib = [min(top, (s.system_available or 0) / _MIB) for s in available]
            line([ago(s.time) for s in available], avail_mib, "avail")
        windows = [s for s in self._window(readings) if s.window_size and s.time >= start]
        if windows:
            sizes = [float(s.window_size or 0) for s in windows]
            line([ago(s.time) for s in windows], sizes, "window px", yside="right")
            # The governor's sizes are few and whole: tick exactly those, not fractions.
            steps = sorted(set(sizes))
            set_yticks(plt, steps, [f"{step:.0f}" for step in steps], "right")
        span = [xs[0], 0.0] if xs[0] < 0 else [-_MINUTE, 0.0]
        plt.xlim(*span)
        set_xticks(plt, *time_ticks(span[0], now))
        if levels.budget:
            budget = levels.budget / _MIB
            line(span, [budget, budget], "budget")
            for fraction, name in ((levels.warning, "warning"), (levels.critical, "critical")):
                if fraction:
                    line(span, [budget * fraction, budget * fraction], name)
        peak = max(sample.rss for sample in rss)
        if worker is None:
            peak = max(view.summary.peak_rss or 0, peak)
        self.border_title = named + readout(rss[-1].rss, peak, levels.budget)
        # The legend and the axis names live in the border: at 80×24 every row counts,
        # and a legend inside the plot would cover the budget lines.
        legend = " ".join(f"[{_ANSI_NAMES[COLORS[name]]}]━[/] {name}" for name in drawn)
        free = f" · avail {size(available[-1].system_available)}" if available else ""
        self.border_subtitle = f"{legend}{free} · {levels.level} · {self.span_label}"
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


# plotext stores ticks after de-duplicating (tick, label) pairs through a set, which hands
# them back in an order that follows the labels' string hashes, and those change from one
# process to the next. Labels are placed in that order, and where two are close the first
# placed pushes the other aside: the same chart would read differently in two dashboards.
# These two put the ticks back in the order given (they are distinct already).


def set_xticks(plt: Plot, ticks: list[float], labels: list[str]) -> None:
    """Ticks on the bottom x axis, placed left to right whatever the process's hash seed."""
    plt.xticks(ticks, labels)
    pos = plt.monitor.xside_to_pos(None)
    plt.monitor.xticks[pos], plt.monitor.xlabels[pos] = list(ticks), list(labels)


def set_yticks(plt: Plot, ticks: list[float], labels: list[str], side: str | None = None) -> None:
    """Ticks on a y axis, placed bottom to top whatever the process's hash seed."""
    plt.yticks(ticks, labels, yside=side)
    pos = plt.monitor.yside_to_pos(side)
    plt.monitor.yticks[pos], plt.monitor.ylabels[pos] = list(ticks), list(labels)


def series_title(series: str | None) -> str:
    """``run`` or ``worker 127.0.0.1:39001``: the series as the panel's title names it."""
    if series is None:
        return "run"
    return f"worker {series.removeprefix('tcp://')}"


def readout(rss: int, peak: int, budget: int | None) -> str:
    """``RSS 174.0 MiB · peak 732.0 MiB · budget 1.0 GiB (17 %)``: the numbers behind the lines."""
    text = f"RSS {size(rss)} · peak {size(peak)}"
    if budget:
        text += f" · budget {size(budget)} ({round(100 * rss / budget)} %)"
    return text


def size_ticks(top_mib: float, count: int = SIZE_TICKS) -> tuple[list[float], list[str]]:
    """Ticks from 0 to ``top_mib`` (the plot's unit) labelled as sizes: '512.0 MiB', '1.0 GiB'."""
    ticks = [top_mib * index / (count - 1) for index in range(count)]
    return ticks, [size(tick * _MIB) for tick in ticks]


def time_ticks(oldest: float, now: float, count: int = TIME_TICKS) -> tuple[list[float], list[str]]:
    """Tick positions from ``oldest`` (seconds before ``now``, negative) to 0, as clock times.

    Plotext would label the axis with bare numbers (``-0.79``): nobody can tell
    minutes from seconds. Each tick reads as the local clock time instead
    (``15:42:10``; ``15:42`` when the span is long), as the log's timestamps do.
    """
    ticks = [oldest * (count - 1 - index) / (count - 1) for index in range(count)]
    pattern = "%H:%M:%S" if -oldest <= SECONDS_LABELS_UP_TO else "%H:%M"
    return ticks, [time.strftime(pattern, time.localtime(now + tick)) for tick in ticks]
