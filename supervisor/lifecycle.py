"""The daemon process's life: lock, start, signals, systemd notifications, stop.

One asyncio process owns every run (:mod:`supervisor.scheduler`) and serves
the socket (:mod:`supervisor.socket_server`).

``run_daemon`` is what ``geod serve`` (and ``geod start``'s background child)
calls; it blocks until the daemon is told to stop and returns its exit code:

  0  stopped cleanly (SIGTERM/SIGINT or ``daemon.stop``): workers checkpointed
  1  could not start (socket path unusable, state directory not writable, …)
  3  another daemon owns the state directory (its lock is held)

Signals: SIGUSR1 pauses every run, SIGUSR2 resumes every run, SIGTERM/SIGINT
stop all runs at a checkpoint and exit, SIGHUP re-reads the settings (log
level, limits, watched folders) without touching running workers; so does an
edit of the settings file (:mod:`supervisor.settings_reload`). A settings file
that does not validate is refused with one logged line and the old settings
stay; ``status`` shows when the settings were last loaded and the last error.

systemd: READY=1 once the socket accepts connections, STATUS= with a one-line
summary on every change, WATCHDOG=1 every half ``WatchdogSec`` while the event
loop is alive, STOPPING=1 when the stop begins.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pipeline.durable import write_atomic
from supervisor import sdnotify
from supervisor.detach import LOG_FILE, PID_FILE
from supervisor.hooks import HookRunner
from supervisor.host_guard import HostGuard
from supervisor.methods import Methods
from supervisor.protocol import Selection
from supervisor.recovery import Recovery
from supervisor.runs import TRAVERSE_ONLY_DIR, Registry
from supervisor.scheduler import Scheduler
from supervisor.settings import Settings, SettingsError
from supervisor.settings_reload import SettingsFileWatch
from supervisor.sink import TelemetrySink
from supervisor.socket_server import Server, SocketError
from supervisor.telemetry import SPOOL_DIR_NAME
from supervisor.telemetry.peaks import peak_lookup
from supervisor.watcher import Watcher

__all__ = ["EXIT_LOCKED", "EXIT_OK", "EXIT_START_FAILED", "TelemetrySink", "run_daemon"]

log = logging.getLogger("geod.daemon")

EXIT_OK = 0
EXIT_START_FAILED = 1
EXIT_LOCKED = 3
LOCK_NAME = "geod.lock"
#: Modes of the state directory and of the files in it that hold users' data.
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
#: Settings a running daemon cannot change on SIGHUP (they need a restart).
_FIXED_ON_RELOAD = ("state_dir", "socket_path", "socket_group")


class AlreadyRunning(RuntimeError):
    pass


def acquire_lock(state_dir: Path) -> IO[str]:
    """Hold an exclusive flock on ``state_dir/geod.lock`` for the daemon's life.

    A lock, not a PID file: the kernel drops it when the process dies however it
    dies, so a SIGKILLed daemon never blocks the next one and two daemons can
    never share a state directory. The holder's pid is written for the message.
    """
    path = state_dir / LOCK_NAME
    handle = open(path, "a+")  # noqa: SIM115 - held until the daemon exits
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise AlreadyRunning(
            f"another geod daemon (pid {holder}) is already running on {state_dir}"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def write_pid_file(state_dir: Path) -> None:
    """Record this daemon's pid in ``geod.pid`` once it holds the lock.

    ``geod serve`` has no PID-file manager of its own, so without this a pid
    file left by an earlier daemon would name a dead process.
    """
    write_atomic(state_dir / PID_FILE, f"{os.getpid()}\n")


def make_private(state_dir: Path, shared: bool = False) -> None:
    """State directory 0700; its log, pid, lock and telemetry spool files 0600.

    Run after telemetry has started, because an embedded PostgreSQL library run
    as root widens modes; runs' logs and the spool are the users' data. A root
    daemon serving a ``socket_group`` (``shared``) runs workers as their users,
    who must reach their own run directories: the state directory is then 0711
    (entered, never listed).
    """
    os.chmod(state_dir, TRAVERSE_ONLY_DIR if shared else PRIVATE_DIR)
    for name in (LOG_FILE, PID_FILE, LOCK_NAME):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(state_dir / name, PRIVATE_FILE)
    spool = state_dir / SPOOL_DIR_NAME
    if spool.is_dir():
        os.chmod(spool, PRIVATE_DIR)
        for entry in spool.iterdir():
            if entry.is_file() and not entry.is_symlink():
                os.chmod(entry, PRIVATE_FILE)


def run_daemon(
    settings: Settings,
    ready: Callable[[], None] | None = None,
    telemetry: TelemetrySink | None = None,
    telemetry_factory: Callable[[], TelemetrySink | None] | None = None,
) -> int:
    """Run the daemon in the foreground until stopped; returns the exit code above.

    ``telemetry_factory`` is called once the state directory's lock is held, so a
    second daemon is refused before it touches the database (e.g. starts a second
    embedded PostgreSQL on the same data directory); its exceptions exit with 1.
    """
    try:
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = acquire_lock(settings.state_dir)
    except AlreadyRunning as exc:
        log.error("%s", exc)
        return EXIT_LOCKED
    except OSError as exc:
        log.error("cannot use state directory %s: %s", settings.state_dir, exc.strerror or exc)
        return EXIT_START_FAILED
    write_pid_file(settings.state_dir)
    if telemetry_factory is not None:
        try:
            telemetry = telemetry_factory()
        except Exception as exc:
            log.error("telemetry unavailable: %s", exc)
            lock.close()
            return EXIT_START_FAILED
    try:
        make_private(settings.state_dir, shared=os.geteuid() == 0 and bool(settings.socket_group))
    except OSError as exc:
        log.error("cannot restrict state directory %s: %s", settings.state_dir, exc.strerror)
        lock.close()
        return EXIT_START_FAILED
    try:
        return asyncio.run(Daemon(settings, telemetry).run(ready))
    finally:
        if telemetry is not None:
            with contextlib.suppress(Exception):
                telemetry.close()
        lock.close()


class Daemon:
    """Wiring: registry + scheduler + recovery + server + signals + systemd notifications."""

    def __init__(self, settings: Settings, telemetry: TelemetrySink | None) -> None:
        self.settings = settings
        self.registry = Registry(
            settings.state_dir, settings.memory_history, settings.event_history
        )
        self.server: Server | None = None
        self.hooks = HookRunner(settings.hooks, settings.hook_workers)
        url = getattr(telemetry, "url", None)  # the writer's database: earlier runs' peaks
        self.scheduler = Scheduler(
            settings,
            self.registry,
            self._notify,
            telemetry,
            on_change=self._status_changed,
            on_transition=self.hooks.fire,
            peak_lookup=peak_lookup(url) if isinstance(url, str) else None,
        )
        self.guard = HostGuard(self.scheduler)
        self.recovery = Recovery(self.scheduler, telemetry)
        record = None if telemetry is None else telemetry.record_event
        self.watcher = Watcher(self.scheduler, settings.state_dir, record)
        self.settings_watch = SettingsFileWatch(
            settings.source_file, lambda: self.settings.reload_debounce, self._reload_edit
        )
        #: When the settings were last loaded (start or reload) and why the last reload failed.
        self.settings_loaded = time.time()
        self.settings_error: str | None = None
        self._stop: asyncio.Event | None = None
        self._last_status: str | None = None

    def _notify(self, run_id: str, method: str, params: dict) -> None:  # type: ignore[type-arg]
        if self.server is not None:
            self.server.notify(run_id, method, params)

    def _status_changed(self) -> None:
        counts = self.scheduler.counts()
        order = ("running", "paused", "queued", "scheduled", "stopping", "failed", "interrupted")
        status = ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s)) or "idle"
        if status != self._last_status:
            self._last_status = status
            sdnotify.notify(STATUS=status)

    async def run(self, ready: Callable[[], None] | None) -> int:
        self._stop = asyncio.Event()
        self.registry.load()
        self.scheduler.seed_states()
        methods = Methods(
            self.scheduler,
            self._stop.set,
            self.guard.cleaner,
            self.watcher,
            self._settings_status,
        )
        self.server = Server(methods, self.settings.client_queue_limit, self.settings.socket_group)
        try:
            await self.server.start(self.settings.socket_path, self.settings.socket_group)
        except SocketError as exc:
            log.error("%s", exc)
            self.registry.close()
            self.hooks.close()
            return EXIT_START_FAILED
        self.recovery.recover()
        self.scheduler.schedule()
        self.guard.start()
        self.watcher.configure(self.settings.watch)
        self.settings_watch.start()
        self._install_signals()
        log.info("geod daemon %d listening on %s", os.getpid(), self.settings.socket_path)
        sdnotify.notify(READY="1")
        self._status_changed()
        if ready is not None:
            ready()
        watchdog = asyncio.create_task(self._watchdog())
        await self._stop.wait()
        sdnotify.notify(STOPPING="1", STATUS="stopping runs at a checkpoint")
        log.info("stopping: runs checkpoint and exit")
        await self.settings_watch.close()
        await self.watcher.close()
        await self.scheduler.shutdown()
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
        await self.server.close()
        self.registry.close()
        self.hooks.close()  # hooks of the last state changes (interrupted runs) still run
        log.info("stopped")
        return EXIT_OK

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._stop is not None
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload, "SIGHUP")
        loop.add_signal_handler(signal.SIGUSR1, self._all, "pause")
        loop.add_signal_handler(signal.SIGUSR2, self._all, "resume")

    def _all(self, action: str) -> None:
        everything = Selection(all=True)
        changed = (
            self.scheduler.pause(everything)
            if action == "pause"
            else self.scheduler.resume(everything)
        )
        log.info("signal: %s all runs (%d affected)", action, len(changed))

    def _settings_status(self) -> dict[str, Any]:
        """The settings file, when it was last loaded and the last reload's error."""
        return {
            "settings_file": str(self.settings.source_file),
            "settings_loaded": self.settings_loaded,
            "settings_error": self.settings_error,
            "watching": self.watcher.summary(),
        }

    def _reload_edit(self) -> None:
        self._reload(f"{self.settings.source_file} edited")

    def _reload(self, why: str) -> None:
        try:
            new = self.settings.reload()
        except SettingsError as exc:
            self.settings_error = str(exc)
            log.error("%s: settings not reloaded, the old ones stay: %s", why, exc)
            return
        self.settings_loaded = time.time()
        self.settings_error = None
        for key in _FIXED_ON_RELOAD:
            if getattr(new, key) != getattr(self.settings, key):
                log.warning("%s: %s changed; it takes effect after a restart", why, key)
                setattr(new, key, getattr(self.settings, key))
        new._source, new._system = self.settings._source, self.settings._system
        logging.getLogger().setLevel(new.log_level)
        self.settings = new
        self.scheduler.use_settings(new)
        self.hooks.configure(new.hooks)
        if self.server is not None:
            self.server.queue_limit = new.client_queue_limit
        log.info("%s: settings reloaded (log level %s)", why, new.log_level)
        self.watcher.configure(new.watch)
        self.scheduler.schedule()

    async def _watchdog(self) -> None:
        interval = sdnotify.watchdog_interval()
        if interval is None:
            return
        while True:
            sdnotify.notify(WATCHDOG="1")
            await asyncio.sleep(interval)
