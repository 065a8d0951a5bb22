"""A stand-in worker for fault tests: same CLI, events, signals and exit codes as pipeline.worker.

It speaks the real protocol (``EventSink`` on ``GEOD_EVENTS_FD``, ``Controller``
for SIGUSR1/SIGUSR2/SIGTERM at step boundaries, exit 0/1/2) but its behaviour
is chosen per run by tokens in the config's run ``name`` (``-`` separated), so
one daemon can host well-behaved and misbehaving runs side by side:

  stepsN        N steps of STEP_SECONDS (default 40)
  slowN         steps of N ms instead
  ignorepause   SIGUSR1 ignored: the daemon must fall back to SIGSTOP
  ignoreterm    SIGTERM ignored: the daemon must SIGKILL after kill_grace
  grandchild    spawns a long ``sleep`` in its process group (pid in work/grandchild.pid)
  failN         exits 1 at step N on its first attempt (attempts counted in work/)
  alwaysfail    exits 1 at step 1 on every attempt
  badinput      exits 2 at once, like an invalid input
  chatty        prints plain lines on stdout and stderr
  bulkN         writes N KiB to work/bulk.bin first (a stand-in layer store)

It logs ``start window N`` when started with ``--start-window`` (a retry after an
OOM kill) and ``shrink requested`` at the step after the daemon's shrink signal.

Progress is checkpointed to ``work/done`` after every step, so a resumed run
continues where it stopped, like the real pipeline's chunk manifest.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pipeline.context import StageNode
from pipeline.control import Controller, StopRequested
from pipeline.events import EventSink, LogEvent, StateEvent

STEP_SECONDS = 0.05
DEFAULT_STEPS = 40
GRANDCHILD_SLEEP = "1000"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--start-window", type=int)
    args = parser.parse_args()
    name = yaml.safe_load(args.config.read_text())["name"]
    tokens = name.split("-")
    flags = set(tokens)

    def number(prefix: str, default: int) -> int:
        for token in tokens:
            if match := re.fullmatch(rf"{prefix}(\d+)", token):
                return int(match.group(1))
        return default

    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    attempts_file = work / "attempts"
    attempt = int(attempts_file.read_text()) + 1 if attempts_file.exists() else 1
    attempts_file.write_text(str(attempt))
    events = EventSink.from_env()
    if "badinput" in flags:
        events.emit(StateEvent(state="failed", reason="fake: invalid input"))
        return 2
    control = Controller(events)
    control.install_signal_handlers()
    if "ignorepause" in flags:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if "ignoreterm" in flags:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "grandchild" in flags:
        child = subprocess.Popen(["sleep", GRANDCHILD_SLEEP])
        (work / "grandchild.pid").write_text(str(child.pid))

    if bulk := number("bulk", 0):
        (work / "bulk.bin").write_bytes(b"\0" * 1024 * bulk)
    steps = number("steps", DEFAULT_STEPS)
    step_seconds = number("slow", int(STEP_SECONDS * 1000)) / 1000
    fail_at = number("fail", 0)
    done_file = work / "done"
    done = int(done_file.read_text()) if done_file.exists() else 0
    events.emit(StateEvent(state="running"))
    if args.start_window is not None:
        message = f"start window {args.start_window}"
        events.emit(LogEvent(level="INFO", logger="fake", message=message))
    root = StageNode(events, "run", None, "run", name, unit="stages")
    root.start(total=1)
    stage = StageNode(events, "steps", "run", "stage", "steps", unit="steps")
    stage.start(total=steps, done=done)
    try:
        while done < steps:
            time.sleep(step_seconds)
            done += 1
            done_file.write_text(str(done))
            stage.advance()
            if "chatty" in flags:
                print(f"plain stdout line {done}", flush=True)
                print(f"plain stderr line {done}", file=sys.stderr, flush=True)
            events.emit(LogEvent(level="INFO", logger="fake", message=f"step {done}/{steps}"))
            if "alwaysfail" in flags or (fail_at and done == fail_at and attempt == 1):
                events.emit(StateEvent(state="failed", reason=f"fake failure at step {done}"))
                return 1
            if control.take_shrink():
                events.emit(LogEvent(level="WARNING", logger="fake", message="shrink requested"))
            control.checkpoint()
    except StopRequested:
        events.emit(StateEvent(state="stopped", reason="stop requested"))
        return 0
    stage.finish()
    root.advance()
    root.finish()
    events.emit(StateEvent(state="done"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
