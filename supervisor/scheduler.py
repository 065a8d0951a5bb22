"""The scheduler: queue, start, watch, pause/resume/kill and restart policy of runs.

Everything here runs on the daemon's event loop, so a run's state changes,
its event stamping and the fan-out to subscribers happen without interleaving:
a client that subscribes gets a snapshot and then exactly the events after it.

State machine (``RunSummary.state``)::

    scheduled ──start time──▶ queued    (a dependency failed or killed: failed)
    queued ──start──▶ running ──ack──▶ paused ──resume──▶ running
       │                 │   └─no ack in pause_grace─▶ paused (hard, SIGSTOP)
       │                 ├─exit 0 + "done"──▶ done
       │                 ├─exit 2──▶ failed (a retry cannot help)
       │                 ├─other exit──▶ failed, or queued again after a backoff
       │                 ├─kill──▶ stopping ──exit──▶ killed
       │                 └─daemon stops──▶ interrupted (paused runs stay paused)
       └─pause──▶ paused (no worker; resume queues it again)

A paused run without a worker (paused while queued, or across a daemon
restart) resumes by being queued: its new worker continues from the checkpoint.
What a previous daemon left behind is reconciled first by :mod:`supervisor.recovery`.
Which queued run starts next, and what it still waits for (start time,
dependencies, priority), is :mod:`supervisor.run_queue`'s to say.
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
from typing import Any, Literal

from pydantic import ValidationError

from pipeline.config import (
    NAME_PATTERN,
    ConfigError,
    PipelineConfig,
    dump_config,
    load_config,
)
from pipeline.contract import (
    DATABASE_URL_ENV,
    FINAL_STATES,
    RETRYABLE_STATES,
    WAITING_STATES,
    WORKER_EXIT_INPUT,
)
from pipeline.control import SHRINK_SIGNAL
from pipeline.events import Event, LogEvent, RunStateEvent, StateEvent, decode, encode
from supervisor import run_queue
from supervisor.asuser import read_config_as
from supervisor.cleanup import run_disk_used
from supervisor.memory_broker import MemoryBroker, PeakLookup
from supervisor.oom import OomWatch
from supervisor.peercred import Identity
from supervisor.process import RotatingLog, WorkerProcess
from supervisor.progress import running_seconds
from supervisor.protocol import (
    NOTIFY_EVENT,
    NOTIFY_RUN,
    ErrorCode,
    ProtocolError,
    QueueSettings,
    RunSummary,
    Selection,
    SubmitParams,
)
from supervisor.runs import TRAVERSE_ONLY_DIR, Registry, Run
from supervisor.sampler import sample_tree
from supervisor.settings import Settings
from supervisor.sink import TelemetrySink

log = logging.getLogger("geod.daemon")

DAEMON_LOGGER = "geod.daemon"
Notifier = Callable[[str, str, dict[str, Any]], None]
Intent = Literal["kill", "shutdown"]
#: Told of every state change of a run: its summary and the state it left (None: new run).
Transition = Callable[[RunSummary, str | None], None]


def _bad_state(run: Run, action: str) -> ProtocolError:
    return ProtocolError(
        ErrorCode.BAD_STATE, f"cannot {action} run {run.id}: it is {run.summary.state}"
    )


def _load_and_freeze(config_path: str, content: bytes | None) -> tuple[PipelineConfig, str]:
    """Validate a submitted config and its frozen text (YAML), off the event loop."""
    config = load_config(config_path, True, content)
    return config, dump_config(config)


class Scheduler:
    """Owns every run and its worker; the RPC methods and signals call into it."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        notify: Notifier,
        telemetry: TelemetrySink | None = None,
        on_change: Callable[[], None] | None = None,
        on_transition: Transition | None = None,
        peak_lookup: PeakLookup | None = None,
    ) -> None:
        self.settings = settings
        #: Shares host_memory among workers by predicted peaks (admission, pressure state).
        self.broker = MemoryBroker(lambda: self.settings.host_memory_bytes(), peak_lookup)
        #: Each worker's OOM sources and their kill count when it started (supervisor.oom).
        self._oom_baseline: dict[str, tuple[OomWatch, int | None]] = {}
        self.registry = registry
        self._notify = notify
        self._telemetry = telemetry
        self._on_change = on_change
        self._on_transition = on_transition
        #: Each run's state as last published: a publish in another state is a transition.
        self._published_state: dict[str, str] = {}
        self.queue_state = run_queue.QueueState(settings.state_dir)
        #: Further reasons a queued run may not start yet, asked when a slot is free.
        self.admission_checks: list[run_queue.AdmissionCheck] = [self._memory_admission]
        self.workers: dict[str, WorkerProcess] = {}
        #: Runs between "chosen to start" and "worker spawned" (count against concurrency).
        self._starting: set[str] = set()
        #: What the daemon asked of a worker, deciding how its exit is read.
        self._intents: dict[str, Intent] = {}
        #: Control requested while a worker was being spawned, applied once it exists.
        self._pending: dict[str, Literal["pause", "kill", "force"]] = {}
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        #: Wakes the queue at the next start time or retry time.
        self._wake_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._exited: dict[str, asyncio.Event] = {}
        #: Runs not to start yet: their worker from a previous daemon is being stopped.
        self.held: set[str] = set()
        #: Queued runs told they wait for another run writing the same outputs.
        self._waiting_output: set[str] = set()
        self.shutting_down = False

    # -- helpers ------------------------------------------------------------------

    def spawn_task(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _timer(self, run: Run, name: str, delay: float, callback: Callable[[], None]) -> None:
        self._cancel_timer(run, name)
        loop = asyncio.get_running_loop()
        self._timers[(run.id, name)] = loop.call_later(delay, callback)

    def _cancel_timer(self, run: Run, name: str) -> None:
        handle = self._timers.pop((run.id, name), None)
        if handle is not None:
            handle.cancel()

    def get(self, run_id: str) -> Run:
        run = self.registry.get(run_id)
        if run is None:
            raise ProtocolError(ErrorCode.UNKNOWN_RUN, f"no run {run_id!r}")
        return run

    def runs(self) -> list[Run]:
        return list(self.registry.runs.values())

    @property
    def concurrency(self) -> int:
        """Runs executing at once: ``geod parallel``'s value, else the settings'."""
        return self.queue_state.effective(self.settings.concurrency)

    def seed_states(self) -> None:
        """Note every loaded run's state, so only later changes count as transitions."""
        for run in self.runs():
            self._published_state[run.id] = run.summary.state

    def use_settings(self, settings: Settings) -> None:
        """New settings (SIGHUP); a changed ``concurrency`` there beats ``geod parallel``."""
        if settings.concurrency != self.settings.concurrency and self.queue_state.concurrency:
            log.info("concurrency %d from the settings file", settings.concurrency)
            self.queue_state.set_concurrency(None)
        self.settings = settings

    def publish(self, run: Run, save: bool = True) -> None:
        """A summary changed: persist it, tell subscribers, telemetry, systemd, hooks."""
        _tidy_reasons(run)
        if run.summary.state != run.announced_state:
            self._announce(run)
        if save:
            try:
                self.registry.save(run)
            except FileNotFoundError:
                self._vanished(run)
        previous = self._published_state.get(run.id)
        if previous != run.summary.state:
            self._published_state[run.id] = run.summary.state
            if self._on_transition is not None:
                self._on_transition(run.summary.model_copy(deep=True), previous)
        self._notify(run.id, NOTIFY_RUN, run.summary.model_dump(mode="json"))
        if self._telemetry is not None:
            try:
                self._telemetry.record_run(run.summary.model_copy(deep=True))
            except Exception:
                log.exception("telemetry record_run failed")
        if self._on_change is not None:
            self._on_change()

    def _announce(self, run: Run) -> None:
        """Record the run's new state in its history: what the events pane lists."""
        summary = run.summary
        now = time.time()
        run.note_state(now)  # the running clock as the state file will keep it
        self.record(
            run,
            RunStateEvent(
                state=summary.state,
                previous=run.announced_state,
                stage=summary.stage,
                error=summary.error,
                retries=summary.retries,
                max_retries=run.restart_policy().max_retries,
                running_time=running_seconds(summary, now),
            ),
        )

    def _vanished(self, run: Run) -> None:
        """The run directory was deleted under a run: fail it for good, keep serving.

        Nothing of the run can be persisted or resumed any more, so no retry; its
        worker (if any) is stopped, and every control verb keeps answering from
        the in-memory summary.
        """
        summary = run.summary
        reason = f"run directory vanished: {run.run_dir}"
        if summary.error != reason:
            log.error("run %s: %s", run.id, reason)
        summary.state = "failed"
        summary.error = reason
        summary.retry_at = None
        worker = self.workers.get(run.id)
        if worker is not None:
            self._intents.setdefault(run.id, "kill")
            self._kill_worker(run, worker, force=True)

    def record(self, run: Run, event: Event) -> None:
        """Stamp ``event`` with run and seq, store it, apply it, fan it out (typed throughout)."""
        stamped = event.model_copy(update={"run": run.id, "seq": run.next_seq()})
        run.append(encode(stamped))
        run.apply(stamped)
        self._notify(run.id, NOTIFY_EVENT, stamped.model_dump(mode="json", exclude_none=True))
        if self._telemetry is not None:
            try:
                self._telemetry.record_event(stamped)
            except Exception:
                log.exception("telemetry record_event failed")
        if isinstance(stamped, StateEvent):
            self._on_worker_state(run, stamped.state)

    def say(self, run: Run, level: Literal["INFO", "WARNING", "ERROR"], message: str) -> None:
        """A daemon-side log record in the run's own log stream (what users read)."""
        getattr(log, level.lower())("run %s: %s", run.id, message)
        self.record(run, LogEvent(level=level, logger=DAEMON_LOGGER, message=message))

    # -- submission and scheduling ----------------------------------------------------

    async def submit(self, params: SubmitParams, owner: Identity | None = None) -> RunSummary:
        """Queue a run of ``params.config_path``; with ``owner``, read and run as that user."""
        name = params.name
        if name is not None and not NAME_PATTERN.fullmatch(name):
            raise ProtocolError(
                ErrorCode.INVALID_PARAMS,
                f"name: {name!r} must be letters, digits, '_' or '-' (at most 63)",
            )
        for run_id in params.after:
            if self.registry.get(run_id) is None:
                raise ProtocolError(ErrorCode.UNKNOWN_RUN, f"after: no run {run_id!r}")
        config_path = params.config_path
        try:
            content = None if owner is None else await read_config_as(owner, Path(config_path))
            config, frozen = await asyncio.to_thread(_load_and_freeze, config_path, content)
        except ConfigError as exc:
            raise ProtocolError(ErrorCode.BAD_CONFIG, str(exc)) from None
        except ValidationError as exc:  # defensive: load_config phrases its own errors
            raise ProtocolError(ErrorCode.BAD_CONFIG, f"{config_path}: {exc}") from None
        try:
            run = self.registry.create(frozen, name or config.name, config_path)
        except OSError as exc:  # runs/ read-only, immutable, full: the daemon stays up
            where = exc.filename or self.registry.root
            raise ProtocolError(
                ErrorCode.INTERNAL_ERROR,
                f"cannot create a run directory in {self.registry.root}: "
                f"{exc.strerror or exc} ({where})",
            ) from None
        # What the frozen file holds, already parsed: a config of hundreds of datasets
        # (a glob's expansion) takes a while to parse, and the scheduler reads it on the loop.
        run.config = config
        summary = run.summary
        summary.priority = params.priority
        summary.after = list(dict.fromkeys(params.after))
        summary.start_at = params.start_at
        summary.labels = dict(params.labels)
        summary.state = run_queue.waiting_state(summary, time.time())
        if owner is not None:
            self._hand_over(run, owner)
        await self.broker.predict(run)
        log.info("run %s submitted from %s", run.id, config_path)
        self.publish(run)
        self.schedule()
        return run.summary

    def schedule(self) -> None:
        """Start queued runs, in :func:`run_queue.start_order`, while slots are free."""
        if self.shutting_down:
            return
        now = time.time()
        self._advance_queue(now)
        free = self.concurrency - len(self.workers) - len(self._starting)
        claimed = {
            claim: run_id
            for run_id in (*self.workers, *self._starting)
            if (claim := self._output_claim(self.get(run_id))) is not None
        }
        for run in run_queue.start_order(self.runs()):
            if run.id in self.held:
                continue  # (a run whose old worker is still being stopped must wait)
            retry_at = run.summary.retry_at
            if retry_at is not None and retry_at > now:
                self._set_waiting(run, None)  # its error says when the retry comes
                continue
            reason = run_queue.dependencies(run, self.registry.get).waiting
            claim = self._output_claim(run)
            if reason is None and claim is not None and claim in claimed:
                reason = self._wait_for_output(run, claimed[claim], claim)
            if reason is None and free <= 0:
                reason = f"waiting for a free slot (concurrency {self.concurrency})"
            for check in self.admission_checks if reason is None else ():
                reason = check(run)
                if reason is not None:
                    break
            if reason is not None:
                self._set_waiting(run, reason)
                continue
            free -= 1
            if claim is not None:
                claimed[claim] = run.id
            self._waiting_output.discard(run.id)
            run.summary.wait_reason = None
            self._starting.add(run.id)
            run.summary.state = "running"
            run.summary.wait_reason = None
            self.spawn_task(self._start(run))
        self._arm_wake(now)

    def _advance_queue(self, now: float) -> None:
        """Scheduled runs whose time came join the queue; broken dependencies fail runs.

        Runs are visited in submission order and a dependency is always older than
        its dependent, so a whole chain behind a failed run fails in one pass.
        """
        for run in self.runs():
            summary = run.summary
            if summary.state not in WAITING_STATES:
                continue
            failed = run_queue.dependencies(run, self.registry.get).failed
            if failed is not None:
                summary.state = "failed"
                summary.error = failed
                summary.wait_reason = None
                summary.finished = now
                self.say(run, "ERROR", failed)
                self.publish(run)
            elif summary.state == "scheduled" and run_queue.waiting_state(summary, now) == "queued":
                summary.state = "queued"
                self.say(run, "INFO", "its start time has come: queued")
                self.publish(run)

    def _set_waiting(self, run: Run, reason: str | None) -> None:
        """Say why a queued run does not start (published only when the reason changes)."""
        if run.summary.wait_reason != reason:
            run.summary.wait_reason = reason
            self.publish(run, save=False)

    def _arm_wake(self, now: float) -> None:
        if self._wake_timer is not None:
            self._wake_timer.cancel()
            self._wake_timer = None
        wake = run_queue.next_wake(self.runs(), now)
        if wake is not None:
            delay = max(0.0, wake - time.time())
            self._wake_timer = asyncio.get_running_loop().call_later(delay, self.schedule)

    def _memory_admission(self, run: Run) -> str | None:
        """The host memory broker's admission check: does the run's predicted peak fit?"""
        order = run_queue.start_order(self.runs())
        earlier = order[: order.index(run)] if run in order else []
        started = [self.get(run_id) for run_id in (*self.workers, *self._starting)]
        return self.broker.admit(run, started, earlier)

    def _hand_over(self, run: Run, owner: Identity) -> None:
        """Give the run directory to the submitting user, whose uid the worker runs as."""
        os.chmod(self.registry.root, TRAVERSE_ONLY_DIR)  # the user reaches, not lists, runs/
        run.work_dir.mkdir(exist_ok=True, mode=0o700)
        for path in (run.run_dir, run.work_dir, run.config_file):
            os.chown(path, owner.uid, owner.gid)
        run.summary.owner = {"uid": owner.uid, "gid": owner.gid, "groups": list(owner.groups)}
        self.registry.save(run)

    @staticmethod
    def _owner(run: Run) -> Identity | None:
        owner = run.summary.owner
        if owner is None:
            return None
        return Identity(owner["uid"], owner["gid"], tuple(owner.get("groups", ())))

    @staticmethod
    def _output_claim(run: Run) -> Path | None:
        """The output stem a run writes (``output_dir/export.name``): one writer at a time."""
        config = run.config
        return None if config is None else config.paths.output_dir / config.export.name

    def _wait_for_output(self, run: Run, holder: str, claim: Path) -> str:
        """Why a queued run is not starting: another run writes its outputs (logged once)."""
        reason = f"waiting for run {holder}, which writes the same output {claim}.*"
        if run.id not in self._waiting_output:
            self._waiting_output.add(run.id)
            self.say(run, "INFO", reason)
        return reason

    async def _start(self, run: Run) -> None:
        summary = run.summary
        # The first start only: a retry or a resume continues the same run, whose
        # running time (not this clock) says how long it has worked.
        if summary.started is None:
            summary.started = time.time()
        summary.finished = None
        summary.exit_code = None
        summary.retry_at = None
        summary.paused_hard = False
        summary.eta = None
        summary.wait_reason = None
        run.worker_state = None
        run.worker_reason = None
        argv = [
            *self.settings.worker_command,
            str(run.config_file),
            "--work-dir",
            str(run.work_dir),
        ]
        if summary.start_window is not None:
            argv += ["--start-window", str(summary.start_window)]
        oom = OomWatch(self.settings.oom)  # (the settings of now: SIGHUP may change them)
        self._oom_baseline[run.id] = (oom, oom.baseline())
        log_file: RotatingLog | None = None
        try:
            log_file = RotatingLog(
                run.log_path, self.settings.log_max_bytes, self.settings.log_backups
            )
            worker = await WorkerProcess.spawn(
                argv,
                cwd=run.run_dir,
                log=log_file,
                on_event=lambda line: self._event_line(run, line),
                on_stdout=lambda line: self._output_line(run, line, "INFO", "stdout"),
                on_stderr=lambda line: self._output_line(run, line, "WARNING", "stderr"),
                env=self._worker_env(),
                identity=self._owner(run),
            )
        except (OSError, ValueError) as exc:  # missing executable, disk full, bad argv
            if log_file is not None:
                log_file.close()
            self._starting.discard(run.id)
            self._pending.pop(run.id, None)
            killed = self._intents.pop(run.id, None) == "kill"
            summary.state = "killed" if killed else "failed"
            summary.error = (
                f"cannot start worker {argv[0]}: {getattr(exc, 'strerror', None) or exc}"
            )
            summary.finished = time.time()
            self.publish(run)
            self.schedule()
            return
        self._starting.discard(run.id)
        self.workers[run.id] = worker
        summary.pid = worker.pid
        summary.error = None
        self._exited[run.id] = asyncio.Event()
        log.info("run %s: worker %d started", run.id, worker.pid)
        self.publish(run)
        pending = self._pending.pop(run.id, None)
        if pending == "pause":
            self._pause_worker(run, worker)
        elif pending in ("kill", "force"):
            self._kill_worker(run, worker, force=pending == "force")
        self.spawn_task(self._sample(run, worker))
        try:
            code = await worker.wait()
        finally:
            log_file.close()
        self._on_exit(run, worker, code)

    def _worker_env(self) -> dict[str, str]:
        """Extra environment of a worker: the database its Postgres export writes to."""
        url = self.settings.database_url
        return {DATABASE_URL_ENV: url} if url else {}

    # -- worker output --------------------------------------------------------------

    def _event_line(self, run: Run, line: bytes) -> None:
        try:
            event = decode(line)
        except (ValidationError, ValueError):
            text = line.decode(errors="replace")
            self.say(run, "WARNING", f"undecodable event from the worker: {text[:200]}")
            return
        self.record(run, event)

    def _output_line(self, run: Run, line: bytes, level: str, stream: str) -> None:
        if line.startswith(b"{"):
            with contextlib.suppress(ValidationError, ValueError):
                self.record(run, decode(line))
                return
        text = line.decode(errors="replace").rstrip("\r")
        self.record(run, LogEvent(level=level, logger=f"worker.{stream}", message=text))

    def _on_worker_state(self, run: Run, state: str) -> None:
        summary = run.summary
        worker = self.workers.get(run.id)
        if state == "running" and worker is not None and self._pending.get(run.id) == "pause":
            del self._pending[run.id]
            worker.signal(signal.SIGUSR1)
        elif state == "paused" and summary.state == "running":
            self._cancel_timer(run, "pause")
            summary.state = "paused"
            self.publish(run)
        elif state == "resumed" and summary.state == "paused" and not summary.paused_hard:
            summary.state = "running"
            self.publish(run)

    async def _sample(self, run: Run, worker: WorkerProcess) -> None:
        """Memory of the worker's tree every ``telemetry.memory_interval`` until it exits."""
        interval = run.telemetry_config().memory_interval
        exited = self._exited[run.id]
        next_uss = 0.0
        while worker.running:
            with_uss = time.monotonic() >= next_uss
            if with_uss:
                next_uss = time.monotonic() + self.settings.uss_interval
            event = await asyncio.to_thread(sample_tree, worker.pid, run.summary.stage, with_uss)
            if event is not None and worker.running and self.workers.get(run.id) is worker:
                self.record(run, event)
                self.publish(run, save=False)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(exited.wait(), timeout=interval)

    # -- exit and restart policy ------------------------------------------------------

    def _on_exit(self, run: Run, worker: WorkerProcess, code: int) -> None:
        self.workers.pop(run.id, None)
        self._exited.pop(run.id, asyncio.Event()).set()
        for name in ("pause", "kill"):
            self._cancel_timer(run, name)
        summary = run.summary
        intent = self._intents.pop(run.id, None)
        was_paused = summary.state == "paused"
        summary.pid = None
        summary.rss = None
        summary.paused_hard = False
        summary.finished = time.time()
        summary.exit_code = code
        summary.eta = None
        summary.oom = False
        oom_watch = self._oom_baseline.pop(run.id, None)
        reason = run.worker_reason
        if not run.run_dir.is_dir():
            self._vanished(run)
        elif intent == "kill":
            summary.state = "killed"
        elif code == 0 and run.worker_state == "done":
            summary.state = "done"
            summary.progress = 1.0
            summary.stage = None
            summary.error = None
        elif intent == "shutdown":
            summary.state = "paused" if was_paused else "interrupted"
            summary.error = (
                None if was_paused else "the daemon stopped; resumes from its checkpoint"
            )
        elif code == 0 and run.worker_state == "stopped":
            summary.state = "interrupted"
            summary.error = "the worker was stopped by a signal the daemon did not send"
        elif code == WORKER_EXIT_INPUT:
            summary.state = "failed"
            summary.error = reason or "invalid config or input (worker exit 2)"
        elif code == -signal.SIGKILL and (oom := self._oom_evidence(run, worker, oom_watch)):
            self._failed(run, code, oom)
        else:
            self._failed(run, code, reason)
        log.info("run %s: worker %d exited %d → %s", run.id, worker.pid, code, summary.state)
        self.publish(run)
        self.spawn_task(self._measure_disk(run))
        run.close()  # the history file reopens on the next event; idle runs hold no fd
        self.schedule()

    def _oom_evidence(
        self, run: Run, worker: WorkerProcess, watch: tuple[OomWatch, int | None] | None
    ) -> str | None:
        """If the OOM killer ended the worker: mark the run ``oom``, halve its next window."""
        evidence = None if watch is None else watch[0].evidence(worker.pid, watch[1])
        if evidence is None:
            return None
        last = next(
            (e.window_size for e in reversed(run.memory) if e.window_size is not None),
            run.summary.start_window,
        )
        config = run.config
        if config is not None:
            step = config.memory.min_window
            last = last or config.resampling.window_size
            run.summary.start_window = max(step, last // 2 // step * step)
        run.summary.oom = True
        window = run.summary.start_window
        return f"oom: killed by the kernel's OOM killer ({evidence}); next window {window}"

    def shrink(self, run: Run) -> None:
        """Ask a running worker to halve its window (once its signal handlers exist)."""
        worker = self.workers.get(run.id)
        if worker is not None and run.worker_state is not None:
            worker.signal(SHRINK_SIGNAL)

    async def _measure_disk(self, run: Run) -> None:
        """Bytes the run directory holds now that its worker wrote its last."""
        run.summary.disk_used = await asyncio.to_thread(run_disk_used, run)
        self.publish(run)

    def _failed(self, run: Run, code: int, reason: str | None) -> None:
        summary = run.summary
        if code < 0:
            with contextlib.suppress(ValueError):
                reason = reason or f"worker killed by {signal.Signals(-code).name}"
        reason = reason or f"worker exited with code {code}"
        policy = run.restart_policy()
        summary.state = "failed"
        summary.error = reason
        if policy.policy != "on-failure" or summary.retries >= policy.max_retries:
            return
        delay = min(policy.backoff * 2**summary.retries, policy.max_backoff)
        summary.retries += 1
        summary.state = "queued"
        summary.retry_at = time.time() + delay
        summary.error = f"{reason}; retry {summary.retries}/{policy.max_retries} in {delay:g} s"
        self.say(run, "WARNING", summary.error)

    # -- control ------------------------------------------------------------------

    def _select(self, selection: Selection, states: frozenset[str]) -> list[Run]:
        if selection.run is not None:
            return [self.get(selection.run)]
        return [run for run in self.runs() if run.summary.state in states]

    def pause(self, selection: Selection) -> list[RunSummary]:
        changed = []
        for run in self._select(selection, frozenset({"running", *WAITING_STATES})):
            state = run.summary.state
            worker = self.workers.get(run.id)
            if state == "paused":
                pass  # already paused: pausing is idempotent
            elif state in WAITING_STATES:
                run.summary.state = "paused"
                run.summary.retry_at = None
                self.publish(run)
            elif state == "running" and worker is not None:
                self._pause_worker(run, worker)
            elif state == "running" and run.id in self._starting:
                self._pending[run.id] = "pause"
            else:
                raise _bad_state(run, "pause")
            changed.append(run.summary)
        return changed

    def _pause_worker(self, run: Run, worker: WorkerProcess) -> None:
        """SIGUSR1, once the worker said "running" (its handlers exist only from then on:
        an earlier SIGUSR1 would kill it); SIGSTOP if no acknowledgement within the grace."""
        if run.worker_state is None:
            self._pending[run.id] = "pause"
        else:
            worker.signal(signal.SIGUSR1)
        self._timer(run, "pause", self.settings.pause_grace, lambda: self._hard_pause(run, worker))

    def _hard_pause(self, run: Run, worker: WorkerProcess) -> None:
        self._timers.pop((run.id, "pause"), None)
        if self.workers.get(run.id) is not worker or run.summary.state != "running":
            return
        worker.signal_group(signal.SIGSTOP)
        run.summary.state = "paused"
        run.summary.paused_hard = True
        self.say(
            run,
            "WARNING",
            f"worker did not acknowledge the pause within {self.settings.pause_grace:g} s; "
            "stopped its process group (SIGSTOP): paused (hard)",
        )
        self.publish(run)

    def resume(self, selection: Selection) -> list[RunSummary]:
        changed = []
        for run in self._select(selection, frozenset({"paused", "running"})):
            summary = run.summary
            summary.paused_by = None  # resumed (by the user or the host guard): no longer held
            worker = self.workers.get(run.id)
            pause_pending = (run.id, "pause") in self._timers or run.id in self._pending
            if summary.state == "paused" and worker is not None:
                if run.worker_state is not None:
                    worker.signal(signal.SIGUSR2)
                if self._pending.get(run.id) == "pause":
                    del self._pending[run.id]
                if summary.paused_hard:
                    worker.signal_group(signal.SIGCONT)
                    summary.paused_hard = False
                summary.state = "running"
                self.publish(run)
            elif summary.state == "paused":
                summary.state = run_queue.waiting_state(summary, time.time())
                self.publish(run)
                self.schedule()
            elif summary.state == "running" and pause_pending:
                self._cancel_timer(run, "pause")
                if self._pending.get(run.id) == "pause":
                    del self._pending[run.id]
                if worker is not None and run.worker_state is not None:
                    worker.signal(signal.SIGUSR2)
            elif selection.run is not None and summary.state != "running":
                raise _bad_state(run, "resume")
            else:
                continue
            changed.append(summary)
        return changed

    def kill(self, selection: Selection, force: bool) -> list[RunSummary]:
        changed = []
        active = frozenset({"running", "paused", "stopping", *WAITING_STATES})
        for run in self._select(selection, active):
            summary = run.summary
            worker = self.workers.get(run.id)
            if worker is not None:
                self._intents[run.id] = "kill"
                summary.state = "stopping"
                self._kill_worker(run, worker, force)
                self.publish(run)
            elif run.id in self._starting:
                self._intents[run.id] = "kill"
                self._pending[run.id] = "force" if force else "kill"
                summary.state = "stopping"
                self.publish(run)
            elif summary.state in ("paused", "interrupted", *WAITING_STATES):
                summary.state = "killed"
                summary.retry_at = None
                summary.finished = time.time()
                self.publish(run)
            else:
                raise _bad_state(run, "kill")
            changed.append(summary)
        if changed:
            self.schedule()  # runs waiting for a killed one fail now
        return changed

    def _kill_worker(self, run: Run, worker: WorkerProcess, force: bool) -> None:
        self._cancel_timer(run, "pause")
        if force:
            worker.signal_group(signal.SIGKILL)
            return
        worker.signal(signal.SIGTERM)
        if run.summary.paused_hard:
            worker.signal_group(signal.SIGCONT)
        self._timer(run, "kill", self.settings.kill_grace, lambda: self._kill_now(run, worker))

    def _kill_now(self, run: Run, worker: WorkerProcess) -> None:
        self._timers.pop((run.id, "kill"), None)
        if worker.running:
            self.say(
                run,
                "WARNING",
                f"worker did not stop within {self.settings.kill_grace:g} s; killing its group",
            )
            worker.signal_group(signal.SIGKILL)

    def retry(self, run_id: str) -> RunSummary:
        run = self.get(run_id)
        if run.summary.state not in RETRYABLE_STATES:
            raise _bad_state(run, "retry")
        run.summary.state = run_queue.waiting_state(run.summary, time.time())
        run.summary.retries = 0  # a manual retry gives the restart policy a fresh budget
        run.summary.retry_at = None
        run.summary.error = None
        run.summary.exit_code = None
        self.publish(run)
        self.schedule()
        return run.summary

    def set_priority(self, run_id: str, priority: int) -> RunSummary:
        """A run's new priority: the queue reorders (a running run keeps its slot)."""
        run = self.get(run_id)
        if run.summary.state in FINAL_STATES:
            raise _bad_state(run, "change the priority of")
        run.summary.priority = priority
        log.info("run %s: priority %d", run.id, priority)
        self.publish(run)
        self.schedule()
        return run.summary

    def set_concurrency(self, concurrency: int) -> QueueSettings:
        """``geod parallel N``: persisted; more slots start queued runs now, fewer let
        running ones finish (none is stopped to make room)."""
        self.queue_state.set_concurrency(concurrency)
        log.info("concurrency %d (geod parallel)", concurrency)
        self.schedule()
        if self._on_change is not None:
            self._on_change()
        return QueueSettings(
            concurrency=self.concurrency, settings_concurrency=self.settings.concurrency
        )

    # -- shutdown ---------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop every worker at a checkpoint (SIGKILL after ``kill_grace``) and wait."""
        self.shutting_down = True
        if self._wake_timer is not None:
            self._wake_timer.cancel()
        waits = []
        for run_id, worker in list(self.workers.items()):
            run = self.get(run_id)
            self._intents.setdefault(run_id, "shutdown")
            self._kill_worker(run, worker, force=False)
            waits.append(self._exited[run_id].wait())
        if waits:
            log.info("stopping %d worker(s) at their next checkpoint", len(waits))
            await asyncio.gather(*waits)
        # Workers still being spawned: let their start finish and exit.
        while self._starting or self.workers:
            await asyncio.sleep(0.05)
            for run_id, worker in list(self.workers.items()):
                if run_id not in self._intents:
                    self._intents[run_id] = "shutdown"
                    self._kill_worker(self.get(run_id), worker, force=False)
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for run in self.runs():
            counts[run.summary.state] = counts.get(run.summary.state, 0) + 1
        return counts


def _tidy_reasons(run: Run) -> None:
    """A wait reason belongs to a waiting run only; a pause mark to an unfinished one."""
    summary = run.summary
    if summary.state in FINAL_STATES or summary.state in ("interrupted", "stopping"):
        summary.paused_by = None
    if summary.state != "queued" and summary.paused_by is None:
        summary.wait_reason = None
