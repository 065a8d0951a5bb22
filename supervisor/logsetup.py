"""Logging of the daemon process: to stderr, formatted for where stderr goes.

Under systemd, stderr is a journald stream (``$JOURNAL_STREAM`` names it): the
journal adds timestamps itself and understands sd-daemon(3) ``<N>`` priority
prefixes, so ``journalctl -p warning -u geod`` filters properly. Anywhere else
(``geod start``'s log file, a terminal running ``geod serve``) lines carry their
own timestamp.
"""

from __future__ import annotations

import logging
import os
import sys

JOURNAL_STREAM_ENV = "JOURNAL_STREAM"
#: sd-daemon(3) syslog priorities by Python level (higher levels map to the first match).
_JOURNAL_PRIORITIES: tuple[tuple[int, int], ...] = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
    (logging.DEBUG, 7),
)
PLAIN_FORMAT = "%(asctime)s %(levelname)-8s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"


class JournalFormatter(logging.Formatter):
    """Prefix each line with ``<priority>`` so journald records the level."""

    def format(self, record: logging.LogRecord) -> str:
        priority = next((prio for level, prio in _JOURNAL_PRIORITIES if record.levelno >= level), 7)
        return f"<{priority}>{super().format(record)}"


def stderr_is_journal() -> bool:
    """True if stderr is the journald stream systemd connected (``device:inode`` match)."""
    stream = os.environ.get(JOURNAL_STREAM_ENV)
    if not stream:
        return False
    try:
        device, inode = (int(part) for part in stream.split(":"))
        stat = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


def configure_logging(level: str) -> None:
    """Root logger → stderr at ``level`` (a name like ``INFO``); replaces earlier handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JournalFormatter(JOURNAL_FORMAT) if stderr_is_journal() else logging.Formatter(PLAIN_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
