"""Telemetry cost: writer throughput into PostgreSQL, and a demo run with telemetry on vs off.

    .venv/bin/python bench/telemetry_overhead.py [--url URL] [--events N] [--repeat K]

1. Throughput. A realistic event mix (per window: progress, memory sample, debug
   log; every tenth window an info log and a checkpoint) goes through
   ``TelemetryWriter`` as fast as it accepts it; rows/s counts table rows
   committed (each event is an ``events`` row plus its typed row). Reference:
   the same rows COPY'd straight into the tables in one transaction, no
   staging, no conflict handling, no Python event handling. Target ≥ 50,000
   rows/s.
2. Overhead. The demo run (``geod demo-data`` small layers, the repository's
   config.yml) is a real ``python -m pipeline.worker`` process whose event pipe
   is read the way the daemon reads it (decode, stamp run/seq). "off" drops the
   events; "on" also hands each one to a ``TelemetryWriter`` and waits for the
   final flush. Runs alternate on/off ``--repeat`` times; medians are compared.
   Target: overhead < 3 %. Also printed: the writer's CPU time per event times
   the run's event count, as a share of the run's wall time.

The database is a fresh one created on ``--url`` (default ``GEOD_TEST_DATABASE_URL``
or the local server) and dropped afterwards.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.events import EVENTS_FD_ENV, Event, decode  # noqa: E402
from supervisor.protocol import RunSummary  # noqa: E402
from supervisor.telemetry.migrate import migrate  # noqa: E402
from supervisor.telemetry.rows import TABLES, Batch, copy_text  # noqa: E402
from supervisor.telemetry.writer import QUEUE_SIZE, TelemetryWriter  # noqa: E402
from tests.conftest import write_demo_config  # noqa: E402
from tests.telemetry_helpers import Stamper, realistic_events  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
#: Datasets of the synthetic mix; windows per dataset follow from --events.
MIX_DATASETS = 4
#: Approximate events per window of the mix (progress, memory, debug log, 1/10 info+checkpoint).
EVENTS_PER_WINDOW = 3.2
FLUSH_TIMEOUT = 600.0


@contextmanager
def scratch_database(url: str) -> Iterator[str]:
    name = f"geod_bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = parse_dsn(url)
    params["dbname"] = name
    try:
        yield make_dsn(**params)
    finally:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


def _truncate(url: str) -> None:
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute("TRUNCATE " + ", ".join(f"geod.{t}" for t in TABLES))
    conn.commit()
    conn.close()


def bare_copy(url: str, events: list[Event]) -> tuple[int, float]:
    """Reference: rows prepared up front, COPY'd straight into plain tables of the same columns."""
    batch = Batch()
    for event in events:
        batch.add_event(event)
    tables = batch.tables()
    buffers = {t: copy_text(rows) for t, rows in tables.items()}
    conn = psycopg2.connect(url)
    start = time.perf_counter()
    with conn.cursor() as cur:
        for table, text in buffers.items():
            cur.execute(TABLES[table].staging_ddl(f"raw_{table}"))
            cur.copy_expert(f"COPY raw_{table} FROM STDIN", io.StringIO(text))
    conn.commit()
    elapsed = time.perf_counter() - start
    conn.close()
    return sum(len(rows) for rows in tables.values()), elapsed


def writer_throughput(
    url: str, events: list[Event], spool: Path, queue_size: int
) -> tuple[int, float, float, int]:
    """Rows committed, wall and process CPU seconds, records spilled, to store ``events``."""
    _truncate(url)
    writer = TelemetryWriter(url, spool, queue_size=queue_size).start()
    writer.record_run(RunSummary(id="bench", name="bench", state="running"))
    assert writer.flush(FLUSH_TIMEOUT)  # connected and migrated before timing
    cpu = time.process_time()
    start = time.perf_counter()
    for event in events:
        writer.record_event(event)
    assert writer.flush(FLUSH_TIMEOUT), writer.status()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    spilled = writer.spilled
    writer.close()
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        rows = 0
        for table in TABLES:
            if table != "runs":
                cur.execute(f"SELECT count(*) FROM geod.{table} WHERE run = 'bench'")
                rows += cur.fetchone()[0]
    conn.close()
    return rows, elapsed, cpu, spilled


def demo_run(config: Path, work: Path, writer: TelemetryWriter | None, run: str) -> tuple:
    """One worker run read like the daemon reads it; returns (wall seconds, events)."""
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, **{EVENTS_FD_ENV: str(write_fd)})
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.worker", str(config), "--work-dir", str(work)],
        env=env,
        pass_fds=(write_fd,),
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    stamp = Stamper(run)
    count = 0
    with os.fdopen(read_fd, "rb") as stream:
        for line in stream:
            event = stamp(decode(line))
            count += 1
            if writer is not None:
                writer.record_event(event)
    code = process.wait()
    if writer is not None:
        assert writer.flush(FLUSH_TIMEOUT), writer.status()
    elapsed = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"demo worker exited with {code}")
    return elapsed, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("GEOD_TEST_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--events", type=int, default=200_000, help="events in the mix")
    parser.add_argument("--repeat", type=int, default=3, help="demo runs per mode")
    parser.add_argument("--skip-demo", action="store_true", help="throughput only")
    args = parser.parse_args()

    windows = max(1, int(args.events / EVENTS_PER_WINDOW / MIX_DATASETS))
    events = list(realistic_events("bench", windows=windows, datasets=MIX_DATASETS))
    with tempfile.TemporaryDirectory() as tmp, scratch_database(args.url) as url:
        tmp_path = Path(tmp)
        conn = psycopg2.connect(url)
        migrate(conn)
        conn.close()

        ref_rows, ref_time = bare_copy(url, events)
        print(f"events: {len(events):,}  rows: {ref_rows:,}")
        print(f"bare COPY (reference):            {ref_rows / ref_time:10,.0f} rows/s")
        # Sustained: the queue holds the whole burst, so this is the writer's drain rate.
        rows, elapsed, cpu, _ = writer_throughput(url, events, tmp_path / "spool", len(events))
        assert rows == ref_rows, f"writer stored {rows} rows, expected {ref_rows}"
        print(
            f"TelemetryWriter, sustained:       {rows / elapsed:10,.0f} rows/s"
            f"  (target >= 50,000; {ref_time / elapsed:.2f}x bare COPY)"
        )
        cpu_per_event = cpu / len(events)
        print(f"  process CPU per event:          {cpu_per_event * 1e6:10.1f} us")
        # Overload: default queue; a burst far above the drain rate spills to the spool.
        rows, elapsed, _, spilled = writer_throughput(url, events, tmp_path / "spool", QUEUE_SIZE)
        assert rows == ref_rows, f"writer stored {rows} rows, expected {ref_rows}"
        print(
            f"TelemetryWriter, burst overload:  {rows / elapsed:10,.0f} rows/s"
            f"  ({spilled:,} records went through the spool)"
        )
        if args.skip_demo:
            return

        from pipeline.demo import generate

        demo = tmp_path / "demo"
        generate(demo, "small", seed=0)
        config = write_demo_config(tmp_path, demo)
        _truncate(url)
        off: list[float] = []
        on: list[float] = []
        count = 0
        for i in range(args.repeat):
            for mode in ("off", "on"):
                work = tmp_path / f"work-{mode}-{i}"
                if mode == "on":
                    writer = TelemetryWriter(url, tmp_path / "spool").start()
                    wall, count = demo_run(config, work, writer, f"demo-{i}")
                    writer.close()
                    on.append(wall)
                else:
                    wall, count = demo_run(config, work, None, f"demo-{i}")
                    off.append(wall)
                print(
                    f"demo run {i + 1}/{args.repeat} telemetry {mode:3}: {wall:6.2f} s"
                    f"  ({count} events)"
                )
        ratio = statistics.median(on) / statistics.median(off)
        print(
            f"demo wall time, telemetry on / off (median of {args.repeat}): {ratio:.3f}"
            f"  -> overhead {100 * (ratio - 1):+.1f} % (target < 3 %)"
        )
        estimate = cpu_per_event * count / statistics.median(off)
        print(f"writer CPU x {count} events / run wall time: {100 * estimate:.2f} %")


if __name__ == "__main__":
    main()
