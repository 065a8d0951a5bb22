"""A real geod daemon in a subprocess, for the daemon/protocol/client tests.

Each harness has its own state directory and a short socket path under /tmp
(AF_UNIX paths are limited to 107 bytes, pytest's tmp paths can be longer).
The daemon is ``run_daemon`` behind a settings file, exactly what ``geod serve
--settings FILE`` runs; tests talk to it through ``supervisor.client`` and send
it real signals.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import yaml

from supervisor.client import Client, DaemonNotRunning

REPO = Path(__file__).resolve().parent.parent
FAKE_WORKER = [sys.executable, str(REPO / "tests" / "fake_worker.py")]
DAEMON_SCRIPT = (
    "import logging, sys\n"
    "from pathlib import Path\n"
    "logging.basicConfig(level=logging.INFO, stream=sys.stderr,\n"
    "                    format='%(asctime)s %(name)s %(levelname)s %(message)s')\n"
    "from supervisor.lifecycle import run_daemon\n"
    "from supervisor.settings import load_settings\n"
    "sys.exit(run_daemon(load_settings(Path(sys.argv[1]))))\n"
)
#: What ``geod serve`` runs: telemetry on, its sink from ``open_telemetry``.
DAEMON_WITH_TELEMETRY = (
    "import sys\n"
    "from pathlib import Path\n"
    "from supervisor.detach import serve\n"
    "from supervisor.settings import load_settings\n"
    "sys.exit(serve(load_settings(Path(sys.argv[1]))))\n"
)
#: Bound for the daemon to accept connections after it was started.
START_TIMEOUT = 30.0
#: Bound for asynchronous state changes (pause ack, kill, a tiny run finishing).
STATE_TIMEOUT = 60.0
POLL = 0.05


class DaemonHarness:
    def __init__(self, tmp: Path, **settings: Any) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.state_dir = Path(settings.get("state_dir", tmp / "state"))
        self.socket_dir = Path(tempfile.mkdtemp(prefix="geod-", dir="/tmp"))
        self.socket_path = self.socket_dir / "s.sock"
        self.settings_path = tmp / "geod.yml"
        self.log_path = tmp / "daemon.log"
        values: dict[str, Any] = {
            "state_dir": str(self.state_dir),
            "socket_path": str(self.socket_path),
            "telemetry": False,
            "pause_grace": 5.0,
            "kill_grace": 5.0,
            "worker_command": FAKE_WORKER,
            # Fake workers use a few MiB, but their configs' default memory.budget (50 % of
            # RAM) is what the memory broker reserves: room for every test's runs at once.
            "host_memory": "1TiB",
        }
        values.update(settings)
        self.write_settings(**values)
        self.process: subprocess.Popen[bytes] | None = None
        self._clients: list[Client] = []

    def write_settings(self, **values: Any) -> None:
        self.settings_values = values
        self.settings_path.write_text(yaml.safe_dump(values))

    # -- life cycle -------------------------------------------------------------------

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start a daemon process without waiting for it (see ``start``)."""
        env = {k: v for k, v in os.environ.items() if k not in ("GEOD_SOCKET", "GEOD_STATE_DIR")}
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-c", DAEMON_SCRIPT, str(self.settings_path)],
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.tmp,
            )

    def start(self) -> DaemonHarness:
        self.process = self.spawn()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                Client(self.socket_path).close()
                return self
            except DaemonNotRunning:
                pass
            if self.process.poll() is not None:
                raise AssertionError(
                    f"daemon exited {self.process.returncode}: {self.log()[-3000:]}"
                )
            assert time.monotonic() < deadline, f"daemon not ready: {self.log()[-3000:]}"
            time.sleep(POLL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = STATE_TIMEOUT) -> int:
        """SIGTERM and wait: the graceful stop (workers checkpoint)."""
        assert self.process is not None
        self.close_clients()
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def crash(self) -> None:
        """SIGKILL the daemon alone (its workers live on in their own sessions)."""
        assert self.process is not None
        self.close_clients()
        self.process.kill()
        self.process.wait()

    def cleanup(self) -> None:
        """Kill the daemon and every worker group it recorded (tests must not leak)."""
        self.close_clients()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pid in self.worker_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def worker_pids(self) -> list[int]:
        pids = []
        for state in self.state_dir.glob("runs/*/state.json"):
            with contextlib.suppress(ValueError, OSError):
                pid = yaml.safe_load(state.read_text())["summary"].get("pid")
                if pid:
                    pids.append(int(pid))
        return pids

    # -- talking to it ----------------------------------------------------------------

    def client(self, timeout: float = 10.0) -> Client:
        client = Client(self.socket_path, timeout=timeout)
        self._clients.append(client)
        return client

    def call(self, method: str, **params: Any) -> Any:
        with Client(self.socket_path) as client:
            return client.call(method, **params)

    def close_clients(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()

    def submit(self, config: Path, **params: Any) -> str:
        return self.call("runs.submit", config_path=str(config), **params)["id"]

    def run(self, run_id: str) -> dict[str, Any]:
        return self.call("runs.get", run=run_id)

    def wait(
        self,
        run_id: str,
        accept: Callable[[dict[str, Any]], bool] | str,
        timeout: float = STATE_TIMEOUT,
    ) -> dict[str, Any]:
        """Poll ``runs.get`` until ``accept`` (a predicate or a state name) holds."""
        if isinstance(accept, str):
            wanted = accept
            accept = lambda run: run["state"] == wanted  # noqa: E731
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if accept(run):
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"{run_id} stuck: {run}\n{self.log()[-3000:]}")
            time.sleep(POLL)


def fake_config(directory: Path, name: str, **sections: Any) -> Path:
    """A valid pipeline config whose run ``name`` tells tests/fake_worker.py what to do."""
    directory.mkdir(parents=True, exist_ok=True)
    placeholder = directory / "input.tif"
    placeholder.write_bytes(b"")  # existence is all the daemon checks before starting
    data: dict[str, Any] = {
        "name": name,
        "datasets": [{"name": "layer", "path": str(placeholder)}],
        "paths": {"work_dir": str(directory / "work"), "output_dir": str(directory / "out")},
    }
    data.update(sections)
    path = directory / f"{name}.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def group_alive(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of a process group."""
    alive = []
    for process in psutil.process_iter(["pid", "status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(process)
    return alive


@contextlib.contextmanager
def running_daemon(tmp: Path, **settings: Any) -> Iterator[DaemonHarness]:
    harness = DaemonHarness(tmp, **settings)
    try:
        yield harness.start()
    finally:
        harness.cleanup()
