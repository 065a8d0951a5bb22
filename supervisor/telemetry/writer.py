"""The telemetry writer: threads that batch rows into PostgreSQL and spool through outages.

The daemon's event loop calls :meth:`TelemetryWriter.record_event` and
:meth:`TelemetryWriter.record_run`; both only append to a bounded in-memory
queue (or, if that is full, to the spool file) and return. A collector thread
takes a batch every ``flush_interval`` seconds or ``batch_size`` records and
builds its rows; the database thread stages them with COPY into temporary
tables and moves them into ``geod.*`` with ``INSERT … SELECT``. The two
overlap, so Python row building and PostgreSQL's inserting use two cores.

When the database is unreachable, batches go to the spool (fsync'd per batch)
and the thread reconnects with exponential backoff; once connected it replays
the spool in order, then truncates it. Every row is keyed by (run, seq) (runs by
a writer revision), so a replay that repeats rows changes nothing: no loss, no
duplicates. An outage is logged once when it starts and once when it ends, with
the reason, never a traceback per attempt.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
from psycopg2.extensions import connection as Connection

from pipeline.config import TelemetryConfig
from pipeline.events import Event, event_to_json_dict
from supervisor.protocol import RunSummary
from supervisor.telemetry.identity import load_instance
from supervisor.telemetry.migrate import MigrationError, migrate
from supervisor.telemetry.retention import SECONDS_PER_DAY, prune
from supervisor.telemetry.rows import TABLES, Batch, copy_text
from supervisor.telemetry.spool import Record, Spool

log = logging.getLogger("geod.telemetry")

_DEFAULTS = TelemetryConfig()
#: Records held in memory before callers spill to the spool: four default batches,
#: seconds of slack at a busy run's event rate, and a bounded share of daemon
#: memory (an event object is around a kilobyte).
QUEUE_SIZE = 4 * _DEFAULTS.batch_size
#: First reconnect delay; doubles per failed attempt up to MAX_BACKOFF.
FIRST_BACKOFF = 0.5
#: A restarted database is picked up within this many seconds.
MAX_BACKOFF = 15.0
#: Seconds to wait for a TCP connection before calling the database down.
CONNECT_TIMEOUT = 5
#: A statement stuck longer than this (hung server) is treated as an outage.
STATEMENT_TIMEOUT_MS = 60_000
#: close() waits this long for the last flush; what is left then goes to the spool.
CLOSE_TIMEOUT = 10.0
REJECTED_NAME = "telemetry.rejected"

#: Errors that mean "this data can never be stored" rather than "the database is away".
_DATA_ERRORS = (psycopg2.DataError, psycopg2.IntegrityError)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no detail'}"


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


@dataclass
class _Prepared:
    """A batch of records and, if building them worked, their COPY text per table."""

    records: list[Record]
    texts: dict[str, str] | None


class TelemetryWriter:
    """Implements the daemon's ``TelemetrySink``: record_run, record_event, close."""

    def __init__(
        self,
        url: str,
        spool_dir: Path,
        *,
        flush_interval: float = _DEFAULTS.flush_interval,
        batch_size: int = _DEFAULTS.batch_size,
        retention_days: int | None = None,
        queue_size: int = QUEUE_SIZE,
        max_backoff: float = MAX_BACKOFF,
        on_close: Callable[[], None] | None = None,
        ensure_server: Callable[[], object] | None = None,
    ) -> None:
        self.url = url
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.retention_days = retention_days
        self.queue_size = queue_size
        self.max_backoff = max_backoff
        self._on_close = on_close
        #: Called before reconnecting during an outage (restarts an embedded server).
        self._ensure_server = ensure_server
        self._spool = Spool(spool_dir)
        self._rejected_path = spool_dir / REJECTED_NAME
        self._host = socket.gethostname()
        self._user = _current_user()
        #: This daemon's identity in a shared database (see telemetry.identity).
        self.instance = load_instance(spool_dir)

        self._cond = threading.Condition()  # the queue; the collector waits on it
        self._done = threading.Condition(self._cond)  # flush() waits on it
        self._items: deque[Record] = deque()
        self._stopping = False
        #: close() gave up waiting for a hung database and spooled the rest itself.
        self._abandoned = False
        self._flush_wanted = False
        self._submitted = 0
        self._handled = 0
        self._last_rev = 0

        self._conn: Connection | None = None
        self._retry_at = 0.0
        self._backoff = FIRST_BACKOFF
        self._outage_since: float | None = None
        self._outage_reason: str | None = None
        self._next_prune = 0.0
        self.written = 0
        #: Records the writer thread put in the spool (database away).
        self.spooled = 0
        #: Records callers put in the spool because the queue was full.
        self.spilled = 0
        self.rejected = 0
        #: Batches travel collector → database thread one at a time, so the next
        #: batch's rows are built while the database stores the previous one.
        self._handoff: queue.Queue[_Prepared | None] = queue.Queue(maxsize=1)
        self._preparing: list[Record] = []
        self._in_flight: list[Record] = []
        self._collector = threading.Thread(
            target=self._collect, name="geod-telemetry-collect", daemon=True
        )
        self._thread = threading.Thread(target=self._store, name="geod-telemetry", daemon=True)

    # -- the sink protocol ---------------------------------------------------------------

    def start(self) -> TelemetryWriter:
        self._thread.start()
        self._collector.start()
        return self

    def record_run(self, run: RunSummary) -> None:
        """Upsert the run's row; a later call always wins over an earlier one."""
        with self._cond:
            rev = max(self._last_rev + 1, time.time_ns())
            self._last_rev = rev
        self._submit(("r", rev, run))

    def record_event(self, event: Event) -> None:
        """Store an event stamped with run and seq (and its typed rows)."""
        if event.run is None or event.seq is None:
            raise ValueError(f"{event.type} event must carry run and seq to be recorded")
        self._submit(("e", event))

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Flush what is queued (to the database, or the spool if it is away) and stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in (self._collector, self._thread):
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            # The database hangs: put everything not yet committed in the spool
            # (the stuck thread may still commit some of it later; replays are
            # idempotent, so the next writer's replay cannot double it).
            with self._cond:
                self._abandoned = True  # the collector takes nothing more
                left = list(self._items)
                self._items.clear()
            left.extend(self._in_flight)
            left.extend(self._preparing)
            with self._handoff.mutex:
                for item in self._handoff.queue:
                    if item is not None:
                        left.extend(item.records)
            self._spool.append(left)
            log.warning(
                "telemetry writer did not finish within %.0fs; %d records spooled to %s",
                timeout,
                len(left),
                self._spool.path,
            )
        else:
            self._spool.close()
        if self._on_close is not None:
            self._on_close()

    # -- for tests, benchmarks and `geod status` ------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Wait until every record submitted so far is committed to the database.

        False if that did not happen within ``timeout`` (e.g. the database is down
        and the records are still in the spool).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            while True:
                if (
                    self._handled >= target
                    and self._outage_since is None
                    and not (self._spool.pending())
                ):
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._flush_wanted = True
                self._cond.notify_all()
                self._done.wait(min(left, self.flush_interval))

    def status(self) -> dict[str, Any]:
        with self._cond:
            queued = len(self._items)
        return {
            "connected": self._conn is not None,
            "outage_since": self._outage_since,
            "outage_reason": self._outage_reason,
            "queued": queued,
            "spool_bytes": self._spool.size() - self._spool.replayed,
            "written": self.written,
            "spooled": self.spooled,
            "spilled": self.spilled,
            "rejected": self.rejected,
        }

    # -- caller side -----------------------------------------------------------------------

    def _submit(self, record: Record) -> None:
        with self._cond:
            if self._stopping and not self._thread.is_alive():
                raise RuntimeError("telemetry writer is closed")
            self._submitted += 1
            if len(self._items) < self.queue_size:
                self._items.append(record)
                if len(self._items) >= self.batch_size:
                    self._cond.notify()
                return
            self._handled += 1
            self.spilled += 1
        # Queue full (database slow or away): keep the caller moving; the
        # writer thread fsyncs and replays the spool.
        self._spool.append([record], sync=False)

    # -- writer thread ---------------------------------------------------------------------

    def _collect(self) -> None:
        """Take batches off the queue on time or when full, build their rows, hand them on."""
        next_flush = time.monotonic() + self.flush_interval
        while True:
            with self._cond:
                if self._abandoned:
                    break
                while (
                    not self._stopping
                    and not self._flush_wanted
                    and len(self._items) < self.batch_size
                ):
                    left = next_flush - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                take = min(len(self._items), self.batch_size)
                batch = [self._items.popleft() for _ in range(take)]
                self._preparing = batch
                stopping = self._stopping and not self._items
                self._flush_wanted = bool(self._items) and self._flush_wanted
            if not batch or time.monotonic() >= next_flush or stopping:
                next_flush = time.monotonic() + self.flush_interval
            try:
                texts: dict[str, str] | None = self._prepare(batch)
            except Exception as exc:  # the database thread rebuilds and reports it
                log.debug("telemetry: building rows failed (%s)", _reason(exc))
                texts = None
            self._handoff.put(_Prepared(batch, texts))
            self._preparing = []
            if stopping:
                break
        self._handoff.put(None)

    def _store(self) -> None:
        """The database thread: write each batch, or spool it, then count it handled."""
        while (item := self._handoff.get()) is not None:
            self._in_flight = item.records
            try:
                self._deliver(item.records, item.texts)
            except Exception as exc:  # never let the thread die: spool and carry on
                log.error("telemetry writer: unexpected %s; spooling", _reason(exc))
                self._spool.append(item.records)
                self._drop_connection()
            self._in_flight = []
            with self._cond:
                self._handled += len(item.records)
                self._done.notify_all()
        self._drop_connection()

    def _deliver(self, batch: list[Record], texts: dict[str, str] | None) -> None:
        self._spool.sync()
        connected = self._connected()
        if batch and (not connected or self._spool.pending()):
            self._spool.append(batch)
            self.spooled += len(batch)
            batch = []
        if connected:
            if self._spool.pending():
                self._replay()
            else:
                self._recovered(0)
        if batch and self._conn is not None:
            try:
                self._write(batch, texts)
            except psycopg2.Error as exc:
                self._lost(exc)
                self._spool.append(batch)
                self.spooled += len(batch)
        if self._conn is not None and self.retention_days and time.time() >= self._next_prune:
            self._prune()

    def _connected(self) -> bool:
        if self._conn is not None:
            return True
        if time.monotonic() < self._retry_at:
            return False
        if self._outage_since is not None and self._ensure_server is not None:
            try:
                self._ensure_server()  # the embedded server is ours to bring back
            except Exception as exc:
                log.debug("telemetry: restarting the database failed (%s)", _reason(exc))
        conn = None
        try:
            conn = psycopg2.connect(
                self.url,
                connect_timeout=CONNECT_TIMEOUT,
                application_name="geod-telemetry",
                options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            )
            migrate(conn)
            with conn.cursor() as cur:
                for spec in TABLES.values():
                    cur.execute(spec.staging_ddl())
            conn.commit()
        except (psycopg2.Error, MigrationError) as exc:
            if conn is not None:
                with contextlib.suppress(psycopg2.Error):
                    conn.close()
            self._lost(exc)
            return False
        self._conn = conn
        self._backoff = FIRST_BACKOFF
        return True

    def _lost(self, exc: BaseException) -> None:
        """The database is away: log once per episode, schedule a reconnect."""
        self._drop_connection()
        if self._outage_since is None:
            self._outage_since = time.time()
            self._outage_reason = _reason(exc)
            log.warning(
                "telemetry database unavailable (%s); spooling to %s until it is back",
                self._outage_reason,
                self._spool.path,
            )
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.max_backoff)

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
            self._conn = None

    def _replay(self) -> None:
        replayed = 0
        try:
            while self._spool.pending():
                for chunk, end in self._spool.chunks(self.batch_size):
                    self._write(chunk)
                    self._spool.replayed = end
                    replayed += len(chunk)
                if self._spool.truncate_if_replayed():
                    break
        except psycopg2.Error as exc:
            self._lost(exc)
            return
        self._recovered(replayed)

    def _recovered(self, replayed: int) -> None:
        """Connected with an empty spool: the outage episode, if any, is over."""
        if self._outage_since is None:
            return
        log.warning(
            "telemetry database back after %.0fs; replayed %d spooled records",
            time.time() - self._outage_since,
            replayed,
        )
        self._outage_since = None
        self._outage_reason = None

    def _write(self, records: list[Record], texts: dict[str, str] | None = None) -> None:
        """Commit ``records`` in one transaction; data errors isolate the bad records."""
        assert self._conn is not None
        try:
            self._copy(texts if texts is not None else self._prepare(records))
        except psycopg2.Error as exc:
            if not isinstance(exc, _DATA_ERRORS):
                raise  # the database is away or broken: the caller spools
            self._isolate(records, exc)
            return
        except Exception as exc:  # a record that cannot even become rows (a bug)
            self._isolate(records, exc)
            return
        self.written += len(records)

    def _isolate(self, records: list[Record], exc: BaseException) -> None:
        """Write ``records`` in halves until the one the database refuses is found."""
        assert self._conn is not None
        with contextlib.suppress(psycopg2.Error):
            self._conn.rollback()
        if len(records) == 1:
            self._reject(records[0], exc)
            return
        half = len(records) // 2
        self._write(records[:half])
        self._write(records[half:])

    def _prepare(self, records: list[Record]) -> dict[str, str]:
        """table → COPY text of the rows ``records`` become (no database needed)."""
        batch = Batch(self.instance)
        now = time.time()
        for record in records:
            if record[0] == "e":
                batch.add_event(record[1])
            else:
                batch.add_run(record[2], record[1], self._host, self._user, now)
        return {table: copy_text(rows) for table, rows in batch.tables().items()}

    def _copy(self, texts: dict[str, str]) -> None:
        """Stage every table's rows, move them all in one round trip, commit.

        Round trips are what this thread waits on, and each return has to win the
        GIL back from the collector, so a batch costs one COPY per table plus two
        statements, not two per table. Append-only tables take a plain INSERT
        (a third cheaper); only a replay repeats rows, and then the statement
        fails and the idempotent ON CONFLICT DO NOTHING form runs instead.
        """
        assert self._conn is not None
        specs = [TABLES[table] for table in texts]
        upserts = [spec.insert_sql() for spec in specs if not spec.append_only]
        appends = [spec for spec in specs if spec.append_only]
        with self._conn.cursor() as cur:
            for spec in specs:
                text = texts[spec.name]
                # One read of the whole text, not psycopg2's default 8 KiB chunks.
                cur.copy_expert(
                    f"COPY {spec.staging} FROM STDIN", io.StringIO(text), size=len(text) + 1
                )
            fast = [spec.insert_sql(idempotent=False) for spec in appends]
            try:
                cur.execute(";\n".join([*upserts, "SAVEPOINT geod_fast", *fast]))
            except psycopg2.errors.UniqueViolation:
                cur.execute(
                    ";\n".join(
                        ["ROLLBACK TO SAVEPOINT geod_fast", *(s.insert_sql() for s in appends)]
                    )
                )
        self._conn.commit()

    def _reject(self, record: Record, exc: BaseException) -> None:
        """A record the database refuses (bad data): keep it aside, never retry forever."""
        self.rejected += 1
        if self.rejected == 1:
            log.error(
                "telemetry: the database rejected a record (%s); kept in %s",
                _reason(exc),
                self._rejected_path,
            )
        body = event_to_json_dict(record[1]) if record[0] == "e" else record[2].model_dump()
        line = json.dumps({"error": _reason(exc), "record": body}, default=str)
        with open(self._rejected_path, "a") as file:
            file.write(line + "\n")

    def _prune(self) -> None:
        assert self._conn is not None and self.retention_days is not None
        self._next_prune = time.time() + SECONDS_PER_DAY
        try:
            deleted = prune(self._conn, self.retention_days)
        except psycopg2.Error as exc:
            self._lost(exc)
            return
        pruned = {table: count for table, count in deleted.items() if count}
        if pruned:
            log.info("telemetry retention (%d days): deleted %s", self.retention_days, pruned)
