"""The queue through a real daemon and the real ``geod`` CLI: priorities, ``--after``
dependencies, scheduled starts, ``geod parallel``, ``geod wait`` and their survival
of a daemon SIGKILL.

Runs are tests/fake_worker.py (its run name says how long it works or whether it
fails), so ordering is read from the daemon's own start and end times.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sysconfig
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from supervisor.cli.main import (
    EXIT_BAD_STATE,
    EXIT_FAILED,
    EXIT_TIMEOUT,
    EXIT_UNKNOWN_RUN,
    EXIT_USAGE,
)
from supervisor.cli.timespec import parse_moment, parse_span
from supervisor.run_queue import QUEUE_STATE_NAME
from tests.daemon_harness import DaemonHarness, fake_config, running_daemon

GEOD = str(Path(sysconfig.get_path("scripts")) / "geod")
NEVER = {"restart": {"policy": "never"}}
#: A run that holds its slot until it is killed (400 steps of 50 ms).
BLOCKER = "steps400"
QUICK = "steps3"


def geod(daemon: DaemonHarness, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """The installed ``geod`` against this daemon's socket, as a shell runs it."""
    env = dict(os.environ, GEOD_SOCKET=str(daemon.socket_path))
    env["XDG_CONFIG_HOME"] = str(daemon.tmp / "xdg")  # no user settings file leaks in
    return subprocess.run(
        [GEOD, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def start(daemon: DaemonHarness, name: str, *options: str, **sections: Any) -> str:
    """``geod start`` of a fake run in its own directory (own outputs); its run id."""
    config = fake_config(daemon.tmp / f"cfg-{name}-{time.monotonic_ns()}", name, **sections)
    result = geod(daemon, "start", str(config), *options)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def submit(daemon: DaemonHarness, name: str, sections: dict | None = None, **params: Any) -> str:
    """The same over the socket: fast, for runs whose CLI path is not what a test checks."""
    config = fake_config(daemon.tmp / f"cfg-{name}-{time.monotonic_ns()}", name, **(sections or {}))
    return daemon.submit(config, **params)


def one_error_line(result: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def usage_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """Click's usage error: exit 2, its ``Error:`` line naming the option and value."""
    assert result.returncode == EXIT_USAGE, (result.stdout, result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error:") and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in last, last


def test_priority_orders_the_queue_and_can_change(tmp_path: Path) -> None:
    with running_daemon(tmp_path, concurrency=1) as daemon:
        blocker = submit(daemon, BLOCKER)
        daemon.wait(blocker, "running")
        low = submit(daemon, QUICK)
        high = start(daemon, QUICK, "--priority", "5")
        tie = submit(daemon, QUICK, priority=5)  # same priority: after `high`
        late = submit(daemon, QUICK, priority=-1)
        changed = geod(daemon, "priority", late, "9")  # raise the last one
        assert changed.returncode == 0, changed.stderr
        assert changed.stdout.split("\t")[:2] == [late, "priority 9"]
        queued = {r["id"]: r for r in json.loads(geod(daemon, "runs", "--json").stdout)}
        assert queued[high]["priority"] == 5 and queued[late]["priority"] == 9
        assert queued[low]["wait_reason"] == "waiting for a free slot (concurrency 1)"
        assert geod(daemon, "kill", blocker).returncode == 0
        for run_id in (low, high, tie, late):
            daemon.wait(run_id, "done")
        started = sorted((low, high, tie, late), key=lambda run: daemon.run(run)["started"])
        assert started == [late, high, tie, low]
        # A negative priority parses as a number, not an option.
        assert geod(daemon, "priority", blocker, "-3").returncode == EXIT_BAD_STATE


def test_after_waits_for_done_and_a_failure_fails_the_chain(tmp_path: Path) -> None:
    with running_daemon(tmp_path, concurrency=3) as daemon:
        first = submit(daemon, "steps60")
        second = start(daemon, QUICK, "--after", first)
        waiting = daemon.run(second)
        assert daemon.run(first)["state"] == "running"
        assert waiting["state"] == "queued" and waiting["after"] == [first]
        assert waiting["wait_reason"] == f"waiting for {first} (running)"
        assert f"waiting for {first}" in geod(daemon, "status", second).stdout
        broken = submit(daemon, "steps2-alwaysfail", NEVER)
        victim = start(daemon, QUICK, "--after", f"{first},{broken}")
        chained = submit(daemon, QUICK, after=[victim, first])
        done = daemon.wait(second, "done")
        assert done["started"] >= daemon.run(first)["finished"]
        failed = daemon.wait(victim, "failed")
        assert failed["error"] == f"dependency {broken} ended failed"
        assert failed["started"] is None  # it never ran
        assert daemon.wait(chained, "failed")["error"] == f"dependency {victim} ended failed"
        logs = geod(daemon, "logs", victim)
        assert f"dependency {broken} ended failed" in logs.stdout
        # A killed dependency fails its dependent too.
        holder = submit(daemon, BLOCKER)
        dependent = submit(daemon, QUICK, after=[holder])
        daemon.call("runs.kill", run=holder)
        assert daemon.wait(dependent, "failed")["error"] == f"dependency {holder} ended killed"


def test_delay_schedules_a_run_then_it_starts(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        before = time.time()
        run_id = start(daemon, QUICK, "--delay", "2s", "--label", "batch=nightly")
        run = daemon.run(run_id)
        assert run["state"] == "scheduled"
        assert before + 2 <= run["start_at"] <= time.time() + 2
        assert run["labels"] == {"batch": "nightly"}
        table = geod(daemon, "runs").stdout
        assert "scheduled" in table and "starts " in table
        done = daemon.wait(run_id, "done")
        assert done["started"] >= run["start_at"]
        # A scheduled run can be killed before its time.
        in_two_hours = time.strftime("%Y-%m-%dT%H:%M", time.localtime(time.time() + 7200))
        later = start(daemon, QUICK, "--at", in_two_hours)
        assert daemon.run(later)["state"] == "scheduled"
        assert geod(daemon, "kill", later).returncode == 0
        assert daemon.run(later)["state"] == "killed"


def test_queue_survives_a_daemon_sigkill(tmp_path: Path) -> None:
    with running_daemon(tmp_path, concurrency=1) as daemon:
        blocker = start(daemon, BLOCKER, **NEVER)  # interrupted by the crash, stays so
        daemon.wait(blocker, "running")
        scheduled = submit(daemon, QUICK, start_at=time.time() + 3600, priority=3)
        low = submit(daemon, QUICK)
        high = submit(daemon, QUICK, priority=7, after=[low])
        urgent = submit(daemon, QUICK, priority=4)
        assert geod(daemon, "parallel", "1").returncode == 0
        before = {run: daemon.run(run) for run in (scheduled, low, high, urgent)}
        daemon.crash()
        daemon.start()
        for run_id, summary in before.items():
            after = daemon.run(run_id)
            for key in ("priority", "after", "start_at", "labels", "submitted"):
                assert after[key] == summary[key], key
        assert daemon.run(scheduled)["state"] == "scheduled"
        parallel = json.loads(geod(daemon, "parallel", "--json").stdout)
        assert parallel == {"concurrency": 1, "settings_concurrency": 1}
        # The leftover worker is stopped; the queue goes on in its order: urgent (4),
        # low (0), then high (7, but after low).
        assert daemon.wait(blocker, "interrupted")["pid"] is None
        for run_id in (urgent, low, high):
            daemon.wait(run_id, "done")
        order = sorted((urgent, low, high), key=lambda run: daemon.run(run)["started"])
        assert order == [urgent, low, high]
        assert daemon.run(scheduled)["state"] == "scheduled"


def test_parallel_is_persisted_and_a_settings_change_wins(tmp_path: Path) -> None:
    with running_daemon(tmp_path, concurrency=1) as daemon:
        first = submit(daemon, BLOCKER)
        second = submit(daemon, BLOCKER)
        daemon.wait(first, "running")
        assert daemon.run(second)["state"] == "queued"
        result = geod(daemon, "parallel", "2")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "concurrency 2 (settings file: 1)"
        daemon.wait(second, "running")
        saved = json.loads((daemon.state_dir / QUEUE_STATE_NAME).read_text())
        assert saved == {"concurrency": 2}
        assert daemon.call("status")["concurrency"] == 2
        # SIGHUP with a new concurrency in the settings file: the file's value wins again.
        daemon.write_settings(**{**daemon.settings_values, "concurrency": 3})
        daemon.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while daemon.call("status")["concurrency"] != 3:
            assert time.monotonic() < deadline, daemon.log()[-2000:]
            time.sleep(0.05)
        assert json.loads((daemon.state_dir / QUEUE_STATE_NAME).read_text()) == {
            "concurrency": None
        }
        geod(daemon, "kill", "--all", "--force")


def test_wait_exit_codes(tmp_path: Path) -> None:
    with running_daemon(tmp_path, concurrency=3) as daemon:
        good = submit(daemon, "steps10")
        other = submit(daemon, QUICK)
        waited = geod(daemon, "wait", good, other)
        assert waited.returncode == 0, waited.stderr
        assert sorted(waited.stdout.split("\n")[:2]) == sorted([f"{good}\tdone", f"{other}\tdone"])
        bad = submit(daemon, "steps2-alwaysfail", NEVER)
        result = geod(daemon, "wait", good, bad, "--json")
        assert result.returncode == EXIT_FAILED
        assert [r["state"] for r in json.loads(result.stdout)] == ["done", "failed"]
        long = submit(daemon, BLOCKER)
        follower = submit(daemon, QUICK, after=[long])
        timed_out = geod(daemon, "wait", "--all", "--timeout", "0.5")
        one_error_line(timed_out, EXIT_TIMEOUT, "timed out", long, follower)
        # --all waits for the runs going when it starts: a killed one makes it exit 1.
        waiter = subprocess.Popen(
            [GEOD, "wait", "--all"],
            env=dict(os.environ, GEOD_SOCKET=str(daemon.socket_path)),
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)
        assert waiter.poll() is None
        geod(daemon, "kill", long)
        assert waiter.wait(30) == EXIT_FAILED
        assert waiter.stdout is not None
        assert f"{long}\tkilled" in waiter.stdout.read()
        one_error_line(geod(daemon, "wait", "r9999"), EXIT_UNKNOWN_RUN, "r9999")
        usage_error(geod(daemon, "wait"), "--all")


def test_interrupted_is_not_final_for_wait(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        run_id = start(daemon, BLOCKER, **NEVER)
        daemon.wait(run_id, "running")
        daemon.stop()
        daemon.start()
        assert daemon.run(run_id)["state"] == "interrupted"  # policy never: it waits for retry
        one_error_line(geod(daemon, "wait", run_id, "--timeout", "1"), EXIT_TIMEOUT, run_id)


def test_bad_queue_options_are_refused_and_nothing_is_submitted(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        config = str(fake_config(tmp_path / "cfg", QUICK))
        one_error_line(geod(daemon, "start", config, "--after", "r9999"), EXIT_UNKNOWN_RUN, "r9999")
        for args, words in (
            (("--delay", "5x"), ("--delay", "5x")),
            (("--at", "2001-01-01T02:00"), ("--at", "past")),
            (("--at", "soon"), ("--at", "soon")),
            (("--delay", "1m", "--at", "02:00"), ("--delay", "--at")),
            (("--label", "no-equals"), ("--label", "no-equals")),
            (("--priority", "high"), ("--priority",)),
        ):
            usage_error(geod(daemon, "start", config, *args), *words)
        usage_error(geod(daemon, "parallel", "0"), "0")
        assert daemon.call("runs.list") == []  # nothing submitted
        one_error_line(geod(daemon, "priority", "r9999", "1"), EXIT_UNKNOWN_RUN, "r9999")
        assert daemon.process is not None and daemon.process.poll() is None


def test_time_spans_and_moments() -> None:
    assert [parse_span(t) for t in ("45s", "45", "30m", "1h30m", "7d", "1.5s")] == [
        45.0,
        45.0,
        1800.0,
        5400.0,
        604800.0,
        1.5,
    ]
    for bad in ("", "m", "5x", "30 m", "-5s"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_span(bad)
    evening = datetime(2026, 12, 23, 22, 30).timestamp()
    assert parse_moment("02:00", now=evening) == datetime(2026, 12, 24, 2, 0).timestamp()
    assert parse_moment("23:00", now=evening) == datetime(2026, 12, 23, 23, 0).timestamp()
    zoned = parse_moment("2026-12-24T02:00+00:00")
    assert zoned == datetime(2026, 12, 24, 2, 0, tzinfo=UTC).timestamp()
    with pytest.raises(ValueError, match="not a time"):
        parse_moment("tomorrow")
