"""Hooks: a command or a webhook run when a run enters a state (``hooks:`` in ``geod.yml``).

::

    hooks:
      - on: [done, failed]
        command: [notify-send, geod, "run finished"]
      - on: [failed, killed]
        url: http://127.0.0.1:8080/geod

A **command** is an argv list, run without a shell (nothing in a run's name or
error can be interpreted), in its own session so a timeout kills all it
started, with stdin closed and the environment of the daemon plus the run's
facts (:data:`HOOK_ENV` lists the names). Its output goes to the daemon's log,
one line at a time. A **webhook** receives a JSON ``POST``: ``{"event": STATE,
"previous_state": ..., "run": RUN_SUMMARY}``; a network error, a timeout or a
5xx answer is retried (``retries`` times, ``retry_delay`` seconds apart), a 4xx
answer is not (the receiver refused the request; sending it again changes nothing).

Hooks run in the daemon's hook threads, never on its event loop: a slow or
hanging hook never delays the socket or a run, and whatever a hook does (fail,
time out, not exist) is logged and changes nothing else. Hooks fire on a state
*change* only, so a daemon restart does not repeat them. ``on`` accepts every
run state; YAML 1.1 reads a bare ``on`` key as ``true``, which is taken back here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.contract import RunState
from supervisor.progress import running_seconds
from supervisor.protocol import RunSummary

log = logging.getLogger("geod.daemon.hooks")

#: Environment variables a hook command gets (besides the daemon's own environment).
HOOK_ENV: dict[str, str] = {
    "GEOD_RUN_ID": "the run id (r0001)",
    "GEOD_RUN_NAME": "the run's name",
    "GEOD_STATE": "the state the run entered (the hook's event)",
    "GEOD_PREVIOUS_STATE": "the state it left (empty for a new run)",
    "GEOD_EXIT_CODE": "the worker's exit code (empty if no worker exited)",
    "GEOD_ERROR": "the run's error line (empty if none)",
    "GEOD_CONFIG": "the config path it was submitted from",
    "GEOD_RUN_DIR": "its run directory (frozen config, events, worker.log)",
    "GEOD_OUTPUTS": "its output paths, one per line",
    "GEOD_DURATION": "its running seconds, pauses excluded (empty if it never ran)",
    "GEOD_LABELS": "its labels as a JSON object",
}
#: Bytes of a hook command's output copied to the daemon log; the rest is dropped (and said).
OUTPUT_LOG_LIMIT = 64 * 1024
#: HTTP statuses worth retrying although < 500: request timeout, too many requests.
_RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


class HookConfig(BaseModel):
    """One entry of ``hooks:``: when (``on``) and what (``command`` or ``url``)."""

    model_config = ConfigDict(extra="forbid")

    on: list[RunState] = Field(min_length=1, description="Run states that fire the hook.")
    command: list[str] | None = Field(
        default=None, min_length=1, description="argv of a program, run without a shell."
    )
    url: str | None = Field(default=None, description="http(s) URL that receives a JSON POST.")
    timeout: float = Field(
        default=30.0, gt=0, description="Seconds a command or one HTTP attempt may take."
    )
    retries: int = Field(default=2, ge=0, description="Further webhook attempts after a failure.")
    retry_delay: float = Field(default=5.0, ge=0, description="Seconds between webhook attempts.")

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        """``on:`` unquoted is the boolean ``true`` to YAML 1.1: it means the key ``on``."""
        if isinstance(data, dict) and True in data and "on" not in data:
            data = dict(data)
            data["on"] = data.pop(True)
        return data

    @model_validator(mode="after")
    def _one_action(self) -> HookConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either command or url")
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"url {self.url!r} is not an http:// or https:// URL")
        return self

    def describe(self, index: int) -> str:
        """How the log names this hook: its position and what it runs."""
        target = self.url if self.url is not None else " ".join(self.command or ())
        return f"hook {index + 1} ({target})"


def hook_environment(summary: RunSummary, previous: str | None) -> dict[str, str]:
    """The ``GEOD_*`` variables of :data:`HOOK_ENV` for one run's state change."""
    duration = running_seconds(summary, time.time())
    values = {
        "GEOD_RUN_ID": summary.id,
        "GEOD_RUN_NAME": summary.name,
        "GEOD_STATE": summary.state,
        "GEOD_PREVIOUS_STATE": previous or "",
        "GEOD_EXIT_CODE": "" if summary.exit_code is None else str(summary.exit_code),
        "GEOD_ERROR": summary.error or "",
        "GEOD_CONFIG": summary.config_path or "",
        "GEOD_RUN_DIR": summary.run_dir or "",
        "GEOD_OUTPUTS": "\n".join(str(output.get("path", "")) for output in summary.outputs),
        "GEOD_DURATION": "" if duration is None else f"{duration:.1f}",
        "GEOD_LABELS": json.dumps(summary.labels, sort_keys=True),
    }
    return values


def webhook_body(summary: RunSummary, previous: str | None) -> bytes:
    """What a webhook receives: the event, the state left, the whole run summary."""
    body = {
        "event": summary.state,
        "previous_state": previous,
        "run": summary.model_dump(mode="json"),
    }
    return json.dumps(body, sort_keys=True).encode()


class HookRunner:
    """Runs the configured hooks off the event loop, in a small pool of threads."""

    def __init__(self, hooks: Iterable[HookConfig], workers: int) -> None:
        self.hooks = list(hooks)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="geod-hook")

    def configure(self, hooks: Iterable[HookConfig]) -> None:
        """New hooks (SIGHUP); hooks already running finish as they were."""
        self.hooks = list(hooks)

    def fire(self, summary: RunSummary, previous: str | None) -> None:
        """Queue every hook for ``summary.state``; returns at once, never raises."""
        for index, hook in enumerate(self.hooks):
            if summary.state in hook.on:
                try:
                    self._executor.submit(self._run, index, hook, summary, previous)
                except RuntimeError:  # the daemon is stopping: the pool takes no more
                    name = hook.describe(index)
                    log.warning("%s for %s not run: the daemon is stopping", name, summary.id)

    def close(self) -> None:
        """Wait for running and queued hooks (each bounded by its timeout and retries)."""
        self._executor.shutdown(wait=True)

    # -- in a hook thread ---------------------------------------------------------------

    def _run(self, index: int, hook: HookConfig, summary: RunSummary, previous: str | None) -> None:
        name = f"{hook.describe(index)} for {summary.id} {summary.state}"
        try:
            if hook.command is not None:
                run_command(name, hook.command, hook.timeout, hook_environment(summary, previous))
            else:
                assert hook.url is not None
                post_webhook(name, hook, webhook_body(summary, previous))
        except Exception:  # a hook's failure is logged, never the daemon's
            log.exception("%s: failed", name)


def run_command(name: str, argv: list[str], timeout: float, extra_env: dict[str, str]) -> None:
    """Run ``argv`` with ``extra_env``; its output to the log; killed (group) after ``timeout``."""
    env = {**os.environ, **extra_env}
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        log.warning("%s: cannot start %s: %s", name, argv[0], exc.strerror or exc)
        return
    timed_out = False
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
    _log_output(name, output)
    if timed_out:
        log.warning("%s: still running after %g s; killed", name, timeout)
    elif process.returncode != 0:
        log.warning("%s: exited with code %d", name, process.returncode)
    else:
        log.info("%s: ok", name)


def _log_output(name: str, output: bytes) -> None:
    text = output[:OUTPUT_LOG_LIMIT].decode(errors="replace")
    for line in text.splitlines():
        log.info("%s: %s", name, line)
    if len(output) > OUTPUT_LOG_LIMIT:
        log.info("%s: (%d more bytes of output not logged)", name, len(output) - OUTPUT_LOG_LIMIT)


def post_webhook(name: str, hook: HookConfig, body: bytes) -> None:
    """POST ``body`` to ``hook.url``; retry network errors, timeouts and 5xx answers."""
    assert hook.url is not None
    attempts = hook.retries + 1
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(
            hook.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "geod"},
        )
        try:
            with urllib.request.urlopen(request, timeout=hook.timeout) as response:
                log.info("%s: HTTP %d", name, response.status)
                return
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code} {exc.reason}"
            if exc.code < 500 and exc.code not in _RETRYABLE_CLIENT_ERRORS:
                log.warning("%s: %s; not retried", name, problem)
                return
        except (urllib.error.URLError, OSError) as exc:  # refused, unreachable, timed out
            problem = str(getattr(exc, "reason", None) or exc)
        if attempt < attempts:
            log.warning("%s: %s; attempt %d/%d", name, problem, attempt, attempts)
            time.sleep(hook.retry_delay)
        else:
            log.warning("%s: %s; gave up after %d attempts", name, problem, attempts)
