"""Hooks through a real daemon: a real command that writes its environment to a file,
a real HTTP server on 127.0.0.1 (http.server in a thread) receiving the webhooks,
and hooks that fail, hang or point nowhere, which must change nothing but the log.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from supervisor.hooks import HOOK_ENV
from supervisor.settings import SettingsError, load_settings
from tests.daemon_harness import DaemonHarness, fake_config, running_daemon

GEOD = str(Path(sysconfig.get_path("scripts")) / "geod")
#: The hook command: append the GEOD_* environment as one JSON line, say something.
ENV_DUMP = (
    "import json, os, sys\n"
    "env = {k: v for k, v in os.environ.items() if k.startswith('GEOD_')}\n"
    "open(sys.argv[1], 'a').write(json.dumps(env) + '\\n')\n"
    "print('hook says hi to', env['GEOD_RUN_ID'])\n"
)
#: Bound for hooks to have run after the run's state changed.
HOOK_TIMEOUT = 30.0


class Receiver(BaseHTTPRequestHandler):
    """Records every POST; ``/flaky`` answers 500 to its first request, then 200."""

    posts: ClassVar[list[tuple[str, dict[str, str], dict[str, Any]]]] = []
    flaky_calls: ClassVar[int] = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).posts.append((self.path, dict(self.headers), json.loads(body)))
        status = 200
        if self.path == "/flaky":
            type(self).flaky_calls += 1
            status = 500 if type(self).flaky_calls == 1 else 200
        self.send_response(status)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test's output is the daemon's log."""


@pytest.fixture()
def receiver() -> Iterator[str]:
    Receiver.posts = []
    Receiver.flaky_calls = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(predicate: Any, daemon: DaemonHarness, what: str) -> None:
    deadline = time.monotonic() + HOOK_TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"{what}\n{daemon.log()[-3000:]}"
        time.sleep(0.05)


def test_command_and_webhook_hooks_with_a_real_daemon(tmp_path: Path, receiver: str) -> None:
    env_file = tmp_path / "hook-env.ndjson"
    hooks = [
        {"on": ["done", "failed"], "command": [sys.executable, "-c", ENV_DUMP, str(env_file)]},
        {"on": ["done", "failed", "killed"], "url": f"{receiver}/geod"},
        {"on": ["done"], "url": f"{receiver}/flaky", "retries": 2, "retry_delay": 0.1},
        # Hooks that fail every way: none may touch a run or the daemon.
        {"on": ["done"], "command": [sys.executable, "-c", "import sys; sys.exit(3)"]},
        {"on": ["done"], "command": [str(tmp_path / "no-such-program")]},
        {"on": ["done"], "command": ["sleep", "60"], "timeout": 1.0},
        {
            "on": ["done"],
            "url": f"http://127.0.0.1:{closed_port()}/x",
            "retries": 1,
            "retry_delay": 0.1,
            "timeout": 1.0,
        },
    ]
    with running_daemon(tmp_path, hooks=hooks) as daemon:
        config = fake_config(tmp_path / "ok", "steps5")
        done = daemon.submit(config, labels={"batch": "nightly"})
        failed = daemon.submit(
            fake_config(tmp_path / "bad", "steps2-alwaysfail", restart={"policy": "never"})
        )
        finished = daemon.wait(done, "done")
        daemon.wait(failed, "failed")
        wait_for(
            lambda: env_file.exists() and len(env_file.read_text().splitlines()) == 2,
            daemon,
            "command hook did not run twice",
        )
        records = {r["GEOD_RUN_ID"]: r for r in map(json.loads, env_file.read_text().splitlines())}
        ok = records[done]
        assert set(HOOK_ENV) <= set(ok)  # every documented variable is set
        assert ok["GEOD_STATE"] == "done" and ok["GEOD_PREVIOUS_STATE"] == "running"
        assert ok["GEOD_RUN_NAME"] == "steps5" and ok["GEOD_EXIT_CODE"] == "0"
        assert ok["GEOD_CONFIG"] == str(config) and ok["GEOD_RUN_DIR"] == finished["run_dir"]
        assert 0 < float(ok["GEOD_DURATION"]) < 60 and ok["GEOD_ERROR"] == ""
        assert json.loads(ok["GEOD_LABELS"]) == {"batch": "nightly"}
        bad = records[failed]
        assert bad["GEOD_STATE"] == "failed" and bad["GEOD_EXIT_CODE"] == "1"
        assert bad["GEOD_ERROR"] == "fake failure at step 1"

        def posted(path: str) -> list[dict[str, Any]]:
            return [body for where, _, body in Receiver.posts if where == path]

        wait_for(
            lambda: len(posted("/geod")) == 2 and len(posted("/flaky")) == 2,
            daemon,
            "webhooks not received",
        )
        by_run = {body["run"]["id"]: body for body in posted("/geod")}
        assert by_run[done]["event"] == "done" and by_run[done]["previous_state"] == "running"
        assert by_run[done]["run"]["labels"] == {"batch": "nightly"}
        assert by_run[failed]["event"] == "failed"
        headers = next(h for where, h, _ in Receiver.posts if where == "/geod")
        assert headers["Content-Type"] == "application/json"
        # The failing hooks are in the daemon log, one line each; the runs did not care.
        wait_for(lambda: "gave up after 2 attempts" in daemon.log(), daemon, "no give-up line")
        wait_for(lambda: "still running after 1 s; killed" in daemon.log(), daemon, "no timeout")
        log = daemon.log()
        assert f"hook says hi to {done}" in log
        assert "exited with code 3" in log and "cannot start" in log
        assert "HTTP 500" in log and "attempt 1/3" in log
        assert daemon.run(done)["state"] == "done" and daemon.run(failed)["state"] == "failed"
        assert daemon.process is not None and daemon.process.poll() is None
        # Restarting the daemon fires nothing again: hooks follow changes, not states.
        daemon.stop()
        daemon.start()
        time.sleep(1.0)
        assert len(env_file.read_text().splitlines()) == 2 and len(posted("/geod")) == 2


def test_a_slow_hook_never_blocks_the_socket(tmp_path: Path) -> None:
    marker = tmp_path / "slow-hook-ended"
    slow = [sys.executable, "-c", f"import time; time.sleep(5); open({str(marker)!r}, 'w')"]
    with running_daemon(tmp_path, hooks=[{"on": ["running"], "command": slow}]) as daemon:
        first = daemon.submit(fake_config(tmp_path / "a", "steps5"))
        daemon.wait(first, "done")
        assert not marker.exists()  # the hook still sleeps, yet the run went on to its end
        began = time.monotonic()
        second = daemon.submit(fake_config(tmp_path / "b", "steps2"))
        daemon.wait(second, "done")
        assert time.monotonic() - began < 5  # neither the socket nor the queue waited for it
        wait_for(marker.exists, daemon, "the slow hook never finished")


def test_hook_settings_errors_are_one_line(tmp_path: Path) -> None:
    settings = tmp_path / "geod.yml"
    # YAML 1.1 reads a bare `on` as true: it still means the hook's key.
    settings.write_text("hooks:\n  - on: [done]\n    command: [notify-send, geod]\n")
    (hook,) = load_settings(settings).hooks
    assert hook.on == ["done"] and hook.command == ["notify-send", "geod"]
    for text, expected in (
        ("hooks:\n  - on: [finished]\n    command: [x]\n", "hooks.0.on.0: Input should be"),
        ("hooks:\n  - on: [done]\n", "hooks.0: give either command or url"),
        ("hooks:\n  - on: [done]\n    url: ftp://host/x\n", "is not an http:// or https://"),
        ("hooks:\n  - on: [done]\n    comand: [x]\n", "unknown setting (did you mean 'command'?)"),
        ("hooks:\n  - on: [done]\n    command: [x]\n    timeout: 0\n", "hooks.0.timeout"),
    ):
        settings.write_text(text)
        with pytest.raises(SettingsError) as error:
            load_settings(settings)
        assert expected in str(error.value) and "\n" not in str(error.value)
        result = subprocess.run(
            [GEOD, "serve", "--config", str(settings)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert expected in result.stderr
