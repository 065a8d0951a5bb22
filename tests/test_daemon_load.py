"""Load: 8 runs through a concurrency limit of 2 while 3 clients watch everything.

Every client must see every event of every run exactly once and in order
(per-run sequence numbers 1..last with no gap), the queue must drain, and the
daemon's memory must stay within the issue's bound.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import psutil

from supervisor.client import AsyncClient
from supervisor.protocol import NOTIFY_EVENT, NOTIFY_RUN
from tests.daemon_harness import fake_config, running_daemon

RUNS = 8
CONCURRENCY = 2
SUBSCRIBERS = 3
#: The issue's bound for the daemon's resident memory under this load.
DAEMON_RSS_BOUND = 100 * 1024 * 1024
WAIT = 120.0


async def _watch(socket_path: Path, ready: asyncio.Event, total: int) -> dict[str, list[int]]:
    """Subscribe to everything before any run exists; return the seqs seen per run."""
    seen: dict[str, list[int]] = {}
    finished: set[str] = set()
    async with await AsyncClient.connect(socket_path) as client:
        snapshot = await client.call("subscribe")
        assert snapshot["runs"] == []
        ready.set()
        async for method, params in client.notifications():
            if method == NOTIFY_EVENT:
                seen.setdefault(params["run"], []).append(params["seq"])
            elif method == NOTIFY_RUN and params["state"] == "done":
                finished.add(params["id"])
                if len(finished) == total:
                    return seen
    raise AssertionError("connection closed before every run finished")


def test_eight_runs_three_watchers_no_event_lost(tmp_path: Path) -> None:
    with running_daemon(tmp_path, concurrency=CONCURRENCY) as daemon:

        async def scenario() -> tuple[list[dict[str, list[int]]], int]:
            readies = [asyncio.Event() for _ in range(SUBSCRIBERS)]
            watchers = [
                asyncio.create_task(_watch(daemon.socket_path, ready, RUNS)) for ready in readies
            ]
            for ready in readies:
                await ready.wait()
            async with await AsyncClient.connect(daemon.socket_path) as client:
                for index in range(RUNS):
                    config = fake_config(tmp_path / f"run{index}", "steps40-slow10-chatty")
                    await client.call("runs.submit", config_path=str(config))
                peak_running = 0
                while not all(w.done() for w in watchers):
                    runs = await client.call("runs.list")
                    peak_running = max(peak_running, sum(r["pid"] is not None for r in runs))
                    await asyncio.sleep(0.05)
            results = await asyncio.wait_for(asyncio.gather(*watchers), WAIT)
            return results, peak_running

        results, peak_running = asyncio.run(scenario())
        assert peak_running <= CONCURRENCY
        runs = daemon.call("runs.list")
        assert [r["state"] for r in runs] == ["done"] * RUNS
        for seen in results:
            assert set(seen) == {r["id"] for r in runs}
            for run in runs:
                history = (daemon.state_dir / "runs" / run["id"] / "events.ndjson").read_text()
                expected = [json.loads(line)["seq"] for line in history.splitlines()]
                assert seen[run["id"]] == expected == list(range(1, run["last_seq"] + 1))
        assert psutil.Process(daemon.process.pid).memory_info().rss < DAEMON_RSS_BOUND
