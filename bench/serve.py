"""A real daemon (``geod serve``) for the benchmarks, with its settings in a temporary folder."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from supervisor.client import Client, DaemonNotRunning

#: Bound for the daemon to accept connections.
START_TIMEOUT = 30.0


def start_daemon(tmp: Path, **settings: Any) -> tuple[subprocess.Popen[bytes], Path]:
    """``geod serve`` with state in ``tmp`` and ``settings``; returns it and its socket path."""
    socket_path = Path(tempfile.mkdtemp(prefix="geodb-", dir="/tmp")) / "s.sock"
    path = tmp / "geod.yml"
    values = {"state_dir": str(tmp / "state"), "socket_path": str(socket_path), **settings}
    path.write_text(yaml.safe_dump(values))
    geod = Path(sys.executable).parent / "geod"
    log = open(tmp / "daemon.log", "wb")  # noqa: SIM115 - the daemon's stderr for its life
    process = subprocess.Popen([str(geod), "serve", "--config", str(path)], stderr=log)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            Client(socket_path).close()
            return process, socket_path
        except DaemonNotRunning:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"daemon did not start; see {tmp / 'daemon.log'}") from None
            time.sleep(0.05)
