"""The daemon's own settings (not a run's config): where it keeps state, its socket, its limits.

A user daemon and the system service differ only in their defaults:

================  ==========================================  ========================
setting           user (``geod serve``)                       system (``--system``)
================  ==========================================  ========================
state_dir         ``$XDG_STATE_HOME/geod`` or                 ``/var/lib/geod``
                  ``~/.local/state/geod``
socket_path       ``$XDG_RUNTIME_DIR/geod/geod.sock``, else   ``/run/geod/geod.sock``
                  ``state_dir/geod.sock``
settings file     ``$XDG_CONFIG_HOME/geod/geod.yml`` or       ``/etc/geod/geod.yml``
                  ``~/.config/geod/geod.yml``
================  ==========================================  ========================

The settings file is optional YAML with the field names below; unknown keys are
errors with a "did you mean" hint. The environment overrides the file:
``GEOD_STATE_DIR``, ``GEOD_SOCKET`` and ``GEOD_DATABASE_URL`` (so tests and
systemd drop-ins need no file). Every problem is reported as one line naming the
file and key, because the daemon is started from a terminal or a unit file, not
from a debugger.
"""

from __future__ import annotations

import difflib
import grp
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import psutil
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from pipeline.config import Size, read_yaml
from pipeline.contract import DATABASE_URL_ENV, SOCKET_ENV, STATE_DIR_ENV, LogLevel
from supervisor.hooks import HookConfig
from supervisor.watch_rules import WatchSettings

SYSTEM_STATE_DIR = Path("/var/lib/geod")
SYSTEM_SOCKET = Path("/run/geod/geod.sock")
SYSTEM_SETTINGS_FILE = Path("/etc/geod/geod.yml")
SOCKET_NAME = "geod.sock"


class SettingsError(ValueError):
    """A settings problem, phrased as one line for the user."""


def _xdg(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable)
    # The XDG spec says relative values are invalid and must be ignored.
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / fallback


def default_state_dir() -> Path:
    """``$GEOD_STATE_DIR``, else ``$XDG_STATE_HOME/geod``, else ``~/.local/state/geod``."""
    override = os.environ.get(STATE_DIR_ENV)
    if override:
        return Path(override)
    return _xdg("XDG_STATE_HOME", ".local/state") / "geod"


def default_socket_path() -> Path:
    """``$GEOD_SOCKET``, else ``$XDG_RUNTIME_DIR/geod/geod.sock``, else in the state dir.

    ``$XDG_RUNTIME_DIR`` is per-user, tmpfs and removed at logout, which is
    where a socket belongs; without it (cron, su) the state directory is the
    only per-user place we know of.
    """
    override = os.environ.get(SOCKET_ENV)
    if override:
        return Path(override)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return Path(runtime) / "geod" / SOCKET_NAME
    return default_state_dir() / SOCKET_NAME


def default_settings_file(system: bool = False) -> Path:
    if system:
        return SYSTEM_SETTINGS_FILE
    return _xdg("XDG_CONFIG_HOME", ".config") / "geod" / "geod.yml"


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"([0-9]*\.?[0-9]+)\s*([smhdw]?)")


def parse_duration(value: Any) -> float:
    """``30m``, ``12h``, ``7d``, ``1w`` or plain seconds → seconds (a positive float)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30m, 12h or 7d")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value).strip().lower())
        if match is None:
            raise ValueError(f"{str(value)[:40]!r} is not a duration such as 30m, 12h or 7d")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def size_bytes(size: int | float, total: int) -> int:
    """A parsed :data:`~pipeline.config.Size` in bytes: a fraction (≤ 1) is taken of ``total``."""
    if isinstance(size, float) and size <= 1.0:
        return int(total * size)
    return int(size)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PressureSettings(_Section):
    """When the host counts as under memory pressure, and where that is read."""

    available_below: Size = Field(
        default=0.05,
        description="Pressure when MemAvailable falls below this (bytes, '2GiB' or '5%' of RAM).",
    )
    psi_some_above: float = Field(
        default=20.0,
        ge=0,
        le=100,
        description="Pressure when PSI 'some avg10' (percent of time stalled) exceeds this.",
    )
    interval: float = Field(default=2.0, gt=0, description="Seconds between pressure readings.")
    calm_checks: int = Field(
        default=3,
        ge=1,
        description="Readings in a row without pressure before a paused run is resumed.",
    )
    psi_file: Path = Field(
        default=Path("/proc/pressure/memory"),
        description="PSI file (absent on kernels without PSI: then MemAvailable alone counts).",
    )
    meminfo_file: Path = Field(
        default=Path("/proc/meminfo"), description="Where MemAvailable is read from."
    )


class OomSettings(_Section):
    """Where the kernel's OOM kills are read, to tell an OOM kill from any other SIGKILL."""

    memory_events: Path | None = Field(
        default=None,
        description="cgroup file with an 'oom_kill N' line (v2 memory.events or v1 "
        "memory.oom_control); None = the daemon's own cgroup's, found in /proc/self/cgroup.",
    )
    kmsg: Path = Field(
        default=Path("/dev/kmsg"),
        description="Kernel log searched for the OOM record naming the worker's pid.",
    )


class DiskSettings(_Section):
    """Free space a run needs in its work and output directories to keep running."""

    min_free: Size = Field(
        default=1024**3,
        description="A run pauses when its work or output directory has less free space "
        "(bytes, '5GiB' or '2%' of the filesystem); it resumes when space returns. 0: never.",
    )
    interval: float = Field(default=10.0, gt=0, description="Seconds between free-space checks.")
    probe_file: Path | None = Field(
        default=None,
        description="For tests and drills: a file holding a size ('300MiB') that stands in "
        "for the free space of every watched directory while it exists.",
    )


def _default_worker_command() -> list[str]:
    return [sys.executable, "-m", "pipeline.worker"]


class Settings(WatchSettings):
    """Everything the daemon itself is configured by, with its documented default.

    The ``watch:`` folders and ``reload_debounce`` are documented in
    :mod:`supervisor.watch_rules`.
    """

    model_config = ConfigDict(extra="forbid")

    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="Run registry, run directories, lock, daemon log.",
    )
    socket_path: Path = Field(
        default=None,  # type: ignore[assignment]  # filled from state_dir below
        validate_default=False,
        description="The JSON-RPC Unix socket (see the module table for the default).",
    )
    socket_group: str | None = Field(
        default=None,
        description="Group allowed to connect: the socket becomes 0660 owned by it (else 0600).",
    )
    concurrency: int = Field(
        default=2,
        ge=1,
        description="Runs executing at once; others queue (`geod parallel N` overrides it "
        "until this value changes).",
    )
    pause_grace: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a worker has to acknowledge a pause before SIGSTOP.",
    )
    kill_grace: float = Field(
        default=30.0,
        gt=0,
        description="Seconds between SIGTERM (checkpoint and exit) and SIGKILL of the group.",
    )
    log_max_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024, description="Rotate a run's worker.log at this size."
    )
    log_backups: int = Field(default=3, ge=0, description="Rotated worker.log.N files kept.")
    log_level: LogLevel = Field(default="INFO", description="The daemon's own log level.")
    database_url: str | None = Field(
        default=None,
        description="Telemetry PostgreSQL; None = embedded server ($GEOD_DATABASE_URL overrides).",
    )
    telemetry: bool = Field(default=True, description="Record runs and events in PostgreSQL.")
    memory_history: int = Field(
        default=3600,
        ge=1,
        description="Memory samples kept per run for memory.history (1 h at 1 s).",
    )
    uss_interval: float = Field(
        default=10.0,
        gt=0,
        description="Seconds between USS readings of a worker tree (RSS is read every "
        "memory_interval); USS walks page tables: ~10 ms of daemon CPU per 500 MB.",
    )
    event_history: int = Field(
        default=2000,
        ge=0,
        description="Recent events per run kept in memory for logs.tail (older ones: file).",
    )
    client_queue_limit: int = Field(
        default=10_000,
        ge=1,
        description="Messages queued for one client before it is dropped as too slow.",
    )
    worker_command: list[str] = Field(
        default_factory=_default_worker_command,
        min_length=1,
        description="argv prefix of a worker; the daemon appends CONFIG --work-dir DIR.",
    )
    host_memory: Size = Field(
        default=0.8,
        description="Memory the running workers may share, by their predicted peaks "
        "(bytes, '16GiB', or '80%' of RAM): a queued run starts only if its peak fits.",
    )
    pressure: PressureSettings = Field(default_factory=PressureSettings)
    oom: OomSettings = Field(default_factory=OomSettings)
    disk: DiskSettings = Field(default_factory=DiskSettings)
    retention: Duration | None = Field(
        default=None,
        description="Clean finished runs (layer stores, work files) this long after they "
        "ended ('7d'); None keeps them until `geod clean`.",
    )
    retention_interval: Duration = Field(
        default=86400.0, description="Seconds between retention passes (daily)."
    )

    hooks: list[HookConfig] = Field(
        default_factory=list,
        description="Commands or webhooks run when a run enters a state (supervisor/hooks.py).",
    )
    hook_workers: int = Field(
        default=4,
        ge=1,
        description="Hooks running at once; further ones wait their turn (restart to change).",
    )

    _source: Path | None = PrivateAttr(default=None)
    _system: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        if self.socket_path is None:
            runtime = os.environ.get("XDG_RUNTIME_DIR")
            if runtime and os.path.isabs(runtime):
                self.socket_path = Path(runtime) / "geod" / SOCKET_NAME
            else:
                self.socket_path = self.state_dir / SOCKET_NAME
        if self.socket_group is not None:
            try:
                grp.getgrnam(self.socket_group)
            except KeyError:
                raise ValueError(f"socket_group: no group named {self.socket_group!r}") from None
        return self

    def host_memory_bytes(self) -> int:
        """The host budget in bytes (a percentage is of total physical memory)."""
        return size_bytes(self.host_memory, psutil.virtual_memory().total)

    def reload(self) -> Settings:
        """Read the same file and environment again (the daemon's SIGHUP)."""
        return load_settings(self._source, system=self._system)

    @property
    def source_file(self) -> Path:
        """The settings file read (or that would be read: the default one is optional)."""
        return self._source or default_settings_file(self._system)


def _describe(error: dict[str, Any]) -> str:
    path = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        key = str(error["loc"][-1])
        known = HookConfig.model_fields if error["loc"][0] == "hooks" else Settings.model_fields
        hint = difflib.get_close_matches(key, list(known), n=1)
        suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"{path}: unknown setting{suffix}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{path}: {message}" if path else message


def _read_file(path: Path) -> dict[str, Any]:
    data = read_yaml(path, SettingsError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a mapping of settings at the top level")
    return data


def load_settings(path: Path | None = None, system: bool = False) -> Settings:
    """Settings from ``path`` (or the default file, if it exists), then the environment.

    An explicitly given file must exist; the default one is optional. Raises
    :class:`SettingsError` with one line naming the file and key.
    """
    source = path if path is not None else default_settings_file(system)
    data: dict[str, Any] = {}
    if path is not None and not path.exists():
        raise SettingsError(f"{path}: settings file not found")
    if source.exists():
        data = _read_file(source)
    if system:
        data.setdefault("state_dir", str(SYSTEM_STATE_DIR))
        data.setdefault("socket_path", str(SYSTEM_SOCKET))
    for env, key in (
        (STATE_DIR_ENV, "state_dir"),
        (SOCKET_ENV, "socket_path"),
        (DATABASE_URL_ENV, "database_url"),
    ):
        if os.environ.get(env):
            data[key] = os.environ[env]
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        where = source if source.exists() else "settings"
        raise SettingsError("; ".join(f"{where}: {_describe(e)}" for e in exc.errors())) from None
    settings.watch = [rule.resolved(source.resolve().parent) for rule in settings.watch]
    settings._source = path
    settings._system = system
    return settings
