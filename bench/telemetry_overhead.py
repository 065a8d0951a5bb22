"""Telemetry cost: writer throughput into PostgreSQL, and a demo run with telemetry on vs off.

    .venv/bin/python bench/telemetry_overhead.py [--url URL] [--events N] [--repeat K]
                                                 [--daemon] [--skip-demo]

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
   Target: overhead < 3 %. On a busy machine wall times swing more than that,
   so the script also prints the CPU telemetry adds per run (this process,
   on minus off, plus the writer's PostgreSQL backend) as a share of the run.
   The daemon itself is not in the loop: this process does what it does with
   a worker's events (read, decode, stamp, hand to the sink).
3. ``--daemon`` adds the end-to-end form: the demo run submitted to a real
   ``geod`` daemon with ``telemetry: true`` (sink from ``open_telemetry``) and
   ``telemetry: false``, comparing the runs' started→finished times.

The database is a fresh one created on ``--url`` (default ``GEOD_TEST_DATABASE_URL``
or the local server) and dropped afterwards.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg2
from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn
from telemetry_events import Stamper, realistic_events

from pipeline.contract import EVENTS_FD_ENV
from pipeline.demo import write_demo_config
from pipeline.events import Event, decode
from supervisor.protocol import RunSummary
from supervisor.telemetry.migrate import migrate
from supervisor.telemetry.rows import TABLES, Batch, copy_text
from supervisor.telemetry.writer import QUEUE_SIZE, TelemetryWriter

REPO = Path(__file__).resolve().parent.parent
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


@dataclass
class Throughput:
    rows: int
    wall: float
    #: CPU seconds of this process (submitting, building rows) during the run.
    client_cpu: float
    #: CPU seconds of the writer's PostgreSQL backend (None if the server is not local).
    backend_cpu: float | None
    spilled: int


def _backend(url: str) -> psutil.Process | None:
    """The writer connection's server process, if the server runs on this machine."""
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE application_name = 'geod-telemetry' AND datname = current_database()"
        )
        row = cur.fetchone()
    conn.close()
    try:
        return psutil.Process(row[0]) if row else None
    except psutil.Error:
        return None


def _cpu(process: psutil.Process | None) -> float | None:
    if process is None:
        return None
    try:
        times = process.cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def writer_throughput(url: str, events: list[Event], spool: Path, queue_size: int) -> Throughput:
    """Store ``events`` through a TelemetryWriter as fast as it accepts them."""
    _truncate(url)
    writer = TelemetryWriter(url, spool, queue_size=queue_size).start()
    writer.record_run(RunSummary(id="bench", name="bench", state="running"))
    assert writer.flush(FLUSH_TIMEOUT)  # connected and migrated before timing
    backend = _backend(url)
    backend_cpu = _cpu(backend)
    cpu = time.process_time()
    start = time.perf_counter()
    for event in events:
        writer.record_event(event)
    assert writer.flush(FLUSH_TIMEOUT), writer.status()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    after = _cpu(backend)
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
    used = None if after is None or backend_cpu is None else after - backend_cpu
    return Throughput(rows, elapsed, cpu, used, spilled)


@dataclass
class DemoRun:
    wall: float
    events: int
    #: CPU seconds of this process (the daemon's part: decode, stamp, telemetry).
    cpu: float
    #: CPU seconds of the telemetry connection's PostgreSQL backend (0 when off or remote).
    backend_cpu: float


def demo_run(config: Path, work: Path, writer: TelemetryWriter | None, run: str) -> DemoRun:
    """One worker run whose events are read the way the daemon reads them."""
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, **{EVENTS_FD_ENV: str(write_fd)})
    backend = None
    backend_start = 0.0
    if writer is not None:
        writer.record_run(RunSummary(id=run, name=run, state="running"))
        assert writer.flush(FLUSH_TIMEOUT)  # connected before the clock starts
        backend = _backend(writer.url)
        backend_start = _cpu(backend) or 0.0
    cpu = time.process_time()
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
    cpu = time.process_time() - cpu
    backend_cpu = (_cpu(backend) or backend_start) - backend_start
    if code != 0:
        raise SystemExit(f"demo worker exited with {code}")
    return DemoRun(elapsed, count, cpu, backend_cpu)


#: Exactly what ``geod serve`` runs; ``telemetry: false`` in the settings turns the sink off.
DAEMON_SCRIPT = (
    "import sys\n"
    "from pathlib import Path\n"
    "from supervisor.detach import serve\n"
    "from supervisor.settings import load_settings\n"
    "sys.exit(serve(load_settings(Path(sys.argv[1]))))\n"
)
#: Seconds between polls of the daemon for the run's state.
POLL = 0.2
DAEMON_TIMEOUT = 600.0


def daemon_demo(config: Path, directory: Path, url: str, telemetry: bool) -> float:
    """The demo run through a real daemon (telemetry on or off); the run's wall seconds."""
    import yaml

    from supervisor.client import Client, DaemonNotRunning
    from supervisor.protocol import FINAL_STATES

    directory.mkdir(parents=True)
    socket_dir = Path(tempfile.mkdtemp(prefix="geod-bench-", dir="/tmp"))
    settings = directory / "geod.yml"
    settings.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(directory / "state"),
                "socket_path": str(socket_dir / "s.sock"),
                "telemetry": telemetry,
                "database_url": url,
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOD_")}
    log_path = directory / "daemon.log"
    with open(log_path, "wb") as log_file:
        daemon = subprocess.Popen(
            [sys.executable, "-c", DAEMON_SCRIPT, str(settings)],
            env=env,
            stdout=log_file,
            stderr=log_file,
        )
    try:
        deadline = time.monotonic() + DAEMON_TIMEOUT
        while True:
            try:
                client = Client(socket_dir / "s.sock")
                break
            except DaemonNotRunning:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise SystemExit(f"the daemon did not start:\n{tail}") from None
                time.sleep(POLL)
        with client:
            run = client.submit(str(config))
            while run.state not in FINAL_STATES:
                if time.monotonic() > deadline:
                    raise SystemExit(f"demo run stuck: {run}")
                time.sleep(POLL)
                run = client.run(run.id)
        if run.state != "done":
            tail = log_path.read_text(errors="replace")[-2000:]
            raise SystemExit(f"demo run ended {run.state}: {run.error}\n{tail}")
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(DAEMON_TIMEOUT)
        if telemetry:  # the daemon flushed on exit: every stamped event is a row
            conn = psycopg2.connect(url)
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM geod.events WHERE run = %s", (run["id"],))
                stored = cur.fetchone()[0]
            conn.close()
            if stored != run["last_seq"]:
                raise SystemExit(f"telemetry stored {stored} of {run['last_seq']} events")
        return float(run["finished"] - run["started"])
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        shutil.rmtree(socket_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("GEOD_TEST_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--events", type=int, default=200_000, help="events in the mix")
    parser.add_argument("--repeat", type=int, default=3, help="demo runs per mode")
    parser.add_argument("--skip-demo", action="store_true", help="throughput only")
    parser.add_argument(
        "--daemon", action="store_true", help="demo runs through a real geod daemon"
    )
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
        sustained = writer_throughput(url, events, tmp_path / "spool", len(events))
        assert sustained.rows == ref_rows, f"stored {sustained.rows} rows, expected {ref_rows}"
        rate = sustained.rows / sustained.wall
        print(
            f"TelemetryWriter, sustained:       {rate:10,.0f} rows/s"
            f"  (target >= 50,000; {rate / (ref_rows / ref_time):.2f}x bare COPY)"
        )
        print(
            f"  CPU per 1,000 rows: geod {1000 * sustained.client_cpu / ref_rows * 1000:.1f} ms",
            end="",
        )
        if sustained.backend_cpu is not None:
            print(
                f", PostgreSQL backend {1000 * sustained.backend_cpu / ref_rows * 1000:.1f} ms"
                f" (the two overlap; CPU-bound ceiling on two free cores"
                f" ~{ref_rows / max(sustained.client_cpu, sustained.backend_cpu):,.0f} rows/s)"
            )
        else:
            print()
        # Overload: default queue; a burst far above the drain rate spills to the spool.
        burst = writer_throughput(url, events, tmp_path / "spool", QUEUE_SIZE)
        assert burst.rows == ref_rows, f"stored {burst.rows} rows, expected {ref_rows}"
        print(
            f"TelemetryWriter, burst overload:  {burst.rows / burst.wall:10,.0f} rows/s"
            f"  ({burst.spilled:,} records went through the spool)"
        )
        print(f"load average during the bench: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        if args.skip_demo:
            return

        from pipeline.demo import generate

        demo = tmp_path / "demo"
        generate(demo, "small", seed=0)
        config = write_demo_config(REPO / "config.yml", tmp_path, demo)
        _truncate(url)
        if args.daemon:
            walls: dict[str, list[float]] = {"off": [], "on": []}
            for i in range(args.repeat):
                for mode in ("off", "on"):
                    _truncate(url)  # every daemon numbers its runs from r0001
                    wall = daemon_demo(config, tmp_path / f"daemon-{mode}-{i}", url, mode == "on")
                    walls[mode].append(wall)
                    print(
                        f"daemon demo run {i + 1}/{args.repeat} telemetry {mode:3}: {wall:6.2f} s"
                    )
            ratio = statistics.median(walls["on"]) / statistics.median(walls["off"])
            print(
                f"daemon demo run wall, telemetry on / off (median of {args.repeat}):"
                f" {ratio:.3f} -> overhead {100 * (ratio - 1):+.1f} % (target < 3 %)"
            )
        runs: dict[str, list[DemoRun]] = {"off": [], "on": []}
        for i in range(args.repeat):
            for mode in ("off", "on"):
                work = tmp_path / f"work-{mode}-{i}"
                if mode == "on":
                    writer = TelemetryWriter(url, tmp_path / "spool").start()
                    result = demo_run(config, work, writer, f"demo-{i}")
                    writer.close()
                else:
                    result = demo_run(config, work, None, f"demo-{i}")
                runs[mode].append(result)
                print(
                    f"demo run {i + 1}/{args.repeat} telemetry {mode:3}: {result.wall:6.2f} s"
                    f"  ({result.events} events, daemon-side CPU {result.cpu:.3f} s,"
                    f" telemetry backend CPU {result.backend_cpu:.3f} s)"
                )
        off = statistics.median(r.wall for r in runs["off"])
        on = statistics.median(r.wall for r in runs["on"])
        print(
            f"demo wall time, telemetry on / off (median of {args.repeat}): {on / off:.3f}"
            f"  -> overhead {100 * (on / off - 1):+.1f} % (target < 3 %)"
        )
        extra_cpu = statistics.median(
            r.cpu + r.backend_cpu for r in runs["on"]
        ) - statistics.median(r.cpu for r in runs["off"])
        print(
            f"telemetry CPU per demo run (daemon side + PostgreSQL backend, on minus off):"
            f" {extra_cpu:.3f} s = {100 * extra_cpu / off:.2f} % of the run's wall time"
        )
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
