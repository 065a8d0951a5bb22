"""``python -m pipeline.report CONFIG [options]``: write a run's report from files.

``geod report`` runs this (the supervisor does not import pipeline internals);
it passes the events it fetched from telemetry as an NDJSON file, or the run
directory's history, and the daemon's memory samples when it has them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import ConfigError, load_config
from pipeline.report import write_report
from pipeline.report.history import HISTORY_NAME, read_history
from pipeline.report.model import MemoryPoint


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__)
    parser.add_argument("config", type=Path)
    parser.add_argument("--work-dir", type=Path, help="overrides paths.work_dir")
    parser.add_argument("--events", type=Path, help="NDJSON events (default: WORK/events.ndjson)")
    parser.add_argument("--memory", type=Path, help="NDJSON daemon memory samples")
    parser.add_argument("--times", type=Path, help="JSON {started, finished} (Unix times)")
    parser.add_argument("--state", help="the run's state as the daemon knows it")
    parser.add_argument("--run-id")
    parser.add_argument("--origin", default="run directory")
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"geod: {exc}", file=sys.stderr)
        return 2
    work_dir = (args.work_dir or config.paths.work_dir).resolve()
    history = args.events or work_dir / HISTORY_NAME
    if not history.is_file():
        print(f"geod: {history}: no event history; has this run started?", file=sys.stderr)
        return 2
    memory = []
    if args.memory is not None:
        for line in args.memory.read_text().splitlines():
            sample = json.loads(line)
            memory.append(
                MemoryPoint(
                    sample["time"], sample["rss"], sample.get("window_size"), "daemon sample"
                )
            )
    times = json.loads(args.times.read_text()) if args.times else None
    path = write_report(
        config,
        work_dir,
        read_history(history),
        args.output.resolve() if args.output else None,
        state=args.state,
        run_id=args.run_id,
        origin=args.origin,
        daemon_memory=memory,
        times=times,
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
