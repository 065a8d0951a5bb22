"""How fast does geo-tui show a worker's event, and what does watching cost, under a log storm?

A real daemon (``geod serve``) runs a load worker — this script in ``--emit``
mode, speaking the worker protocol (EventSink on the inherited descriptor,
Controller signals) — that emits LOG_RATE log lines/s and PROGRESS_RATE
stage-progress events/s for SECONDS seconds. Two consumers attach to two such
runs in turn, in this process:

* reference: a bare ``AsyncClient`` subscription that decodes every
  notification and does nothing else (the transport floor);
* app: ``GeodApp`` under Textual's Pilot (headless), attached to the run;
* terminal: ``geo-tui attach`` in a real 120×40 tmux pane (CPU only: headless
  Pilot skips writing to a terminal, this does not).

Latency is worker ``event.time`` → the moment the line is written into the
log widget (the app) or decoded (reference), p50/p95. Key latency is a key
press posted by Pilot → its action running, sampled during the storm. CPU is
this process's CPU seconds per wall second while the run emits (1.0 = one
core). Ratios: app vs reference, and p95 vs the 250 ms target.

Every progress event comes with a window checkpoint carrying its grid position
(as the resample stage writes them), and the app runs with its Map panel open
(``w``) unless ``--no-map``. The machine's load average is printed: on a shared
machine the figures are only comparable at similar load.

    .venv/bin/python bench/tui_latency.py [--seconds 10] [--log-rate 2000] [--progress-rate 100]
                                          [--no-map]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The design target: a worker event is visible in the dashboard within this.
TARGET_P95_S = 0.250
#: The issue's bound for a key press to be handled.
KEY_TARGET_S = 0.100
#: The emitter wakes this often and emits whatever is due.
EMIT_TICK_S = 0.01
#: Datasets the emitter spreads its progress events over (tree nodes updated).
DATASETS = 8
#: Windows per dataset in the emitter's stage tree.
WINDOWS = 1_000_000
#: The emitter's grid, in windows (rows, columns) of WINDOW_PX pixels: its checkpoints
#: walk it row by row, dataset by dataset, so the map has something to draw.
WINDOW_GRID = (90, 180)
WINDOW_PX = 120
#: A key press is sampled this often during the storm.
KEY_EVERY_S = 0.5
START_TIMEOUT_S = 30.0


# -- the load worker (run by the daemon) -----------------------------------------------


def emit(log_rate: int, progress_rate: int, seconds: float) -> int:
    """The worker side: log lines and progress events at fixed rates, then done."""
    from pipeline.context import StageNode
    from pipeline.control import Controller, StopRequested
    from pipeline.events import CheckpointEvent, EventSink, LogEvent, StateEvent

    events = EventSink.from_env()
    control = Controller(events)
    control.install_signal_handlers()
    events.emit(StateEvent(state="running"))
    root = StageNode(events, "run", None, "run", "tui-bench", unit="stages")
    root.start(total=1)
    stage = StageNode(events, "emit", "run", "stage", "emit", unit="datasets")
    stage.start(total=DATASETS)
    nodes = [stage.child(f"d{i}", "dataset", total=WINDOWS) for i in range(DATASETS)]
    for node in nodes:
        node.start(total=WINDOWS)
    start = time.monotonic()
    logs = progress = 0
    try:
        while (elapsed := time.monotonic() - start) < seconds:
            for _ in range(int(elapsed * log_rate) - logs):
                logs += 1
                events.emit(
                    LogEvent(
                        level="INFO" if logs % 50 else "WARNING",
                        logger="bench",
                        message=f"line {logs}: window written",
                        stage="emit",
                        dataset=f"d{logs % DATASETS}",
                    )
                )
            for _ in range(int(elapsed * progress_rate) - progress):
                progress += 1
                node = nodes[progress % DATASETS]
                node.advance()
                row, col = divmod(node.done % (WINDOW_GRID[0] * WINDOW_GRID[1]), WINDOW_GRID[1])
                events.emit(
                    CheckpointEvent(
                        stage="emit",
                        dataset=node.name,
                        done=node.done,
                        total=WINDOWS,
                        row_off=row * WINDOW_PX,
                        col_off=col * WINDOW_PX,
                        height=WINDOW_PX,
                        width=WINDOW_PX,
                        grid_height=WINDOW_GRID[0] * WINDOW_PX,
                        grid_width=WINDOW_GRID[1] * WINDOW_PX,
                    )
                )
            control.checkpoint()
            time.sleep(EMIT_TICK_S)
    except StopRequested:
        events.emit(StateEvent(state="stopped", reason="stop requested"))
        return 0
    for node in nodes:
        node.finish()
    stage.finish()
    root.advance()
    root.finish()
    events.emit(StateEvent(state="done"))
    return 0


# -- the daemon ---------------------------------------------------------------------------


class Daemon:
    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        import yaml

        self.root = root
        self.socket = root / "geod.sock"
        worker = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--emit",
            "--log-rate",
            str(args.log_rate),
            "--progress-rate",
            str(args.progress_rate),
            "--seconds",
            str(args.seconds),
        ]
        settings = root / "geod.yml"
        settings.write_text(
            yaml.safe_dump(
                {
                    "state_dir": str(root / "state"),
                    "socket_path": str(self.socket),
                    "telemetry": False,
                    "worker_command": worker,
                }
            )
        )
        placeholder = root / "input.tif"
        placeholder.write_bytes(b"")  # the emitter reads nothing; the daemon checks existence
        self.config = root / "bench.yml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "name": "tui-bench",
                    "datasets": [{"name": "layer", "path": str(placeholder)}],
                    "paths": {"work_dir": str(root / "work"), "output_dir": str(root / "out")},
                }
            )
        )
        geod = str(Path(sysconfig.get_path("scripts")) / "geod")
        self.log = open(root / "daemon.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [geod, "serve", "--config", str(settings)], stdout=self.log, stderr=self.log
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        from supervisor.client import Client, DaemonNotRunning

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                Client(self.socket).close()
                return
            except DaemonNotRunning:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise SystemExit("daemon did not start; see daemon.log") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


# -- measurements ---------------------------------------------------------------------------


class Meter:
    """Latencies of one consumer and its CPU share over the storm."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.keys: list[float] = []
        #: Map panel redraws during the storm and windows on its map at the end.
        self.map_redraws = 0
        self.map_windows = 0
        self._cpu0 = self._wall0 = 0.0
        self.cpu_share = 0.0

    def start(self) -> None:
        if not self._wall0:
            self._cpu0, self._wall0 = time.process_time(), time.monotonic()

    def stop(self) -> None:
        wall = time.monotonic() - self._wall0
        self.cpu_share = (time.process_time() - self._cpu0) / wall if wall > 0 else 0.0


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _wait_done(client: Any, run_id: str) -> None:
    from pipeline.contract import FINAL_STATES

    while (await client.run(run_id)).state not in FINAL_STATES:
        await asyncio.sleep(0.2)


async def reference(daemon: Daemon) -> Meter:
    """A bare client: subscribe and decode every notification, nothing else."""
    from pipeline.events import LogEvent
    from supervisor.client import AsyncClient

    meter = Meter()
    client = await AsyncClient.connect(daemon.socket)
    control = await AsyncClient.connect(daemon.socket)
    await client.subscribe()
    run_id = (await control.submit(str(daemon.config))).id

    async def consume() -> None:
        async for update in client.updates():
            if isinstance(update, LogEvent) and update.run == run_id:
                meter.start()
                meter.latencies.append(time.time() - update.time)

    task = asyncio.create_task(consume())
    await _wait_done(control, run_id)
    meter.stop()
    task.cancel()
    await client.close()
    await control.close()
    return meter


async def app_run(daemon: Daemon, show_map: bool) -> Meter:
    """GeodApp under Pilot (Map panel open with ``show_map``): latency, key handling, CPU."""
    from supervisor.client import AsyncClient
    from tui.app import GeodApp
    from tui.widgets.log_view import LogView
    from tui.widgets.run_map import RunMapPanel

    meter = Meter()
    control = await AsyncClient.connect(daemon.socket)
    run_id = (await control.submit(str(daemon.config))).id
    original_append: Callable[..., None] = LogView.append
    original_follow = GeodApp.action_follow
    original_redraw = RunMapPanel.redraw
    pressed: list[float] = []

    def timed_append(self: LogView, lines: Any) -> None:
        lines = list(lines)
        original_append(self, lines)
        now = time.time()
        if self.run_id == run_id and lines:
            meter.start()
            meter.latencies.extend(now - line.time for line in lines)

    def timed_follow(self: GeodApp) -> None:
        if pressed:
            meter.keys.append(time.perf_counter() - pressed.pop())
        original_follow(self)

    def counted_redraw(self: RunMapPanel) -> None:
        if self.region.area:  # on screen: what a user watching the map costs
            meter.map_redraws += 1
        original_redraw(self)

    LogView.append = timed_append  # type: ignore[method-assign]
    GeodApp.action_follow = timed_follow  # type: ignore[method-assign]
    RunMapPanel.redraw = counted_redraw  # type: ignore[method-assign]
    try:
        app = GeodApp(socket_path=daemon.socket, run=run_id)
        async with app.run_test(size=(120, 40)) as pilot:
            if show_map:
                await pilot.press("w")
                await pilot.pause()
                if not app.run_map.region.area:
                    raise SystemExit("the Map panel did not open: the figures would not count it")
            done = asyncio.create_task(_wait_done(control, run_id))
            while not done.done():
                await asyncio.sleep(KEY_EVERY_S)
                if meter.latencies:
                    # Toggle follow off and on again: two handled keys, view unchanged.
                    for _ in range(2):
                        pressed.append(time.perf_counter())
                        await pilot.press("f")
            meter.stop()
            view = app.state.runs[run_id]
            meter.map_windows = sum(len(d.writes) for d in view.map.datasets.values())
    finally:
        LogView.append = original_append  # type: ignore[method-assign]
        GeodApp.action_follow = original_follow  # type: ignore[method-assign]
        RunMapPanel.redraw = original_redraw  # type: ignore[method-assign]
        await control.close()
    return meter


def terminal_cpu(daemon: Daemon) -> float | None:
    """CPU/core of a real ``geo-tui attach`` in tmux while a run emits; None without tmux."""
    import psutil

    from supervisor.client import Client

    if shutil.which("tmux") is None:
        return None
    server = f"geod-bench-{os.getpid()}"
    with Client(daemon.socket) as client:
        run_id = client.submit(str(daemon.config)).id
        tui = str(Path(sysconfig.get_path("scripts")) / "geo-tui")
        command = f"exec {tui} attach --socket {daemon.socket} {run_id}"
        tmux = ["tmux", "-L", server]
        subprocess.run([*tmux, "new-session", "-d", "-x", "120", "-y", "40", command], check=True)
        try:
            pane = subprocess.run(
                [*tmux, "list-panes", "-F", "#{pane_pid}"], capture_output=True, text=True
            )
            process = psutil.Process(int(pane.stdout.split()[0]))
            start_cpu, start = sum(process.cpu_times()[:2]), time.monotonic()
            while client.run(run_id).state not in ("done", "failed"):
                time.sleep(0.2)
            wall = time.monotonic() - start
            return (sum(process.cpu_times()[:2]) - start_cpu) / wall
        finally:
            subprocess.run([*tmux, "kill-server"], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emit", action="store_true", help="(internal) be the load worker")
    parser.add_argument("--log-rate", type=int, default=2000)
    parser.add_argument("--progress-rate", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-map", action="store_true", help="keep the Map panel closed")
    args, _worker_args = parser.parse_known_args()  # the daemon appends CONFIG --work-dir DIR
    if args.emit:
        return emit(args.log_rate, args.progress_rate, args.seconds)

    root = Path(tempfile.mkdtemp(prefix="geod-bench-", dir="/tmp"))  # short socket path
    daemon = Daemon(root, args)
    try:
        ref = asyncio.run(reference(daemon))
        app = asyncio.run(app_run(daemon, show_map=not args.no_map))
        terminal = terminal_cpu(daemon)
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)

    print(
        f"load: {args.log_rate} log lines/s + {args.progress_rate} progress events/s "
        f"(+ as many window checkpoints) for {args.seconds:g} s, real daemon, "
        f"{os.cpu_count()} cores, Map panel {'closed' if args.no_map else 'open'}"
    )
    print("machine load average (1/5/15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"{'consumer':<22}{'lines':>8}{'p50 ms':>9}{'p95 ms':>9}{'CPU/core':>10}")
    for name, meter in (("bare client (ref)", ref), ("geo-tui (Pilot)", app)):
        print(
            f"{name:<22}{len(meter.latencies):>8}"
            f"{_quantile(meter.latencies, 0.5) * 1000:>9.1f}"
            f"{_quantile(meter.latencies, 0.95) * 1000:>9.1f}"
            f"{meter.cpu_share:>10.2f}"
        )
    if not args.no_map:
        print(f"Map panel: open, {app.map_redraws} redraws, {app.map_windows} windows on it")
    app_p95, ref_p95 = _quantile(app.latencies, 0.95), _quantile(ref.latencies, 0.95)
    key_p95 = _quantile(app.keys, 0.95)
    print(f"app p95 / target {TARGET_P95_S * 1000:.0f} ms: {app_p95 / TARGET_P95_S:.2f}")
    print(f"app p95 / reference p95: {app_p95 / ref_p95:.2f}")
    print(f"app CPU / reference CPU: {app.cpu_share / max(ref.cpu_share, 1e-9):.2f}")
    if terminal is not None:
        print(
            f"geo-tui in a tmux pane: {terminal:.2f} CPU/core "
            f"({terminal / max(ref.cpu_share, 1e-9):.2f}× reference)"
        )
    print(
        f"key press → action: p50 {_quantile(app.keys, 0.5) * 1000:.1f} ms, "
        f"p95 {key_p95 * 1000:.1f} ms over {len(app.keys)} presses "
        f"(p95 / {KEY_TARGET_S * 1000:.0f} ms target: {key_p95 / KEY_TARGET_S:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
