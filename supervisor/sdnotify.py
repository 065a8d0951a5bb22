"""sd_notify(3) and sd_watchdog_enabled(3) in a few lines of standard library.

systemd's notify protocol is one datagram of newline-separated ``KEY=value``
assignments sent to the AF_UNIX socket named by ``$NOTIFY_SOCKET``. Writing it
here avoids a dependency on libsystemd bindings (which need a C toolchain) for
what is a single ``sendto``. A name starting with ``@`` is a Linux
abstract-namespace socket, as sd_notify documents.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a cheap no-op returning
False, so the daemon calls ``notify`` unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"
#: sd_watchdog_enabled(3): "it is recommended that a daemon sends a keep-alive
#: notification message to the service manager every half of the time returned".
WATCHDOG_PING_FRACTION = 0.5
_USEC_PER_SECOND = 1_000_000


def _address(name: str) -> str | bytes | None:
    """The sockaddr for ``$NOTIFY_SOCKET``, or None if it is not an AF_UNIX name we can use."""
    if name.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of the '@', no terminating NUL.
        return b"\0" + name[1:].encode()
    if name.startswith("/"):
        return name
    # Other forms (e.g. systemd ≥ 254's "vsock:CID:PORT") are for VMs, not for this daemon.
    log.warning("%s=%r is not an AF_UNIX socket path; not notifying", NOTIFY_SOCKET_ENV, name)
    return None


def notify(**fields: str) -> bool:
    """Send ``KEY=value`` assignments (e.g. ``READY="1"``, ``STATUS="2 running"``) to systemd.

    Returns True if the datagram was sent, False when not started by systemd with
    ``Type=notify`` (no ``$NOTIFY_SOCKET``) or when sending failed — a supervisor
    must keep running even if its service manager went away, so a send error is
    logged, not raised. A value containing a newline raises ValueError: it would
    silently turn into a second, unintended assignment.
    """
    if not fields:
        raise ValueError("notify() needs at least one KEY=value field")
    for key, value in fields.items():
        if "\n" in value:
            raise ValueError(f"sd_notify field {key} must be one line, got {value!r}")
    name = os.environ.get(NOTIFY_SOCKET_ENV)
    if not name:
        return False
    address = _address(name)
    if address is None:
        return False
    payload = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(payload, address)
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", name, exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings, or None when no watchdog applies to this process.

    Follows sd_watchdog_enabled(3): ``$WATCHDOG_USEC`` is the timeout set by
    ``WatchdogSec=``; if ``$WATCHDOG_PID`` is set it must be our pid (the
    variables leak into children otherwise). We ping at half the timeout, as
    that man page recommends. Malformed values mean "no watchdog" (logged),
    like libsystemd's -EINVAL.
    """
    raw_usec = os.environ.get(WATCHDOG_USEC_ENV)
    if not raw_usec:
        return None
    raw_pid = os.environ.get(WATCHDOG_PID_ENV)
    try:
        usec = int(raw_usec)
        pid = int(raw_pid) if raw_pid else None
    except ValueError:
        log.warning(
            "ignoring malformed %s=%r / %s=%r",
            WATCHDOG_USEC_ENV,
            raw_usec,
            WATCHDOG_PID_ENV,
            raw_pid,
        )
        return None
    if usec <= 0 or (pid is not None and pid != os.getpid()):
        return None
    return usec * WATCHDOG_PING_FRACTION / _USEC_PER_SECOND
