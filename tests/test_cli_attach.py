"""``geod attach`` hands its process over to ``geo-tui attach`` (exec, same pid)."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sysconfig
import time
from pathlib import Path

GEOD = str(Path(sysconfig.get_path("scripts")) / "geod")
GEO_TUI = str(Path(sysconfig.get_path("scripts")) / "geo-tui")
#: Bound for the exec to happen (interpreter start-up of geod on a loaded machine).
EXEC_TIMEOUT = 30.0


def test_attach_execs_geo_tui_with_socket_and_run(tmp_path: Path) -> None:
    socket_path = tmp_path / "geod.sock"
    primary, secondary = pty.openpty()  # the TUI expects a terminal
    process = subprocess.Popen(
        [GEOD, "attach", "--socket", str(socket_path), "r0007"],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        start_new_session=True,
    )
    os.close(secondary)
    try:
        deadline = time.monotonic() + EXEC_TIMEOUT
        argv: list[str] = []
        while time.monotonic() < deadline and process.poll() is None:
            argv = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode().split("\0")[:-1]
            if GEO_TUI in argv:
                break
            time.sleep(0.05)
        # The same process now runs geo-tui (console script: interpreter, script, args).
        assert argv[argv.index(GEO_TUI) :] == [
            GEO_TUI,
            "attach",
            "--socket",
            str(socket_path),
            "r0007",
        ]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        os.close(primary)
