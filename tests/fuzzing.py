"""Time-bounded protocol fuzzing of a live daemon, for bench/faults.py (60 s or more).

Not a ``test_*`` module, so the suite never collects it: bench/faults.py names
this file on its pytest command line with ``GEOD_FUZZ_SECONDS`` set, and reads
the figures the test records (``record_property``) from the JUnit XML.

The suite's share is tests/test_protocol_fuzz.py (about 20 s); this runs the
same payloads (random bytes, random JSON, JSON-RPC calls of every method with
garbage params) plus lines around and far over the 1 MiB limit, for as long as
asked. After every example a probe on the same connection must be answered,
and at the end the daemon must still be the same process holding no more
descriptors than at the start (psutil).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
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


def test_fuzz_for_a_time_budget(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """``GEOD_FUZZ_SECONDS`` of fuzzing: the daemon never crashes nor leaks a descriptor."""
    figures = fuzz_daemon(tmp_path, float(os.environ.get("GEOD_FUZZ_SECONDS", "60")))
    for name, value in figures.items():
        record_property(name, value)
    assert figures["crashes"] == 0 and figures["leaked_fds"] == 0, figures
