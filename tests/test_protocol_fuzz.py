"""Protocol fuzzing: random bytes, random JSON and random JSON-RPC calls at a live daemon.

After every example a probe request must be answered on the same connection
(the daemon neither died nor lost the stream), every line the daemon wrote
must be a JSON-RPC response, and at the end the daemon holds no more file
descriptors than before (no leaked connections). Bounded to about 20 s here;
bench/ can run it longer with GEOD_FUZZ_EXAMPLES.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.protocol import METHODS
from tests.daemon_harness import DaemonHarness, running_daemon
from tests.test_protocol import Raw

EXAMPLES = int(os.environ.get("GEOD_FUZZ_EXAMPLES", "500"))
#: Methods the fuzzer may call: everything but stopping the daemon under test.
FUZZ_METHODS = sorted(set(METHODS) - {"daemon.stop"})
PROBE = b'{"jsonrpc": "2.0", "id": "probe", "method": "status"}\n'
#: Descriptors the daemon may open or close on its own between two samples (log rotation…).
FD_SLACK = 2

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
params = st.dictionaries(
    st.sampled_from(["run", "all", "force", "limit", "level", "runs", "events", "config_path"])
    | st.text(max_size=8),
    json_values,
    max_size=4,
)
rpc_calls = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0"), "method": st.sampled_from(FUZZ_METHODS), "params": params},
    optional={"id": st.integers() | st.text(max_size=10) | st.none()},
)
payloads = st.one_of(
    st.binary(max_size=3000),
    json_values.map(lambda value: json.dumps(value).encode()),
    rpc_calls.map(lambda call: json.dumps(call).encode()),
)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonHarness]:
    # Runs submitted by the fuzzer (none can validate) must never start a worker.
    with running_daemon(tmp_path_factory.mktemp("fuzz"), worker_command=["false"]) as harness:
        yield harness


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _is_response(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and message.get("jsonrpc") == "2.0"
        and "id" in message
        and ("result" in message) != ("error" in message)
    )


def send_then_probe(socket_path: Path, payload: bytes) -> None:
    """Send one line, then a probe: every answer is JSON-RPC and the probe gets a result."""
    raw = Raw(socket_path)
    try:
        raw.send(payload + b"\n" + PROBE)
        while True:
            message = raw.read()
            assert _is_response(message), message
            if message["id"] == "probe":
                assert "result" in message
                return
    finally:
        raw.close()


def test_fuzzed_input_never_breaks_the_daemon(daemon: DaemonHarness) -> None:
    pid = daemon.process.pid
    fds_before = _open_fds(pid)
    deadline = time.monotonic() + 20

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(payload=payloads)
    def one(payload: bytes) -> None:
        if time.monotonic() > deadline:
            return  # keep the normal suite bounded; the example count is the soft target
        send_then_probe(daemon.socket_path, payload)

    one()
    assert daemon.process.poll() is None
    assert daemon.call("status")["pid"] == pid
    # Closed connections are released (allow the server a moment to notice the last close).
    for _ in range(50):
        if _open_fds(pid) <= fds_before + FD_SLACK:
            break
        time.sleep(0.05)
    assert _open_fds(pid) <= fds_before + FD_SLACK


def test_random_bytes_on_one_long_lived_connection(daemon: DaemonHarness) -> None:
    """Garbage interleaved with valid calls on a single connection keeps request/response order."""
    raw = Raw(daemon.socket_path)
    rng = random.Random(0)
    try:
        for index in range(200):
            garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
            # A leading '#' keeps every line non-blank and never valid JSON.
            raw.send(b"#" + garbage.replace(b"\n", b" ") + b"\n")
            assert "error" in raw.read()
            assert raw.request("runs.list", id=index) == {
                "jsonrpc": "2.0",
                "id": index,
                "result": daemon.call("runs.list"),
            }
    finally:
        raw.close()
