"""Is the host short of memory? ``MemAvailable`` and PSI, read from their files.

Two signals, either is enough: available memory below ``pressure.available_below``
(``/proc/meminfo``), or the share of time tasks stalled on memory over the last
10 s (PSI ``some avg10`` in ``/proc/pressure/memory``, kernels ≥ 4.20) above
``pressure.psi_some_above``. Both paths are settings, so a drill or a test can
point them at files it writes; a missing PSI file just means no PSI.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.memory import format_bytes
from supervisor.settings import PressureSettings, size_bytes

_KIB = 1024
_MEMINFO_LINE = re.compile(r"^(\w+):\s+(\d+)(?:\s+kB)?$", re.MULTILINE)
_PSI_SOME = re.compile(r"^some\s+avg10=([0-9.]+)", re.MULTILINE)


@dataclass(frozen=True)
class PressureReading:
    """One reading; None where the source is missing or unreadable."""

    total: int | None
    available: int | None
    psi_some_avg10: float | None


def read_meminfo(path: Path) -> dict[str, int]:
    """``/proc/meminfo`` as bytes per key (kB values converted)."""
    with contextlib.suppress(OSError):
        text = path.read_text()
        return {key: int(value) * _KIB for key, value in _MEMINFO_LINE.findall(text)}
    return {}


def read_psi_some(path: Path) -> float | None:
    """``some avg10`` of a PSI file, or None without one."""
    with contextlib.suppress(OSError):
        match = _PSI_SOME.search(path.read_text())
        return float(match.group(1)) if match else None
    return None


def read_pressure(settings: PressureSettings) -> PressureReading:
    info = read_meminfo(settings.meminfo_file)
    return PressureReading(
        info.get("MemTotal"), info.get("MemAvailable"), read_psi_some(settings.psi_file)
    )


def pressure_reason(reading: PressureReading, settings: PressureSettings) -> str | None:
    """Why the host counts as under memory pressure (one phrase), or None."""
    if reading.available is not None and reading.total:
        floor = size_bytes(settings.available_below, reading.total)
        if reading.available < floor:
            return f"MemAvailable {format_bytes(reading.available)} below {format_bytes(floor)}"
    some = reading.psi_some_avg10
    if some is not None and some > settings.psi_some_above:
        return f"PSI some avg10 {some:g} % above {settings.psi_some_above:g} %"
    return None
