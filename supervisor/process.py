"""Worker processes: spawn in their own process group, read their events, capture their output.

A worker is ``settings.worker_command + [config, --work-dir, dir]`` started with
``start_new_session`` so it leads a process group the daemon can signal as a
whole (a grandchild a stage spawns can never be orphaned), with the write end of
a pipe inherited as ``GEOD_EVENTS_FD``. Its stdout and stderr go through the
daemon into a size-rotated ``worker.log`` and, line by line, to a callback that
turns them into log events, so nothing a worker prints is lost even if it never
went through the event sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from pipeline.events import EVENTS_FD_ENV
from supervisor.peercred import Identity
from supervisor.protocol import MAX_LINE_BYTES

log = logging.getLogger("geod.daemon.process")

#: Longest event or output line kept whole; longer ones are cut (and marked) rather than
#: letting one runaway print grow the daemon's buffers.
LINE_LIMIT = MAX_LINE_BYTES
#: After the worker exited and its group was killed, how long to wait for its pipes to
#: reach EOF (a process that left the group could hold them open forever).
PIPE_DRAIN_TIMEOUT = 5.0


#: How often a leftover worker is checked for having exited.
_LEFTOVER_POLL = 0.05

LineCallback = Callable[[bytes], None]


async def read_line(reader: asyncio.StreamReader, limit: int) -> tuple[bytes, bool]:
    """One line without its newline and whether it was cut at ``limit``; ``b""`` at EOF.

    The stream's own buffer never holds much more than ``limit`` (its limit), and
    the rest of an overlong line is read and discarded chunk by chunk, so a peer
    cannot make us buffer an unbounded line.
    """
    try:
        line = await reader.readuntil(b"\n")
        return line[:-1], False
    except asyncio.IncompleteReadError as exc:
        return exc.partial, False  # EOF: the last line had no newline (or nothing left)
    except asyncio.LimitOverrunError as exc:
        head = await reader.readexactly(min(exc.consumed, limit))
    # Discard up to and including the next newline.
    while True:
        try:
            await reader.readuntil(b"\n")
            return head[:limit], True
        except asyncio.IncompleteReadError:
            return head[:limit], True
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(exc.consumed)


class RotatingLog:
    """Append-only log file rotated by size, like logging's RotatingFileHandler for bytes."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._handle = open(path, "ab")  # noqa: SIM115 - lives as long as the worker
        self._size = self._handle.tell()

    def write(self, line: bytes) -> None:
        if self._size and self._size + len(line) > self.max_bytes:
            self._rotate()
        self._handle.write(line)
        self._handle.flush()
        self._size += len(line)

    def _rotate(self) -> None:
        self._handle.close()
        if self.backups:
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._handle = open(self.path, "wb")  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        self._handle.close()


def _as_user(identity: Identity | None) -> dict[str, Any]:
    """subprocess arguments that run the child as ``identity`` (none: as the daemon)."""
    if identity is None:
        return {}
    return {"user": identity.uid, "group": identity.gid, "extra_groups": list(identity.groups)}


class WorkerProcess:
    """A running worker: its pid (= process group id), exit code and pipe readers."""

    def __init__(self, process: asyncio.subprocess.Process, readers: list[asyncio.Task[None]]):
        self.process = process
        self.pid = process.pid
        self._readers = readers

    @classmethod
    async def spawn(
        cls,
        argv: list[str],
        *,
        cwd: Path,
        log: RotatingLog,
        on_event: LineCallback,
        on_stdout: LineCallback,
        on_stderr: LineCallback,
        env: dict[str, str] | None = None,
        identity: Identity | None = None,
    ) -> WorkerProcess:
        """Start ``argv`` in its own session; with ``identity``, as that user.

        The switch of uid, gid and groups happens in the child before exec, so the
        worker opens nothing (config, rasters, outputs) with the daemon's rights.
        """
        # Our own pipes, not asyncio's: asyncio's Process.wait() also waits for its pipes to
        # close, which a grandchild holding stdout would delay forever.
        pipes = [os.pipe() for _ in range(3)]  # events, stdout, stderr
        (events_r, events_w), (out_r, out_w), (err_r, err_w) = pipes
        os.set_inheritable(events_w, True)
        child_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        child_env[EVENTS_FD_ENV] = str(events_w)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=child_env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                pass_fds=(events_w,),
                start_new_session=True,
                **_as_user(identity),
            )
        except BaseException:
            for read_end, _ in pipes:
                os.close(read_end)
            raise
        finally:
            for _, write_end in pipes:
                os.close(write_end)  # the worker holds the write ends now: EOF = it is gone
        readers = [
            asyncio.create_task(_pump(await _pipe_reader(events_r), on_event, None)),
            asyncio.create_task(_pump(await _pipe_reader(out_r), on_stdout, log)),
            asyncio.create_task(_pump(await _pipe_reader(err_r), on_stderr, log)),
        ]
        return cls(process, readers)

    async def wait(self) -> int:
        """Exit code (negative: killed by that signal) once the worker and its pipes are done.

        Whatever is left of its process group is SIGKILLed first: a worker that
        exited must not leave grandchildren behind.
        """
        code = await self.process.wait()
        self.signal_group(signal.SIGKILL)
        _done, pending = await asyncio.wait(self._readers, timeout=PIPE_DRAIN_TIMEOUT)
        for task in pending:
            log.warning("worker %d: a pipe stayed open after exit; closing it", self.pid)
            task.cancel()
        return code

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def signal(self, signum: int) -> None:
        """Signal the worker itself (cooperative pause/resume/stop)."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def signal_group(self, signum: int) -> None:
        """Signal the whole process group (SIGSTOP/SIGCONT/SIGKILL)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)


async def _pipe_reader(fd: int) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    protocol = asyncio.StreamReaderProtocol(reader)
    await loop.connect_read_pipe(lambda: protocol, os.fdopen(fd, "rb", buffering=0))
    return reader


async def _pump(
    reader: asyncio.StreamReader, callback: LineCallback, log_file: RotatingLog | None
) -> None:
    while True:
        line, cut = await read_line(reader, LINE_LIMIT)
        if not line:
            if reader.at_eof():
                return
            continue
        if cut:
            line += b" [line cut at %d bytes]" % LINE_LIMIT
        if log_file is not None:
            log_file.write(line + b"\n")
        try:
            callback(line)
        except Exception:  # one bad line must not stop the pump (and hang the run)
            log.exception("handling a worker line failed")


def find_leftover_workers(config_files: dict[str, str]) -> dict[str, psutil.Process]:
    """Run id → a live process-group leader whose argv names that run's frozen config.

    Found by command line rather than by a recorded pid, so a worker a previous
    daemon left running is stopped even if that daemon's state file was lost or
    corrupted (two workers must never share a run's work directory).
    """
    wanted = {path: run_id for run_id, path in config_files.items()}
    found: dict[str, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error, OSError):
            run_ids = [wanted[arg] for arg in process.info["cmdline"] or () if arg in wanted]
            if run_ids and os.getpgid(process.pid) == process.pid:
                found[run_ids[0]] = process
    return found


def terminate_leftover(process: psutil.Process, grace: float) -> None:
    """Stop the process group of a worker a previous daemon left running (blocking).

    SIGTERM (plus SIGCONT, in case it was hard-paused) lets it checkpoint;
    SIGKILL of the whole group follows after ``grace``.
    """
    pid = process.pid
    log.warning("worker %d from a previous daemon is still running; stopping it", pid)
    for signum in (signal.SIGTERM, signal.SIGCONT):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signum)
    # Not our child (its parent died): poll, and count a zombie as gone, since whoever
    # inherited it may never reap it.
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.Error:
            break
        time.sleep(_LEFTOVER_POLL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
