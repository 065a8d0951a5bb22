"""supervisor.client against a real daemon (and against sockets that are not one)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from pipeline.events import LogEvent, StageEvent
from supervisor.client import AsyncClient, Client, DaemonNotRunning
from supervisor.protocol import (
    NOTIFY_EVENT,
    NOTIFY_RUN,
    DaemonStatus,
    ErrorCode,
    MemoryHistory,
    ProtocolError,
    RunSummary,
    Selection,
    Snapshot,
)
from tests.daemon_harness import DaemonHarness, fake_config, running_daemon

SUBSCRIBERS = 3
#: Seconds a subscriber may wait for the next notification of a busy run.
NOTIFY_TIMEOUT = 30.0


def test_daemon_not_running_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.sock"
    with pytest.raises(DaemonNotRunning) as error:
        Client(missing)
    assert str(error.value) == f"daemon not running: no socket on {missing}"
    stale = tmp_path / "stale.sock"
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.bind(str(stale))  # a socket file nobody listens on: a killed daemon's leftover
    bound.close()
    with pytest.raises(DaemonNotRunning, match="connection refused"):
        Client(stale)
    with pytest.raises(DaemonNotRunning):
        asyncio.run(AsyncClient.connect(stale))


def _one_shot_server(path: Path, answer: dict[str, Any]) -> threading.Thread:
    """A socket that answers the first request with ``answer`` (a daemon from the future)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        conn, _ = server.accept()
        with conn, server:
            request = json.loads(conn.makefile().readline())
            reply = {"jsonrpc": "2.0", "id": request["id"], "result": answer}
            conn.sendall(json.dumps(reply).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_protocol_version_mismatch_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.sock"
    thread = _one_shot_server(path, {"protocol": 99})
    with pytest.raises(ProtocolError) as error:
        Client(path)
    assert error.value.code == ErrorCode.VERSION_MISMATCH
    assert "protocol 99" in error.value.message
    thread.join(5)


def test_sync_client_calls_and_errors(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon, daemon.client() as client:
        assert client.hello.pid == daemon.process.pid
        assert client.call("runs.list") == []
        with pytest.raises(ProtocolError) as error:
            client.call("runs.get", run="r0404")
        assert error.value.code == ErrorCode.UNKNOWN_RUN and "r0404" in error.value.message
        run_id = client.call("runs.submit", config_path=str(fake_config(tmp_path, "steps5")))["id"]
        assert client.call("runs.get", run=run_id)["name"] == "steps5"


def test_typed_methods_return_models(tmp_path: Path) -> None:
    """Every typed method sends its method and reads its reply into the protocol's models."""
    config = str(fake_config(tmp_path, "steps500-chatty"))
    with running_daemon(tmp_path) as daemon, daemon.client() as client:
        assert client.runs() == []
        status = client.status()
        assert isinstance(status, DaemonStatus) and status.pid == daemon.process.pid
        run = client.submit(config, "typed")
        assert (
            isinstance(run, RunSummary)
            and run.name == "typed"
            and run.state in ("queued", "running")
        )
        assert client.run(run.id).id == run.id
        assert [r.id for r in client.runs()] == [run.id]
        # Running and logging (the history also holds the daemon's state changes).
        daemon.wait(
            run.id,
            lambda r: (
                r["state"] == "running" and bool(daemon.call("logs.tail", run=run.id, limit=1))
            ),
        )
        paused = client.pause(Selection(run=run.id))
        assert [r.id for r in paused] == [run.id]
        assert [r.id for r in client.resume(Selection(all=True))] == [run.id]
        snapshot = client.subscribe(runs=[run.id], events=False)
        assert isinstance(snapshot, Snapshot) and [r.id for r in snapshot.runs] == [run.id]
        assert all(isinstance(stage, StageEvent) for stage in snapshot.stages[run.id])
        killed = client.kill(Selection(run=run.id), force=True)
        assert [r.state for r in killed] == ["stopping"]
        final = daemon.wait(run.id, lambda r: r["state"] == "killed")
        logs = client.logs(run.id, limit=1000)
        assert logs and all(isinstance(record, LogEvent) for record in logs)
        assert [r.seq for r in logs] == sorted(r.seq for r in logs)
        assert isinstance(client.memory(run.id), MemoryHistory)
        assert client.retry(run.id).state in ("queued", "running")
        assert final["eta"] is None
        with pytest.raises(ProtocolError) as error:
            client.run("r0404")
        assert error.value.code == ErrorCode.UNKNOWN_RUN


async def _watch(
    daemon: DaemonHarness, run_id: str, delay: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Attach after ``delay``; return the snapshot and every event until the run is done."""
    await asyncio.sleep(delay)
    async with await AsyncClient.connect(daemon.socket_path) as client:
        snapshot = await client.call("subscribe", runs=[run_id])
        events: list[dict[str, Any]] = []
        stream = client.notifications()
        while True:
            method, params = await asyncio.wait_for(anext(stream), NOTIFY_TIMEOUT)
            if method == NOTIFY_EVENT:
                events.append(params)
                # Calls and notifications share the connection; the reader demultiplexes.
                if len(events) % 50 == 0:
                    assert (await client.call("runs.get", run=run_id))["id"] == run_id
            elif method == NOTIFY_RUN and params["state"] == "done":
                return snapshot, events


def test_subscribers_attaching_mid_run_see_every_later_event_once(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        run_id = daemon.submit(fake_config(tmp_path, "steps150-slow10-chatty"))
        daemon.wait(run_id, lambda r: r["progress"] > 0)

        async def watch_all() -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
            return await asyncio.gather(
                *(_watch(daemon, run_id, 0.3 * index) for index in range(SUBSCRIBERS))
            )

        results = asyncio.run(watch_all())
        history = [
            json.loads(line)
            for line in (daemon.state_dir / "runs" / run_id / "events.ndjson")
            .read_text()
            .splitlines()
        ]
        for snapshot, events in results:
            first = snapshot["last_seq"][run_id] + 1
            assert snapshot["stages"][run_id], "the snapshot carries the stage tree"
            seqs = [e["seq"] for e in events]
            assert seqs == list(range(first, first + len(seqs))), "gap or duplicate"
            assert events == history[first - 1 : first - 1 + len(events)]
            # The daemon records the run's "done" in its history before announcing it.
            assert events[-1]["type"] == "run_state" and events[-1]["state"] == "done"
        assert len({snapshot["last_seq"][run_id] for snapshot, _ in results}) == SUBSCRIBERS


def test_async_client_sees_daemon_go_away(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:

        async def scenario() -> None:
            client = await AsyncClient.connect(daemon.socket_path)
            await client.call("subscribe")
            results = await asyncio.gather(*(client.call("status") for _ in range(20)))
            assert {r["pid"] for r in results} == {daemon.process.pid}
            await client.call("daemon.stop")
            async for _method, _params in client.notifications():
                pass  # ends when the daemon closes the connection
            assert client.closed
            with pytest.raises(DaemonNotRunning):
                await client.call("status")
            await client.close()

        asyncio.run(scenario())
        assert daemon.process.wait(30) == 0
