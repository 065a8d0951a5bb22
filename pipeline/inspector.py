"""The parent side of header inspection: a child process that answers one file per line.

:mod:`pipeline.catalog` runs its checks in ``python -m pipeline.catalog --serve``
because a bad input can hang GDAL itself; this module is the part that talks
to that child and kills it after ``catalog.timeout``. It imports no GDAL, so
the daemon's watched folders (:mod:`supervisor.watcher`) inspect arriving files
with exactly a run's checks without loading rasterio into the daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import CatalogConfig, DatasetConfig

#: The child imports GDAL before it can answer; a cold start is not the input's
#: fault, so it gets its own allowance rather than the per-file timeout.
STARTUP_TIMEOUT = 60.0

#: How long to wait for a killed child to be reaped (it may be stuck in the kernel
#: on a dead mount; then it is left behind rather than hanging the run).
REAP_TIMEOUT = 5.0

#: The child's first line: it has imported GDAL and reads requests.
READY = "ready"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Problem:
    """One bad dataset: what, where and why."""

    dataset: str
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.dataset} ({self.path}): {self.reason}"


class Inspector:
    """A long-lived inspection child; killed and replaced when a request times out."""

    def __init__(self, config: CatalogConfig, wrap_longitudes: bool = False) -> None:
        self._config = config
        self._wrap_longitudes = wrap_longitudes
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop(kill=False)

    def facts(self, dataset: DatasetConfig) -> dict[str, Any] | Problem:
        """The child's header facts of ``dataset`` (JSON values), or why it is unusable."""

        def problem(reason: str) -> Problem:
            return Problem(dataset.name, dataset.path, reason)

        if self._proc is None:
            self._start()
        request = {
            "path": str(dataset.path),
            "band": dataset.band,
            "nodata": dataset.nodata,
            "max_cells": self._config.max_cells,
            "crs": dataset.crs,
            "variable": dataset.variable,
            "time": dataset.time,
            "wrap_longitudes": self._wrap_longitudes,
        }
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        try:
            proc.stdin.write((json.dumps(request) + "\n").encode())
            proc.stdin.flush()
            line = self._read_line(self._config.timeout)
        except BrokenPipeError:
            line = None
        if line is None:
            returncode = proc.poll()
            self._stop(kill=True)
            if returncode is None:
                return problem(
                    f"header inspection timed out after {self._config.timeout:g} s "
                    "(GDAL did not answer; the inspecting process was killed)"
                )
            if returncode < 0:
                name = signal.Signals(-returncode).name
                return problem(f"GDAL crashed reading the header (inspecting process got {name})")
            return problem(f"the inspecting process died (exit code {returncode})")
        answer = json.loads(line)
        if "error" in answer:
            return problem(answer["error"])
        facts: dict[str, Any] = answer["ok"]
        return facts

    def _start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.catalog", "--serve", "--parent", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self._buffer = b""
        line = self._read_line(max(STARTUP_TIMEOUT, self._config.timeout))
        if line is None or json.loads(line) != READY:
            self._stop(kill=True)
            raise RuntimeError(
                f"catalog: the inspection process did not start within {STARTUP_TIMEOUT:g} s"
            )

    def _read_line(self, timeout: float) -> str | None:
        """One line from the child, or None on timeout or end of stream."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    return None
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def _stop(self, kill: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if kill:
            proc.kill()
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(REAP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(REAP_TIMEOUT)
        assert proc.stdout is not None
        proc.stdout.close()
