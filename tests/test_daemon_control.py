"""The daemon's process control against misbehaving workers (tests/fake_worker.py).

Real daemon processes, real signals, real process groups: pause with and
without acknowledgement, kill with grace and force, no orphaned grandchildren,
restart policy, concurrency, single instance, stale sockets, daemon signals,
and state that survives a daemon restart or crash.
"""

from __future__ import annotations

import itertools
import json
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest

from pipeline.events import RunStateEvent
from supervisor import formatting
from supervisor.lifecycle import EXIT_LOCKED, EXIT_START_FAILED
from supervisor.protocol import ErrorCode, ProtocolError
from tests.daemon_harness import DaemonHarness, fake_config, group_alive, running_daemon

FAST_RETRY = {"restart": {"policy": "on-failure", "max_retries": 2, "backoff": 0.2}}


def history(harness: DaemonHarness, run_id: str) -> list[dict]:
    path = harness.state_dir / "runs" / run_id / "events.ndjson"
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_contiguous(events: list[dict]) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), "sequence has a gap or a duplicate"


def test_cooperative_pause_resume_and_contiguous_history(tmp_path: Path) -> None:
    with running_daemon(tmp_path, pause_grace=10.0) as daemon:
        run_id = daemon.submit(fake_config(tmp_path / "a", "steps60-chatty"))
        daemon.wait(run_id, lambda r: r["state"] == "running" and r["progress"] > 0)
        daemon.call("runs.pause", run=run_id)
        paused = daemon.wait(run_id, "paused")
        assert not paused["paused_hard"]
        done_at_pause = paused["progress"]
        time.sleep(0.5)
        assert daemon.run(run_id)["progress"] == done_at_pause, "a paused worker made progress"
        assert psutil.Process(paused["pid"]).status() != psutil.STATUS_STOPPED
        daemon.call("runs.resume", run=run_id)
        final = daemon.wait(run_id, "done")
        assert final["progress"] == 1.0 and final["exit_code"] == 0
        events = history(daemon, run_id)
        assert_contiguous(events)
        states = [e["state"] for e in events if e["type"] == "state"]
        assert states[-3:] == ["paused", "resumed", "done"]
        # Plain output lines became log events with their stream's level.
        logs = daemon.call("logs.tail", run=run_id, limit=1000)
        assert any(e["logger"] == "worker.stderr" and e["level"] == "WARNING" for e in logs)
        assert (
            "plain stdout line 60"
            in (daemon.state_dir / "runs" / run_id / "worker.log").read_text()
        )
        warnings = daemon.call("logs.tail", run=run_id, limit=1000, level="warning")
        assert warnings and all(e["level"] == "WARNING" for e in warnings)


def test_unacknowledged_pause_falls_back_to_sigstop(tmp_path: Path) -> None:
    with running_daemon(tmp_path, pause_grace=0.5) as daemon:
        run_id = daemon.submit(fake_config(tmp_path / "a", "steps400-ignorepause-grandchild"))
        daemon.wait(run_id, lambda r: r["progress"] > 0)
        daemon.call("runs.pause", run=run_id)
        paused = daemon.wait(run_id, "paused")
        assert paused["paused_hard"]
        members = group_alive(paused["pid"])
        assert len(members) == 2  # worker and grandchild, both stopped
        assert all(p.status() == psutil.STATUS_STOPPED for p in members)
        said = daemon.call("logs.tail", run=run_id, limit=50, level="WARNING")
        assert any("SIGSTOP" in e["message"] for e in said)
        daemon.call("runs.resume", run=run_id)
        resumed = daemon.run(run_id)
        assert resumed["state"] == "running" and not resumed["paused_hard"]
        assert all(p.status() != psutil.STATUS_STOPPED for p in group_alive(paused["pid"]))
        daemon.wait(run_id, lambda r: r["progress"] > paused["progress"])
        daemon.call("runs.kill", run=run_id, force=True)
        daemon.wait(run_id, "killed")


def test_kill_stops_whole_group_gracefully(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        config = fake_config(tmp_path / "a", "steps400-grandchild")
        run_id = daemon.submit(config)
        running = daemon.wait(run_id, lambda r: r["progress"] > 0)
        grandchild = int(Path(running["run_dir"], "work", "grandchild.pid").read_text())
        assert psutil.pid_exists(grandchild)
        daemon.call("runs.kill", run=run_id)
        killed = daemon.wait(run_id, "killed")
        assert killed["exit_code"] == 0, "SIGTERM should let the worker stop at a checkpoint"
        assert group_alive(running["pid"]) == []
        assert not psutil.pid_exists(grandchild) or (
            psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
        )
        with pytest.raises(ProtocolError) as error:
            daemon.call("runs.kill", run=run_id)
        assert error.value.code == ErrorCode.BAD_STATE


def test_kill_escalates_to_sigkill_and_force(tmp_path: Path) -> None:
    with running_daemon(tmp_path, kill_grace=0.5) as daemon:
        stubborn = daemon.submit(fake_config(tmp_path / "a", "steps400-ignoreterm"))
        forced = daemon.submit(fake_config(tmp_path / "b", "steps400"))
        for run_id in (stubborn, forced):
            daemon.wait(run_id, lambda r: r["progress"] > 0)
        daemon.call("runs.kill", run=stubborn)
        assert daemon.run(stubborn)["state"] == "stopping"
        assert daemon.wait(stubborn, "killed")["exit_code"] == -signal.SIGKILL
        said = daemon.call("logs.tail", run=stubborn, limit=20, level="WARNING")
        assert any("killing its group" in e["message"] for e in said)
        started = time.monotonic()
        daemon.call("runs.kill", run=forced, force=True)
        assert daemon.wait(forced, "killed")["exit_code"] == -signal.SIGKILL
        assert time.monotonic() - started < 0.5 + 5  # no grace waited (loose: loaded CI)


def test_restart_policy(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        flaky = daemon.submit(fake_config(tmp_path / "a", "steps20-fail5", **FAST_RETRY))
        broken = daemon.submit(fake_config(tmp_path / "b", "steps20-alwaysfail", **FAST_RETRY))
        bad = daemon.submit(fake_config(tmp_path / "c", "badinput", **FAST_RETRY))
        done = daemon.wait(flaky, "done")
        assert done["retries"] == 1
        # The retry resumed from the checkpoint instead of starting over.
        steps = [e for e in history(daemon, flaky) if e["type"] == "stage" and e["id"] == "steps"]
        restarts = [e["done"] for e in steps if e["status"] == "running"]
        assert 5 in restarts[1:], restarts
        # Every state change is in the history, in words for the events pane; the retry
        # did not restart the run's clock: STARTED is the first start.
        changes = [
            RunStateEvent.model_validate(e)
            for e in history(daemon, flaky)
            if e["type"] == "run_state"
        ]
        assert [c.state for c in changes] == ["queued", "running", "queued", "running", "done"]
        words = [formatting.state_change(c) for c in changes]
        assert words[2] == "failed at steps, retry 1/2", words
        assert words[3] == "started (retry 1/2)" and words[4].startswith("done in ")
        assert done["started"] <= changes[1].time < changes[3].time
        assert done["running_time"] >= changes[4].running_time > changes[2].running_time > 0
        failed = daemon.wait(broken, "failed")
        assert failed["retries"] == 2 and failed["exit_code"] == 1
        assert failed["error"] == "fake failure at step 3"  # 3 attempts, each resumed
        input_failed = daemon.wait(bad, "failed")
        assert input_failed["retries"] == 0 and input_failed["exit_code"] == 2
        assert input_failed["error"] == "fake: invalid input"
        # A manual retry gives a fresh budget.
        assert daemon.call("runs.retry", run=broken)["state"] in ("queued", "running")
        assert daemon.wait(broken, "failed")["retries"] == 2


def test_concurrency_limit_and_failures_never_block_the_queue(tmp_path: Path) -> None:
    with running_daemon(tmp_path, concurrency=1) as daemon:
        never = {"restart": {"policy": "never"}}
        ids = [
            daemon.submit(fake_config(tmp_path / "a", "steps10-alwaysfail", **never)),
            daemon.submit(fake_config(tmp_path / "b", "steps400")),
            daemon.submit(fake_config(tmp_path / "c", "steps10")),
            daemon.submit(fake_config(tmp_path / "d", "steps10")),
        ]
        daemon.wait(ids[1], lambda r: r["progress"] > 0)
        assert daemon.run(ids[0])["state"] == "failed"
        states = {r["id"]: r["state"] for r in daemon.call("runs.list")}
        assert states[ids[2]] == states[ids[3]] == "queued"
        daemon.call("runs.kill", run=ids[3])  # killing a queued run just removes it
        daemon.call("runs.kill", run=ids[1])
        daemon.wait(ids[2], "done")
        assert daemon.run(ids[3])["state"] == "killed" and daemon.run(ids[3])["pid"] is None
        # Ordering proves the limit: no run's worker started before the previous one exited.
        spans = sorted((daemon.run(i)["started"], daemon.run(i)["finished"]) for i in ids[:3])
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end


def test_second_daemon_on_same_state_dir_refused(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        second = DaemonHarness(tmp_path / "second", state_dir=str(daemon.state_dir))
        try:
            process = second.spawn()
            assert process.wait(30) == EXIT_LOCKED
            assert "already running" in second.log()
            assert daemon.call("status")["pid"] == daemon.process.pid
        finally:
            second.cleanup()


def test_stale_socket_replaced_live_one_kept(tmp_path: Path) -> None:
    daemon = DaemonHarness(tmp_path / "one")
    try:
        daemon.start().crash()
        assert daemon.socket_path.is_socket(), "SIGKILL leaves the socket file behind"
        daemon.start()  # nobody answers on it: removed and re-created
        assert daemon.call("status")["pid"] == daemon.process.pid
    finally:
        daemon.cleanup()
    other = DaemonHarness(tmp_path / "two")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(other.socket_path))
        listener.listen()
        process = other.spawn()
        assert process.wait(30) == EXIT_START_FAILED
        assert "another daemon is listening" in other.log()
        assert other.socket_path.is_socket(), "a live socket must never be deleted"
    finally:
        listener.close()
        other.cleanup()


def test_daemon_signals_pause_resume_all_and_reload(tmp_path: Path) -> None:
    with running_daemon(tmp_path, concurrency=2) as daemon:
        ids = [daemon.submit(fake_config(tmp_path / n, "steps400")) for n in "abc"]
        for run_id in ids[:2]:
            daemon.wait(run_id, lambda r: r["progress"] > 0)
        daemon.signal(signal.SIGUSR1)
        for run_id in ids:
            daemon.wait(run_id, "paused")  # the queued one too: it will not start
        daemon.signal(signal.SIGUSR2)
        for run_id in ids[:2]:
            daemon.wait(run_id, "running")
        assert daemon.wait(ids[2], lambda r: r["state"] in ("queued", "running"))
        assert daemon.run(ids[2])["state"] == "queued"
        # SIGHUP: a higher concurrency starts the queued run; running workers untouched.
        pids = {daemon.run(i)["pid"] for i in ids[:2]}
        daemon.write_settings(**{**daemon.settings_values, "concurrency": 3})
        daemon.signal(signal.SIGHUP)
        daemon.wait(ids[2], "running")
        assert {daemon.run(i)["pid"] for i in ids[:2]} == pids
        assert daemon.call("status")["concurrency"] == 3
        daemon.call("runs.kill", all=True, force=True)
        for run_id in ids:
            daemon.wait(run_id, "killed")


def test_graceful_restart_keeps_paused_and_queued_runs(tmp_path: Path) -> None:
    daemon = DaemonHarness(tmp_path, concurrency=1)
    try:
        daemon.start()
        first = daemon.submit(fake_config(tmp_path / "a", "steps400"))
        second = daemon.submit(fake_config(tmp_path / "b", "steps30"))
        daemon.wait(first, lambda r: r["progress"] > 0)
        daemon.call("runs.pause", run=first)
        paused_at = daemon.wait(first, "paused")["progress"]
        assert daemon.run(second)["state"] == "queued"  # a paused worker keeps its slot
        assert daemon.stop() == 0
        state = json.loads((daemon.state_dir / "runs" / first / "state.json").read_text())
        assert state["summary"]["state"] == "paused" and state["summary"]["pid"] is None
        daemon.start()
        assert daemon.run(first)["state"] == "paused"
        # A worker-less paused run frees its slot; the queued one runs now.
        daemon.wait(second, "done")
        time.sleep(0.3)
        assert daemon.run(first)["state"] == "paused", "a paused run must not restart by itself"
        daemon.call("runs.resume", run=first)
        run = daemon.wait(first, lambda r: r["state"] == "running" and r["progress"] > paused_at)
        daemon.call("runs.kill", run=first, force=True)
        daemon.wait(first, "killed")
        attempts = Path(run["run_dir"], "work", "attempts").read_text()
        assert attempts == "2", "resumed in a new worker from its checkpoint"
    finally:
        daemon.cleanup()


def test_daemon_crash_leftover_worker_stopped_and_run_resumed(tmp_path: Path) -> None:
    daemon = DaemonHarness(tmp_path)
    try:
        daemon.start()
        run_id = daemon.submit(fake_config(tmp_path / "a", "steps80-grandchild"))
        before = daemon.wait(run_id, lambda r: r["progress"] > 0.2)
        last_seq = before["last_seq"]
        daemon.crash()
        assert group_alive(before["pid"]), "workers outlive a SIGKILLed daemon (own session)"
        daemon.start()
        done = daemon.wait(run_id, "done")
        assert group_alive(before["pid"]) == []
        assert done["last_seq"] > last_seq
        events = history(daemon, run_id)
        assert_contiguous(events)
        messages = [e.get("message", "") for e in events if e["type"] == "log"]
        assert any("left running by a previous daemon" in m for m in messages)
        assert any("resuming from its checkpoint" in m for m in messages)
    finally:
        daemon.cleanup()


def test_bad_submissions_rejected_daemon_stays_up(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    secret = "root:$6$secrethash:20228:0:99999:7:::"
    shadow.write_text(f"{secret}\ndaemon:*:20228:0:99999:7:::\n")
    huge = tmp_path / "huge.yml"
    huge.write_text("datasets: []\n" + "#" * (2 * 1024 * 1024))
    with running_daemon(tmp_path) as daemon:
        cases = {
            str(tmp_path / "missing.yml"): "file not found",
            str(fake_config(tmp_path / "t", "typo", grdi={})): "did you mean",
            str(tmp_path): "is a directory",
            "/dev/zero": "not a regular file",
            str(shadow): "not a geod config (expected a YAML mapping with datasets:)",
            str(huge): "too large for a config file",
        }
        for path, expected in cases.items():
            with pytest.raises(ProtocolError) as error:
                daemon.submit(Path(path))
            assert error.value.code == ErrorCode.BAD_CONFIG
            assert expected in error.value.message and "\n" not in error.value.message
            assert "secrethash" not in error.value.message
        for params in (
            {"config_path": "relative.yml"},
            {"config_path": str(fake_config(tmp_path / "n", "ok")), "name": "$(rm -rf ~)"},
        ):
            with pytest.raises(ProtocolError) as error:
                daemon.call("runs.submit", **params)
            assert error.value.code == ErrorCode.INVALID_PARAMS
        with pytest.raises(ProtocolError) as error:
            daemon.call("runs.get", run="r9999")
        assert error.value.code == ErrorCode.UNKNOWN_RUN
        assert daemon.call("runs.list") == []


def test_garbage_state_file_and_torn_history_recovered(tmp_path: Path) -> None:
    daemon = DaemonHarness(tmp_path)
    try:
        daemon.start()
        run_id = daemon.submit(fake_config(tmp_path / "a", "steps400"))
        before = daemon.wait(run_id, lambda r: r["progress"] > 0.05)
        daemon.crash()
        run_dir = daemon.state_dir / "runs" / run_id
        (run_dir / "state.json").write_bytes(b"\x00garbage{")
        with open(run_dir / "events.ndjson", "ab") as history_file:
            history_file.write(b'{"time": 1, "seq": 99999, "type": "lo')  # cut mid-write
        daemon.start()
        run = daemon.wait(run_id, lambda r: r["state"] == "running" and r["pid"])
        assert run["name"] == "steps400"  # rebuilt from the frozen config, not trusted
        said = [e["message"] for e in daemon.call("logs.tail", run=run_id, limit=100)]
        # The old worker was found by its command line although its pid was lost.
        assert any("left running by a previous daemon" in m for m in said)
        assert any("resuming from its checkpoint" in m for m in said)
        assert group_alive(before["pid"]) == []
        assert "state file unreadable" in daemon.log()
        assert "cut a torn last line" in daemon.log()
        daemon.call("runs.kill", run=run_id, force=True)
        daemon.wait(run_id, "killed")
        assert_contiguous(history(daemon, run_id))
    finally:
        daemon.cleanup()


def test_unstartable_worker_fails_the_run_not_the_daemon(tmp_path: Path) -> None:
    with running_daemon(tmp_path, worker_command=["/nonexistent/geod-worker"]) as daemon:
        run_id = daemon.submit(fake_config(tmp_path / "a", "steps5"))
        failed = daemon.wait(run_id, "failed")
        assert failed["error"] == (
            "cannot start worker /nonexistent/geod-worker: No such file or directory"
        )
        assert failed["retries"] == 0 and daemon.call("status")["counts"] == {"failed": 1}


def test_telemetry_opened_only_after_the_lock(tmp_path: Path) -> None:
    """A refused second daemon must not touch the database (an embedded server's data dir)."""
    from supervisor.lifecycle import run_daemon
    from supervisor.settings import load_settings

    with running_daemon(tmp_path) as daemon:
        opened: list[bool] = []
        code = run_daemon(
            load_settings(daemon.settings_path),
            telemetry_factory=lambda: opened.append(True),  # type: ignore[func-returns-value]
        )
        assert code == EXIT_LOCKED and opened == []
