"""The run report: one self-contained HTML page of what a run did (``report.html``).

Run summary, stage timeline, memory against the budget, the datasets and their
quick-look maps, analysis maps, outputs, warnings and errors — made from the
run's events (:mod:`pipeline.report.model`), drawn with matplotlib
(:mod:`pipeline.report.plots`) and inlined into one file
(:mod:`pipeline.report.render`). The worker writes it at the end of every run
(``report: true``); ``geod report RUN`` makes it on demand for any run, from
telemetry when the database answers, else from the run's own files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.durable import write_atomic

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.events import Event
    from pipeline.report.model import MemoryPoint

#: File name of the report written into ``paths.output_dir``.
REPORT_NAME = "report.html"


def write_report(
    config: PipelineConfig,
    work_dir: Path,
    events: list[Event],
    output: Path | None = None,
    *,
    state: str | None = None,
    run_id: str | None = None,
    origin: str = "run directory",
    daemon_memory: list[MemoryPoint] | None = None,
    times: dict[str, float | None] | None = None,
) -> Path:
    """Render the report and publish it atomically; returns its path.

    matplotlib and the readers are imported here, not with the package: the
    worker imports :mod:`pipeline.report.history` for every run, and a run's
    memory should not carry the drawing stack until the report is drawn.
    """
    from pipeline.report.model import build_report
    from pipeline.report.render import render_html

    target = output or config.paths.output_dir / REPORT_NAME
    data = build_report(
        config,
        events,
        state=state,
        run_id=run_id,
        origin=origin,
        daemon_memory=daemon_memory,
        times=times,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, render_html(data, config, work_dir))
    return target


__all__ = ["REPORT_NAME", "write_report"]
