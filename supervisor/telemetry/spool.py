"""Append-only spool of telemetry records kept while PostgreSQL is unreachable.

One record per line: ``e<TAB>event JSON`` or ``r<TAB>revision<TAB>summary JSON``
(JSON never contains a raw tab or newline). Batches are appended and fsync'd as
the writer hands them over, so a daemon killed during an outage loses nothing
already spooled; the next writer replays the file and truncates it once
everything is committed. Order does not matter for correctness: event rows are
keyed by (run, seq), stage rows keep the highest seq and run rows the highest
writer revision, so a record that overtook another (a caller spilling while the
queue was full) or a replay that repeats rows leaves the same tables. A torn
last line (power cut mid write) is cut off when the spool is opened.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.durable import cut_torn_tail
from pipeline.events import decode, encode
from supervisor.protocol import RunSummary

log = logging.getLogger("geod.telemetry")

SPOOL_NAME = "telemetry.spool"

#: A record as the writer handles it: an event, or a run summary with its revision.
Record = tuple[str, Any] | tuple[str, int, Any]


def encode_record(record: Record) -> bytes:
    if record[0] == "e":
        return b"e\t" + encode(record[1]).encode() + b"\n"
    return b"r\t%d\t" % record[1] + record[2].model_dump_json().encode() + b"\n"


def decode_record(line: bytes) -> Record:
    """Inverse of :func:`encode_record` (raises ValueError on a malformed line)."""
    kind, _, body = line.rstrip(b"\n").partition(b"\t")
    if kind == b"e":
        return ("e", decode(body))
    if kind == b"r":
        rev, _, summary = body.partition(b"\t")
        return ("r", int(rev), RunSummary.model_validate_json(summary))
    raise ValueError(f"unknown spool record kind {kind[:10]!r}")


def _drop_torn_tail(path: Path) -> None:
    """Cut a half-written last line left by a crash, so new appends start on a fresh line."""
    if cut_torn_tail(path):
        log.warning("telemetry spool %s: dropped a torn last line", path)


class Spool:
    """The spool file plus the replay position already committed to the database.

    Thread-safe: the writer thread appends and replays, and a caller whose
    queue is full appends directly (that path never waits for the database).
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / SPOOL_NAME
        _drop_torn_tail(self.path)
        self._lock = threading.Lock()
        self._file: BinaryIO = open(self.path, "ab")  # noqa: SIM115 (kept open for appends)
        self._dirty = False
        #: Bytes at the start of the file already committed to the database.
        self.replayed = 0

    def append(self, records: list[Record], sync: bool = True) -> None:
        if not records:
            return
        data = b"".join(encode_record(r) for r in records)
        with self._lock:
            self._file.write(data)
            self._file.flush()
            self._dirty = True
            if sync:
                os.fsync(self._file.fileno())
                self._dirty = False

    def sync(self) -> None:
        with self._lock:
            if self._dirty:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._dirty = False

    def size(self) -> int:
        with self._lock:
            self._file.flush()
            return os.fstat(self._file.fileno()).st_size

    def pending(self) -> bool:
        return self.size() > self.replayed

    def chunks(self, records_per_chunk: int) -> Iterator[tuple[list[Record], int]]:
        """Unreplayed records in order, as (records, end offset) chunks.

        The caller commits a chunk, then sets :attr:`replayed` to its end offset.
        """
        with open(self.path, "rb") as reader:
            reader.seek(self.replayed)
            chunk: list[Record] = []
            offset = self.replayed
            for line in reader:
                if not line.endswith(b"\n"):
                    break  # torn or still being written: the next round picks it up
                offset += len(line)
                try:
                    chunk.append(decode_record(line))
                except ValueError as exc:
                    log.error("telemetry spool %s: skipping unreadable line (%s)", self.path, exc)
                    continue
                if len(chunk) >= records_per_chunk:
                    yield chunk, offset
                    chunk = []
            if chunk or offset != self.replayed:
                yield chunk, offset

    def truncate_if_replayed(self) -> bool:
        """Empty the file if everything in it has been replayed; True if now empty."""
        with self._lock:
            self._file.flush()
            if os.fstat(self._file.fileno()).st_size != self.replayed:
                return False
            self._file.truncate(0)
            self._file.seek(0)
            os.fsync(self._file.fileno())
            self.replayed = 0
            self._dirty = False
            return True

    def close(self) -> None:
        with self._lock:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
