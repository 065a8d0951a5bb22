"""Python logging → structured LogEvents, so every log record reaches the daemon typed.

Pipeline code logs with the standard ``logging`` module and passes ``stage`` and
``dataset`` through ``extra=``; this handler turns each record into a
:class:`~pipeline.events.LogEvent`. Other ``extra`` keys that are JSON-safe
travel in ``LogEvent.extra``.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.contract import LOG_LEVELS
from pipeline.events import EventSink, LogEvent

#: Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "stage",
    "dataset",
}


def _json_safe(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | type(None))


class EventLogHandler(logging.Handler):
    """Emit each record as a LogEvent on ``sink``."""

    def __init__(self, sink: EventSink, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[0] is not None:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            extra = {
                key: value
                for key, value in vars(record).items()
                if key not in _STANDARD_ATTRS and _json_safe(value)
            }
            level = record.levelname if record.levelname in LOG_LEVELS else "INFO"
            self._sink.emit(
                LogEvent(
                    level=level,
                    logger=record.name,
                    message=message,
                    stage=getattr(record, "stage", None),
                    dataset=getattr(record, "dataset", None),
                    extra=extra,
                )
            )
        except Exception:  # a log line must never take the worker down
            self.handleError(record)


def install(sink: EventSink, level: int = logging.INFO) -> None:
    """Route the ``geod`` logger hierarchy (and warnings) to ``sink``."""
    root = logging.getLogger("geod")
    root.setLevel(level)
    root.addHandler(EventLogHandler(sink, level))
    root.propagate = False
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").addHandler(EventLogHandler(sink, logging.WARNING))
