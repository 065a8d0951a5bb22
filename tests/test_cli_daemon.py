"""The ``geod`` verbs against a real background daemon, as a shell uses them.

One daemon per module, started by ``geod start`` itself (python-daemon, PID
file, log file), with its own state directory, socket and PostgreSQL database;
runs are the small demo pipeline. Every command is the installed entry point in
a subprocess, so stdout, stderr and exit codes are exactly what scripts see.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from supervisor.cli.main import (
    EXIT_BAD_STATE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NO_DAEMON,
    EXIT_UNKNOWN_RUN,
)
from supervisor.client import Client
from tests.conftest import temporary_database, write_demo_config

GEOD = str(Path(sysconfig.get_path("scripts")) / "geod")
RUN_ID = re.compile(r"^r\d{4,}$")
#: Small windows: many boundaries, so pause and kill are acknowledged quickly.
SMALL_WINDOWS = {"window_size": 256, "threads": 1}
#: A coarse grid for runs that must finish: the same pipeline in a fraction of the time.
QUICK_GRID = {"crs": "EPSG:4326", "resolution": 0.5, "bounds": [-180, -90, 180, 90]}
#: Bound for state changes the daemon reports asynchronously (pause ack, kill).
STATE_TIMEOUT = 30.0
#: Bound for a whole demo run on a loaded 2-core machine.
RUN_TIMEOUT = 180.0
POLL = 0.1
#: Enough slots that no test's run waits in the queue behind an earlier test's.
CONCURRENCY = 4
#: Room for CONCURRENCY runs of the demo config's memory budget beside each other.
HOST_MEMORY = "1TiB"
REQUIRED_RUN_KEYS = {"id", "name", "state", "progress", "started", "finished", "peak_rss"}


@dataclass
class Daemon:
    env: dict[str, str]
    state_dir: Path
    socket_path: Path
    config: Path
    quick_config: Path

    def geod(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [GEOD, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def json(self, *args: str) -> Any:
        result = self.geod(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def run(self, run_id: str) -> dict[str, Any]:
        """The run's summary straight from the daemon (polled often: no CLI start-up cost)."""
        with Client(self.socket_path) as client:
            return client.call("runs.get", run=run_id)

    def wait_state(self, run_id: str, accept: Callable[[dict[str, Any]], bool]) -> dict:
        deadline = time.monotonic() + STATE_TIMEOUT
        while True:
            run = self.run(run_id)
            if accept(run):
                return run
            assert time.monotonic() < deadline, f"{run_id} stuck in {run['state']}"
            time.sleep(POLL)

    def pid(self) -> int:
        return int((self.state_dir / "geod.pid").read_text().strip())


@pytest.fixture(scope="module")
def module_database(server_url: str) -> Iterator[str]:
    """One fresh database for the module's daemon (the per-test fixture would restart it)."""
    with temporary_database(server_url, "geod_cli") as url:
        yield url


@pytest.fixture(scope="module")
def daemon(demo_dir: Path, module_database: str) -> Iterator[Daemon]:
    """Environment for a daemon that ``geod start`` brings up; stopped (or killed) after."""
    root = Path(tempfile.mkdtemp(prefix="geod-cli-", dir="/tmp"))  # short socket path
    state = root / "state"
    env = dict(
        os.environ,
        GEOD_STATE_DIR=str(state),
        GEOD_SOCKET=str(root / "geod.sock"),
        GEOD_DATABASE_URL=module_database,
        XDG_CONFIG_HOME=str(root / "xdg"),  # no user settings file leaks in
    )
    env.pop("NOTIFY_SOCKET", None)
    settings = root / "xdg" / "geod" / "geod.yml"
    settings.parent.mkdir(parents=True)
    # A host budget for CONCURRENCY demo runs at once (each predicts its memory.budget).
    settings.write_text(f"concurrency: {CONCURRENCY}\nhost_memory: {HOST_MEMORY}\n")
    quick = root / "quick"
    quick.mkdir()
    handle = Daemon(
        env,
        state,
        root / "geod.sock",
        write_demo_config(root, demo_dir, resampling=SMALL_WINDOWS),
        write_demo_config(quick, demo_dir, grid=QUICK_GRID),
    )
    yield handle
    pid_file = state / "geod.pid"
    if pid_file.exists():
        handle.geod("stop", "--timeout", "60", timeout=90)
        if pid_file.exists():
            os.kill(handle.pid(), signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Running, not a zombie (an exited daemon may wait for a reaper that never comes)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_start_daemonizes_and_prints_only_the_run_id(daemon: Daemon) -> None:
    """``RUN=$(geod start config.yml)``: stdout is the id alone and the command returns even
    though stdout is a pipe (the daemon keeps no copy of it)."""
    started = time.monotonic()
    result = daemon.geod("start", str(daemon.config), "--name", "first")
    assert result.returncode == 0, result.stderr
    assert RUN_ID.match(result.stdout.strip()), result.stdout
    assert result.stdout.count("\n") == 1
    assert "daemon started" in result.stderr and str(daemon.state_dir / "geod.log") in result.stderr
    assert time.monotonic() - started < RUN_TIMEOUT / 2  # did not wait for the run
    pid = daemon.pid()
    assert _alive(pid)
    # Detached: its own session, no terminal, stdin /dev/null, stdout/stderr the log file.
    assert os.getsid(pid) != os.getsid(0)
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    log = str((daemon.state_dir / "geod.log").resolve())
    assert os.readlink(f"/proc/{pid}/fd/1") == log == os.readlink(f"/proc/{pid}/fd/2")
    run = daemon.run(result.stdout.strip())
    assert run["name"] == "first"


def test_second_start_reuses_the_daemon(daemon: Daemon) -> None:
    pid = daemon.pid()
    result = daemon.geod("start", str(daemon.config))
    assert result.returncode == 0, result.stderr
    assert "daemon started" not in result.stderr
    assert daemon.pid() == pid
    runs = daemon.json("runs")
    assert result.stdout.strip() in [r["id"] for r in runs]


def test_runs_and_status_json_shapes(daemon: Daemon) -> None:
    runs = daemon.json("runs")
    assert isinstance(runs, list) and runs
    for run in runs:
        assert run.keys() >= REQUIRED_RUN_KEYS
        assert run["state"] in {
            "queued",
            "running",
            "paused",
            "stopping",
            "done",
            "failed",
            "killed",
            "interrupted",
        }
        assert 0.0 <= run["progress"] <= 1.0
    one = daemon.json("status", runs[0]["id"])
    assert one.keys() >= REQUIRED_RUN_KEYS and one["id"] == runs[0]["id"]
    overview = daemon.json("status")
    assert {r["id"] for r in overview["runs"]} == {r["id"] for r in runs}
    assert overview["daemon"]["pid"] == daemon.pid()


def test_human_status_and_runs_tables(daemon: Daemon) -> None:
    runs = daemon.json("runs")
    table = daemon.geod("runs")
    assert table.returncode == 0
    assert all(r["id"] in table.stdout for r in runs)
    assert "STATE" in table.stdout.splitlines()[0]
    detail = daemon.geod("status", runs[0]["id"])
    assert detail.returncode == 0
    assert "peak rss" in detail.stdout and runs[0]["id"] in detail.stdout
    assert "stages" in detail.stdout  # the stage tree of a started run
    # The first runs have served; free the two cores for the tests that need them.
    assert daemon.geod("kill", "--all", "--force").returncode == 0


def test_unknown_run_is_exit_4(daemon: Daemon) -> None:
    for args in (("status", "r9999"), ("pause", "r9999"), ("logs", "r9999"), ("retry", "r9999")):
        result = daemon.geod(*args)
        assert result.returncode == EXIT_UNKNOWN_RUN, (args, result.stderr)
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_pause_resume_kill_retry(daemon: Daemon) -> None:
    run_id = daemon.geod("start", str(daemon.config), "--name", "control").stdout.strip()
    daemon.wait_state(run_id, lambda r: r["state"] == "running" and r["progress"] > 0)

    paused = daemon.geod("pause", run_id)
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.split()[0] == run_id
    run = daemon.wait_state(run_id, lambda r: r["state"] == "paused")
    assert run["paused_hard"] is False  # the worker acknowledged at a window boundary
    progress = run["progress"]
    time.sleep(1.0)
    assert daemon.run(run_id)["progress"] == progress  # no work while paused

    resumed = daemon.geod("resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    daemon.wait_state(run_id, lambda r: r["state"] == "running")

    retry_running = daemon.geod("retry", run_id)
    assert retry_running.returncode == EXIT_BAD_STATE, retry_running.stderr

    killed = daemon.geod("kill", run_id)
    assert killed.returncode == 0, killed.stderr
    daemon.wait_state(run_id, lambda r: r["state"] == "killed")
    assert daemon.geod("pause", run_id).returncode == EXIT_BAD_STATE

    retried = daemon.geod("retry", run_id)
    assert retried.returncode == 0, retried.stderr
    daemon.wait_state(run_id, lambda r: r["state"] in ("queued", "running"))
    assert daemon.geod("kill", run_id, "--force").returncode == 0
    daemon.wait_state(run_id, lambda r: r["state"] == "killed")


def test_pause_and_resume_all(daemon: Daemon) -> None:
    run_id = daemon.geod("start", str(daemon.config), "--name", "all").stdout.strip()
    daemon.wait_state(run_id, lambda r: r["state"] == "running")
    assert daemon.geod("pause", "--all").returncode == 0
    daemon.wait_state(run_id, lambda r: r["state"] == "paused")
    # Ctrl-C ends a `logs -f` quietly with 128 + SIGINT; the run is not affected.
    follower = subprocess.Popen(
        [GEOD, "logs", run_id, "-f", "--json", "-n", "1"],
        env=daemon.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert follower.stdout is not None
    assert json.loads(follower.stdout.readline())["type"] == "log"  # it is following now
    follower.send_signal(signal.SIGINT)
    _, err = follower.communicate(timeout=STATE_TIMEOUT)
    assert follower.returncode == EXIT_INTERRUPTED and "Traceback" not in err
    assert daemon.run(run_id)["state"] == "paused"
    assert daemon.geod("resume", "--all").returncode == 0
    daemon.wait_state(run_id, lambda r: r["state"] == "running")
    assert daemon.geod("kill", "--all", "--force").returncode == 0
    daemon.wait_state(run_id, lambda r: r["state"] == "killed")


def test_start_wait_with_a_follower_then_logs(daemon: Daemon) -> None:
    """``start --wait`` prints the id at once and exits 0 when the run is done; a ``logs -f``
    started meanwhile streams every later record, in order, none twice, and ends with the
    run; afterwards ``logs`` tails the finished run with -n and --level."""
    waiter = subprocess.Popen(
        [GEOD, "start", str(daemon.quick_config), "--wait", "--name", "quick"],
        env=daemon.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    follower = None
    try:
        assert waiter.stdout is not None
        run_id = waiter.stdout.readline().strip()  # before the run ends
        assert RUN_ID.match(run_id), run_id
        follower = subprocess.Popen(
            [GEOD, "logs", run_id, "-f", "--json", "-n", "1"],
            env=daemon.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _, err = waiter.communicate(timeout=RUN_TIMEOUT)
        assert waiter.returncode == 0, err
        out, err = follower.communicate(timeout=STATE_TIMEOUT)
        assert follower.returncode == 0, err
    finally:
        for process in (waiter, follower):
            if process is not None and process.poll() is None:
                process.kill()
    run = daemon.run(run_id)
    assert run["state"] == "done" and run["finished"] >= run["started"]
    assert run["peak_rss"] and run["peak_rss"] > 0
    assert run["outputs"]
    # A finished run has no time left (in the CLI's JSON too) and keeps its running time.
    status = daemon.json("status", run_id)
    assert status["eta"] is None and status["eta_at"] is None and status["eta_range"] is None
    assert status["running_time"] > 0 and status["running_since"] is None
    assert status["progress"] == 1.0 and status["rss"] is None
    # geod map draws the run's windows; every one of a finished run is done.
    drawn = daemon.geod("map", run_id, "--width", "40")
    assert drawn.returncode == 0, drawn.stderr
    assert "▀" in drawn.stdout and "■ done" in drawn.stdout and "recomputed 0" in drawn.stdout
    unknown = daemon.geod("map", run_id, "--dataset", "no-such-layer")
    assert unknown.returncode == EXIT_FAILED and "no-such-layer" in unknown.stderr

    history = [
        json.loads(line)
        for line in daemon.geod("logs", run_id, "-n", "100000", "--json").stdout.splitlines()
    ]
    assert history and all(r["type"] == "log" for r in history)
    seqs = [r["seq"] for r in history]
    assert seqs == sorted(set(seqs))
    followed = [json.loads(line)["seq"] for line in out.splitlines()]
    assert len(followed) > 1, "only the tail, nothing followed"
    assert followed == seqs[-len(followed) :], "followed records: no gap, no duplicate"

    two = daemon.geod("logs", run_id, "-n", "2", "--json").stdout.splitlines()
    assert [json.loads(line)["seq"] for line in two] == seqs[-2:]
    human = daemon.geod("logs", run_id, "-n", "3")
    assert len(human.stdout.splitlines()) == min(3, len(history))
    warnings = daemon.geod("logs", run_id, "--level", "warning", "--json").stdout.splitlines()
    expected = [r["seq"] for r in history if r["level"] in ("WARNING", "ERROR", "CRITICAL")]
    assert [json.loads(line)["seq"] for line in warnings] == expected
    # -f on a finished run prints the tail and returns at once.
    finished = daemon.geod("logs", run_id, "-f", "-n", "2", timeout=30)
    assert finished.returncode == 0 and len(finished.stdout.splitlines()) == 2


def test_start_while_another_daemon_holds_the_state_dir(daemon: Daemon) -> None:
    """A second daemon on the same state directory refuses; ``geod start`` says so at once,
    quoting the daemon's log, with exit 1."""
    other_socket = daemon.socket_path.with_name("other.sock")
    env = dict(daemon.env, GEOD_SOCKET=str(other_socket))
    started = time.monotonic()
    result = subprocess.run(
        [GEOD, "start", str(daemon.config)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == EXIT_FAILED
    assert result.stdout == ""
    assert "exited during start-up" in result.stderr
    assert str(daemon.state_dir / "geod.log") in result.stderr
    assert time.monotonic() - started < 30  # told by the pipe, not by a timeout
    assert _alive(daemon.pid())  # the first daemon is untouched


def test_stop_waits_for_the_daemon_to_exit(daemon: Daemon) -> None:
    """``geod stop`` returns once the daemon process is gone; by then telemetry has been
    flushed, so PostgreSQL holds every run in its final state."""
    pid = daemon.pid()
    states = {run["id"]: run["state"] for run in daemon.json("runs")}
    result = daemon.geod("stop", timeout=120)
    assert result.returncode == 0, result.stderr
    assert not _alive(pid)
    assert not (daemon.state_dir / "geod.pid").exists()
    after = daemon.geod("runs")
    assert after.returncode == EXIT_NO_DAEMON
    assert daemon.geod("stop").returncode == EXIT_NO_DAEMON
    with psycopg2.connect(daemon.env["GEOD_DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, state FROM geod.runs")
        recorded = dict(cur.fetchall())
    conn.close()
    assert recorded == states
