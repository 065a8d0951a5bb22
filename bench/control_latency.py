"""Control latency and daemon footprint, against the targets of issue 5.

    .venv/bin/python bench/control_latency.py [--cycles 50] [--size small]

1. Pause/resume latency: a real demo run under a real daemon (``geod serve``);
   50 cycles of ``runs.pause`` → the worker's "paused" acknowledgement event
   arriving at a subscribed client, then ``runs.resume`` → its "resumed" event.
   Reported as p50/p99 and as a ratio of the targets (pause p99 < 1 s,
   resume p99 < 200 ms). A pause that needed the SIGSTOP fallback is counted.
2. Footprint: 3 runs, each watched by its own subscriber; daemon RSS and CPU
   while the runs are paused (idle: only memory sampling and keep-alives), and
   while they run (events flowing), against the targets (< 100 MB, < 1 % idle CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml
from serve import start_daemon

from pipeline.contract import FINAL_STATES
from pipeline.events import StateEvent
from supervisor.client import AsyncClient
from supervisor.protocol import RunSummary, Selection

REPO = Path(__file__).resolve().parent.parent
PAUSE_TARGET = 1.0
RESUME_TARGET = 0.2
RSS_TARGET = 100 * 1024 * 1024
IDLE_CPU_TARGET = 1.0
#: Running time between cycles, so every pause lands in a different window.
RUN_BETWEEN = 0.2
FOOTPRINT_RUNS = 3
CPU_WINDOW = 10.0
SLOWEST_SHOWN = 3
#: Longer than the daemon's default pause_grace (10 s), after which it SIGSTOPs anyway.
ACK_TIMEOUT = 30.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def demo_config(directory: Path, demo: Path) -> Path:
    data = yaml.safe_load((REPO / "config.yml").read_text())
    for dataset in data["datasets"]:
        dataset["path"] = str(demo / Path(dataset["path"]).name)
    data["paths"] = {"work_dir": str(directory / "work"), "output_dir": str(directory / "out")}
    data["resampling"] = {"window_size": 256, "threads": 1}
    data["export"] = {"formats": ["parquet"], "name": "demo"}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def _said(update: Any, run_id: str, state: str) -> bool:
    """Is ``update`` the worker of ``run_id`` reporting ``state``?"""
    return isinstance(update, StateEvent) and update.run == run_id and update.state == state


async def wait_state(client: AsyncClient, stream: Any, run_id: str, state: str) -> None:
    async for update in stream:
        if _said(update, run_id, state):
            return


async def acknowledged(stream: Any, run_id: str, ack: str) -> str:
    """Wait for the worker's ``ack`` StateEvent; "hard" if the daemon SIGSTOPped instead,
    "ended" if the run finished first."""
    async for update in stream:
        if _said(update, run_id, ack):
            return "ack"
        if isinstance(update, RunSummary) and update.id == run_id:
            if update.state in FINAL_STATES:
                return "ended"
            if update.paused_hard and ack == "paused":
                return "hard"
    return "ended"


async def latency(socket_path: Path, config: Path, cycles: int) -> None:
    client = await AsyncClient.connect(socket_path)
    await client.subscribe()
    stream = client.updates()
    run_id = (await client.submit(str(config))).id
    await wait_state(client, stream, run_id, "running")
    pauses: list[float] = []
    resumes: list[float] = []
    stages: list[str] = []
    hard = 0
    while len(pauses) < cycles:
        await asyncio.sleep(RUN_BETWEEN)
        run = await client.run(run_id)
        if run.state != "running":  # finished: continue on a fresh run
            run_id = (await client.submit(str(config))).id
            await wait_state(client, stream, run_id, "running")
            continue
        started = time.perf_counter()
        await client.pause(Selection(run=run_id))
        outcome = await asyncio.wait_for(acknowledged(stream, run_id, "paused"), ACK_TIMEOUT)
        if outcome == "ended":
            continue
        pauses.append(time.perf_counter() - started)
        stages.append(run.stage or "?")
        was_hard = outcome == "hard"
        hard += was_hard
        started = time.perf_counter()
        await client.resume(Selection(run=run_id))
        if was_hard:
            resumes.append(time.perf_counter() - started)  # SIGCONT: the call is the ack
            continue
        if await asyncio.wait_for(acknowledged(stream, run_id, "resumed"), ACK_TIMEOUT) == "ack":
            resumes.append(time.perf_counter() - started)
    await client.kill(Selection(all=True), force=True)
    await client.close()
    for name, values, target in (
        ("pause ack", pauses, PAUSE_TARGET),
        ("resume ack", resumes, RESUME_TARGET),
    ):
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        print(
            f"{name:10s} over {len(values)} cycles: p50 {p50 * 1000:7.1f} ms  "
            f"p99 {p99 * 1000:7.1f} ms  = {p99 / target:.2f}× target ({target * 1000:.0f} ms)"
        )
    print(f"pauses that needed the SIGSTOP fallback: {hard}/{len(pauses)}")
    windowed = [t for t, stage in zip(pauses, stages, strict=True) if stage.startswith("resample/")]
    if windowed:
        print(
            f"pause ack during resample windows ({len(windowed)} cycles): "
            f"p50 {percentile(windowed, 0.5) * 1000:.1f} ms  "
            f"p99 {percentile(windowed, 0.99) * 1000:.1f} ms"
        )
    slowest = sorted(zip(pauses, stages, strict=True), reverse=True)[:SLOWEST_SHOWN]
    print(
        "slowest pause acks (stage running when asked): "
        + ", ".join(f"{seconds * 1000:.0f} ms in {stage}" for seconds, stage in slowest)
    )


async def footprint(socket_path: Path, configs: list[Path], daemon_pid: int) -> None:
    clients = [await AsyncClient.connect(socket_path) for _ in configs]
    run_ids = []
    drains = []
    for client, config in zip(clients, configs, strict=True):
        run_ids.append((await client.submit(str(config))).id)
    for client, run_id in zip(clients, run_ids, strict=True):
        await client.subscribe(runs=[run_id])
        drains.append(asyncio.create_task(_drain(client)))
    process = psutil.Process(daemon_pid)
    await asyncio.sleep(2.0)  # all three workers past start-up, events flowing
    busy_cpu = await _cpu_percent(process)
    await clients[0].pause(Selection(all=True))
    for run_id in run_ids:
        while (await clients[0].run(run_id)).state != "paused":
            await asyncio.sleep(0.1)
    idle_cpu = await _cpu_percent(process)
    rss = process.memory_info().rss
    await clients[0].kill(Selection(all=True), force=True)
    for task in drains:
        task.cancel()
    for client in clients:
        await client.close()
    print(
        f"daemon RSS with {len(configs)} runs and {len(clients)} subscribers: "
        f"{rss / 2**20:.1f} MiB = {rss / RSS_TARGET:.2f}× target (100 MB)"
    )
    print(
        f"daemon CPU, runs paused (idle): {idle_cpu:.2f} % = "
        f"{idle_cpu / IDLE_CPU_TARGET:.2f}× target (1 %); while running: {busy_cpu:.2f} %"
    )


async def _drain(client: AsyncClient) -> None:
    async for _ in client.notifications():
        pass


async def _cpu_percent(process: psutil.Process) -> float:
    before = process.cpu_times()
    started = time.monotonic()
    await asyncio.sleep(CPU_WINDOW)
    after = process.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return 100.0 * used / (time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--size", default="small", choices=["small", "medium", "large"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="geod-bench-") as name:
        tmp = Path(name)
        demo = tmp / "demo"
        subprocess.run(
            [sys.executable, "-m", "pipeline.demo", str(demo), "--size", args.size],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        daemon, socket_path = start_daemon(tmp, concurrency=FOOTPRINT_RUNS, telemetry=False)
        try:
            asyncio.run(latency(socket_path, demo_config(tmp / "latency", demo), args.cycles))
            configs = [demo_config(tmp / f"run{i}", demo) for i in range(FOOTPRINT_RUNS)]
            asyncio.run(footprint(socket_path, configs, daemon.pid))
        finally:
            daemon.terminate()
            daemon.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
