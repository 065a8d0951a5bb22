"""Worker process entry point: ``python -m pipeline.worker CONFIG [options]``.

The daemon and ``geod run`` both start the pipeline through this module, so a
run behaves the same in the foreground and under supervision. Events go to the
descriptor named by ``GEOD_EVENTS_FD``; without it, log records go to stderr.

Exit codes (the daemon's restart policy keys on them; defined in
:mod:`pipeline.contract`):
  0  finished, or stopped cleanly at a checkpoint (the last StateEvent says which)
  1  failed at run time (worth a retry)
  2  invalid config or input (a retry cannot help)

The database a ``postgres`` export writes to (when the config names none) comes
from ``GEOD_DATABASE_URL``, read here once and passed down as an argument.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline import logs
from pipeline.catalog import CatalogError
from pipeline.config import ConfigError, ExportFormat, load_config
from pipeline.context import RunContext, RunError
from pipeline.contract import (
    DATABASE_URL_ENV,
    EVENTS_FD_ENV,
    WORKER_EXIT_FAILED,
    WORKER_EXIT_INPUT,
    WORKER_EXIT_OK,
)
from pipeline.control import Controller, StopRequested
from pipeline.events import Event, EventSink, OutputEvent, StateEvent
from pipeline.executor import ExecutorError, run_executor
from pipeline.memory import MemoryGovernor, release_freed_memory
from pipeline.report.history import HISTORY_NAME, EventRecorder, read_history
from pipeline.runner import STAGES, parse_stages, run_pipeline

log = logging.getLogger("geod.worker")


def _parse_formats(text: str | None) -> list[ExportFormat] | None:
    if not text:
        return None
    try:
        return [ExportFormat(part.strip()) for part in text.split(",")]
    except ValueError:
        choices = ", ".join(f.value for f in ExportFormat)
        raise ValueError(f"--formats: {text!r} must be a comma list of {choices}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.worker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", type=Path, help="config.yml of the run")
    parser.add_argument("--work-dir", type=Path, help="overrides paths.work_dir")
    parser.add_argument("--stages", help=f"comma list of {', '.join(STAGES)} (default: all)")
    parser.add_argument("--formats", help="comma list of export formats (default: config's)")
    parser.add_argument(
        "--start-window",
        type=int,
        help="window size to start with (the daemon halves it after an OOM kill)",
    )
    return parser


def _fail(events: EventSink, message: str, code: int) -> int:
    """Report a failure once: as a StateEvent, or on stderr when nobody reads events."""
    events.emit(StateEvent(state="failed", reason=message))
    if os.environ.get(EVENTS_FD_ENV) is None:
        print(f"geod worker: {message}", file=sys.stderr)
    return code


def _write_report(ctx: RunContext, history: EventRecorder | None, state: str) -> None:
    """The end-of-run report (``report: true``); a failure to draw it never fails the run."""
    if history is None or not ctx.config.report:
        return
    from pipeline.report import write_report  # the drawing stack, only when drawing

    release_freed_memory()  # the maps are sized from what is left of the budget
    try:
        path = write_report(
            ctx.config,
            ctx.config.paths.work_dir,
            read_history(history.path),
            state=state,
            times={"finished": time.time()},
        )
    except Exception as exc:
        # One line, like every other problem the run reports: no traceback.
        log.warning("could not write the run report: %s", exc)
        return
    ctx.events.emit(OutputEvent(kind="report", path=str(path), stage="report"))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    history: EventRecorder | None = None

    def record(event: Event) -> None:
        if history is not None:
            history(event)

    events = EventSink.from_env(record)
    if events_enabled := os.environ.get(EVENTS_FD_ENV) is not None:
        logs.install(events)
    else:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = load_config(args.config)
        if args.work_dir is not None:
            config.paths.work_dir = args.work_dir.resolve()
        stages = parse_stages(args.stages)
        formats = _parse_formats(args.formats)
    except (ConfigError, ValueError) as exc:
        return _fail(events, str(exc), WORKER_EXIT_INPUT)

    if stages != ["catalog"]:  # `geod check` writes nothing
        history = EventRecorder(config.paths.work_dir / HISTORY_NAME)
    control = Controller(events)
    control.install_signal_handlers()
    try:
        governor = MemoryGovernor(
            config.memory,
            events,
            config.resampling.window_size,
            shrink_requested=control.take_shrink,
            start_window=args.start_window,
        )
    except ValueError as exc:
        return _fail(events, f"--start-window: {exc}", WORKER_EXIT_INPUT)
    ctx = RunContext(config, events, control, governor)
    events.emit(StateEvent(state="running"))
    try:
        with contextlib.ExitStack() as resources:
            if stages != ["catalog"]:  # `geod check` computes nothing: no cluster
                resources.enter_context(run_executor(ctx))
            run_pipeline(ctx, stages, formats, os.environ.get(DATABASE_URL_ENV) or None)
    except StopRequested:
        log.info("stopped at a checkpoint; rerun or resume to continue")
        _write_report(ctx, history, "stopped")
        events.emit(StateEvent(state="stopped", reason="stop requested"))
        return WORKER_EXIT_OK
    except (CatalogError, ConfigError) as exc:
        _write_report(ctx, history, "failed")
        return _fail(events, str(exc), WORKER_EXIT_INPUT)
    except (RunError, ExecutorError) as exc:
        # Already one line naming what and where (disk full, a failed spot check…):
        # a traceback would bury it. Exit 1: freeing space and retrying can help.
        log.error("run failed: %s", exc)
        _write_report(ctx, history, "failed")
        return _fail(events, f"{type(exc).__name__}: {exc}", WORKER_EXIT_FAILED)
    except Exception as exc:
        log.exception("run failed: %s", exc)
        _write_report(ctx, history, "failed")
        return _fail(events, f"{type(exc).__name__}: {exc}", WORKER_EXIT_FAILED)
    else:
        _write_report(ctx, history, "done")
    finally:
        if history is not None:
            history.close()
        if not events_enabled:
            logging.shutdown()
    events.emit(StateEvent(state="done"))
    return WORKER_EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
