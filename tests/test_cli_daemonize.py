"""``geod start``'s background daemon after an unclean past: a PID file left by a SIGKILLed
daemon must not block the next start (the state directory's lock is what guards)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_demo_config

GEOD = str(Path(sysconfig.get_path("scripts")) / "geod")
#: Bound for a daemon to exit after SIGKILL / a stop request on a loaded machine.
EXIT_TIMEOUT = 30.0
#: ``geod start`` processes racing to start the daemon.
PARALLEL_STARTS = 5
#: Bound for each of them to submit (one starts the daemon, the others wait for it).
START_WAIT = 120.0


@pytest.fixture()
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="geod-dz-", dir="/tmp"))  # short socket path
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _env(root: Path) -> dict[str, str]:
    settings = root / "xdg" / "geod" / "geod.yml"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text("telemetry: false\n")  # this test is about processes, not telemetry
    env = dict(
        os.environ,
        GEOD_STATE_DIR=str(root / "state"),
        GEOD_SOCKET=str(root / "geod.sock"),
        XDG_CONFIG_HOME=str(root / "xdg"),
    )
    env.pop("NOTIFY_SOCKET", None)
    return env


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + EXIT_TIMEOUT
    while not _gone(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        time.sleep(0.05)


def test_start_after_a_sigkilled_daemon(root: Path, demo_dir: Path) -> None:
    env = _env(root)
    config = write_demo_config(root, demo_dir)
    pid_file = root / "state" / "geod.pid"

    def start() -> int:
        result = subprocess.run(
            [GEOD, "start", str(config)], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert "daemon started" in result.stderr
        return int(pid_file.read_text())

    first = start()
    os.kill(first, signal.SIGKILL)  # no cleanup: PID file and socket file stay behind
    _wait_gone(first)
    assert pid_file.exists() and int(pid_file.read_text()) == first

    second = start()
    assert second != first and not _gone(second)
    log = (root / "state" / "geod.log").read_text()
    assert f"geod daemon {second} listening" in log  # the daemon's own logging goes there
    stopped = subprocess.run([GEOD, "stop"], env=env, capture_output=True, text=True, timeout=90)
    assert stopped.returncode == 0, stopped.stderr
    _wait_gone(second)
    assert not pid_file.exists()  # a clean exit releases it


def test_serve_after_start_rewrites_pid_file_and_keeps_state_private(
    root: Path, demo_dir: Path
) -> None:
    """``geod serve`` after a SIGKILLed ``geod start`` daemon: the pid file names the live
    daemon, and modes widened meanwhile (as an embedded-PostgreSQL library run as root
    leaves them) are 0700/0600 again once it has started."""
    env = _env(root)
    config = write_demo_config(root, demo_dir)
    state = root / "state"
    started = subprocess.run(
        [GEOD, "start", str(config)], env=env, capture_output=True, text=True, timeout=60
    )
    assert started.returncode == 0, started.stderr
    first = int((state / "geod.pid").read_text())
    assert (state / "geod.log").stat().st_mode & 0o777 == 0o600
    os.kill(first, signal.SIGKILL)
    _wait_gone(first)
    spool = state / "telemetry"
    spool.mkdir(exist_ok=True)
    (spool / "telemetry.spool").write_text("")
    for path, mode in ((state, 0o755), (spool, 0o755), (state / "geod.log", 0o644)):
        path.chmod(mode)
    (spool / "telemetry.spool").chmod(0o644)
    serve = subprocess.Popen(
        [GEOD, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + EXIT_TIMEOUT
        while subprocess.run([GEOD, "runs"], env=env, capture_output=True).returncode != 0:
            assert serve.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        assert int((state / "geod.pid").read_text()) == serve.pid
        modes = {
            path.name: path.stat().st_mode & 0o777
            for path in (state, spool, state / "geod.log", spool / "telemetry.spool")
        }
        assert modes == {
            "state": 0o700,
            "telemetry": 0o700,
            "geod.log": 0o600,
            "telemetry.spool": 0o600,
        }
    finally:
        serve.terminate()
        serve.wait(EXIT_TIMEOUT)


def test_parallel_starts_reach_one_daemon(root: Path, tmp_path: Path) -> None:
    """Five ``geod start`` at once with no daemon: one daemon, five runs, five exit 0."""
    from tests.daemon_harness import fake_config

    env = _env(root)
    settings = root / "xdg" / "geod" / "geod.yml"
    fake = [sys.executable, str(Path(__file__).parent / "fake_worker.py")]
    settings.write_text(yaml.safe_dump({"telemetry": False, "worker_command": fake}))
    config = fake_config(tmp_path, "steps400")
    starts = [
        subprocess.Popen(
            [GEOD, "start", str(config)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PARALLEL_STARTS)
    ]
    results = [(p.wait(START_WAIT), *p.communicate()) for p in starts]
    try:
        assert [code for code, _, _ in results] == [0] * PARALLEL_STARTS, results
        ids = {out.strip() for _, out, _ in results}
        assert len(ids) == PARALLEL_STARTS
        listed = subprocess.run(
            [GEOD, "runs", "--json"], env=env, capture_output=True, text=True, timeout=60
        )
        assert {run["id"] for run in json.loads(listed.stdout)} == ids
        started = [err for _, _, err in results if "daemon started" in err]
        assert len(started) == 1
    finally:
        subprocess.run([GEOD, "kill", "--all", "--force"], env=env, capture_output=True)
        stopped = subprocess.run([GEOD, "stop"], env=env, capture_output=True, timeout=90)
        assert stopped.returncode == 0
