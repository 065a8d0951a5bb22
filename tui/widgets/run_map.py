"""The Map panel: the selected run's windows as a half-block map of the grid, per dataset.

The picture comes from :mod:`supervisor.run_map` (the same one ``geod map RUN``
prints); this widget only sizes it to the panel, picks the dataset (the one
written last, until ``[``/``]`` choose another) and puts the legend with its
counts under the map. The app redraws it only when a window event arrived.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text
from textual.widget import Widget

from supervisor.run_map import DatasetMap, legend, render
from tui.bindings import MAP_BINDINGS
from tui.state import DashboardState

#: Rows kept under the map for the legend.
_LEGEND_ROWS = 1


class RunMapPanel(Widget, can_focus=True):
    """Where the shown run is, dataset by dataset."""

    BINDINGS = MAP_BINDINGS

    def __init__(self, state: DashboardState, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._state = state
        self.run_id: str | None = None
        #: Dataset chosen with [ / ] (None: follow the one written last).
        self.chosen: str | None = None
        self.border_title = "Map"

    def show_run(self, run_id: str | None) -> None:
        self.run_id, self.chosen = run_id, None
        self.redraw()

    def redraw(self) -> None:
        self.refresh()

    @property
    def dataset(self) -> DatasetMap | None:
        view = self._state.runs.get(self.run_id) if self.run_id else None
        if view is None or not view.map.datasets:
            return None
        datasets = view.map.datasets
        name = self.chosen if self.chosen in datasets else view.map.latest
        return datasets.get(name or "") or next(iter(datasets.values()))

    def render(self) -> RenderableType:
        dataset = self.dataset
        if dataset is None:
            self.border_title = "Map"
            return Text("no windows written yet", style="bright_black")
        names = list(self._state.runs[self.run_id or ""].map.datasets)
        index = names.index(dataset.name) + 1
        self.border_title = f"Map · {dataset.name} ({index}/{len(names)}) · [ ] dataset"
        size = self.content_region.size
        lines = render(dataset, size.width, max(1, size.height - _LEGEND_ROWS))
        return Group(*lines, legend(dataset))

    def action_dataset(self, step: int) -> None:
        view = self._state.runs.get(self.run_id) if self.run_id else None
        current = self.dataset
        if view is None or current is None:
            return
        names = list(view.map.datasets)
        self.chosen = names[(names.index(current.name) + step) % len(names)]
        self.refresh()
