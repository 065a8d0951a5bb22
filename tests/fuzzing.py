"""Time-bounded protocol fuzzing of a live daemon, for bench/faults.py (60 s or more).

The suite's share is tests/test_protocol_fuzz.py (about 20 s); this runs the
same payloads (random bytes, random JSON, JSON-RPC calls of every method with
garbage params) plus lines around and far over the 1 MiB limit, for as long as
asked. After every example a probe on the same connection must be answered,
and at the end the daemon must still be the same process holding no more
descriptors than at the start (psutil).
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.protocol import MAX_LINE_BYTES
from tests.daemon_harness import running_daemon
from tests.test_protocol_fuzz import FD_SLACK, payloads, send_then_probe

#: Lines just under, at and far over the daemon's limit, of one repeated byte.
huge_lines = st.builds(
    lambda size, byte: bytes([byte]) * size,
    st.sampled_from([MAX_LINE_BYTES - 1, MAX_LINE_BYTES + 1, 3 * MAX_LINE_BYTES]),
    st.sampled_from([ord("{"), ord("a"), 0xFF]),
)
#: Examples per hypothesis round; rounds repeat (fresh random draws) until the time is up.
ROUND_EXAMPLES = 200
#: How long the daemon may take to notice the last connection closed.
SETTLE = 5.0


def fuzz_daemon(tmp: Path, seconds: float) -> dict[str, int]:
    """Fuzz a fresh daemon for ``seconds``; counts of examples, crashes, leaked fds."""
    examples = 0
    with running_daemon(tmp, worker_command=["false"]) as daemon:
        assert daemon.process is not None
        process = psutil.Process(daemon.process.pid)
        fds_before = process.num_fds()
        deadline = time.monotonic() + seconds

        @settings(
            max_examples=ROUND_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(payload=payloads | huge_lines)
        def one(payload: bytes) -> None:
            nonlocal examples
            if time.monotonic() > deadline:
                return
            examples += 1
            send_then_probe(daemon.socket_path, payload)

        started = time.monotonic()
        while time.monotonic() < deadline:
            one()
        crashed = daemon.process.poll() is not None
        settle = time.monotonic() + SETTLE
        while not crashed and process.num_fds() > fds_before + FD_SLACK:
            if time.monotonic() > settle:
                break
            time.sleep(0.05)
        leaked = 0 if crashed else process.num_fds() - fds_before - FD_SLACK
        return {
            "examples": examples,
            "crashes": int(crashed),
            "leaked_fds": max(0, leaked),
            "seconds": round(time.monotonic() - started),
        }
