"""Rich progress bars for a worker's event stream (``geod run``).

One bar per stage and per dataset, fed by StageEvents; warnings and errors
print above the bars. Window-group nodes are not drawn: a dataset's bar
already counts its windows.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from pipeline.contract import PROBLEM_LEVELS
from pipeline.events import Event, LogEvent, OutputEvent, StageEvent, StateEvent

#: Stage-tree kinds that get a bar.
BAR_KINDS = frozenset({"stage", "dataset"})
_STATUS_STYLE = {"done": "green", "failed": "red", "paused": "yellow", "skipped": "dim"}


class ProgressView:
    """Turns events into rich progress; usable as a context manager."""

    def __init__(self, live: bool = True, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.outputs: list[Path] = []
        self.failure: str | None = None
        self._tasks: dict[str, TaskID] = {}
        self._progress: Progress | None = None
        if live:
            self._progress = Progress(
                TextColumn("{task.description}", justify="left"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}", style="dim"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )

    def __enter__(self) -> ProgressView:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def handle(self, event: Event) -> None:
        if isinstance(event, StageEvent):
            self._stage(event)
        elif isinstance(event, LogEvent) and event.level in PROBLEM_LEVELS:
            style = "yellow" if event.level == "WARNING" else "red"
            self.console.print(f"[{style}]{event.level.lower()}[/]: {event.message}")
        elif isinstance(event, OutputEvent):
            self.outputs.append(Path(event.path))
        elif isinstance(event, StateEvent) and event.state == "failed":
            self.failure = event.reason

    def _stage(self, event: StageEvent) -> None:
        if self._progress is None or event.kind not in BAR_KINDS:
            return
        if event.status == "skipped":
            # Nothing to measure (e.g. no analysis configured): no bar, not "0/? methods".
            task = self._tasks.pop(event.id, None)
            if task is not None:
                self._progress.remove_task(task)
            return
        indent = "  " if event.kind == "dataset" else ""
        style = _STATUS_STYLE.get(event.status)
        label = f"{indent}{event.name}"
        description = f"[{style}]{label}[/]" if style else label
        total = event.total or None
        task = self._tasks.get(event.id)
        if task is None:
            self._tasks[event.id] = self._progress.add_task(
                description, total=total, completed=event.done, unit=event.unit
            )
        else:
            self._progress.update(task, description=description, total=total, completed=event.done)
