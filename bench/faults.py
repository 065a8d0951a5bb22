"""Fault-injection summary: crash-anywhere resume, bad inputs, protocol fuzzing.

    GEOD_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/faults.py [--points all] [--fuzz-seconds 60] [--seed 0]

1. Every kill point of tests/faults.py (each anchor × worker/daemon/both, plus
   seeded random times; ``--points`` or ``GEOD_FAULT_POINTS`` to choose): an
   uninterrupted reference run, then one run per point under a real daemon
   (``geod serve``, telemetry in a fresh PostgreSQL database), SIGKILLed there and
   resumed. Counted: faults injected, runs resumed to "done", outputs identical
   (files, layer store, no temporary files), telemetry rows lost and duplicated.
2. Every bad input of tests/bad_inputs.py through ``geod check``, ``geod run``
   and the daemon: rejected cleanly = one line naming it, non-zero exit, daemon
   still up, nothing under a final name.
3. Protocol fuzzing of a live daemon for ``--fuzz-seconds`` (hypothesis): the
   daemon never dies, answers a probe after every example, and holds no more
   descriptors at the end than at the start.

Prints one table; the ratio column is achieved / target.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg2
from psycopg2 import sql

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.faults import (  # noqa: E402
    FaultDaemon,
    chosen_points,
    fault_config,
    inject,
    leftovers,
    output_differences,
    output_dir,
    store_differences,
    store_dir,
    telemetry_count,
)

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


class Database:
    """A fresh database on the server for one daemon, dropped afterwards."""

    def __init__(self, server_url: str) -> None:
        from psycopg2.extensions import make_dsn, parse_dsn

        self.server_url = server_url
        self.name = f"geod_bench_{uuid.uuid4().hex[:12]}"
        self._admin("CREATE DATABASE {}")
        params = parse_dsn(server_url)
        params["dbname"] = self.name
        self.url = make_dsn(**params)

    def _admin(self, statement: str) -> None:
        conn = psycopg2.connect(self.server_url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                if statement.startswith("DROP"):
                    cur.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                        (self.name,),
                    )
                cur.execute(sql.SQL(statement).format(sql.Identifier(self.name)))
        finally:
            conn.close()

    def drop(self) -> None:
        self._admin("DROP DATABASE IF EXISTS {}")


def run_faults(server_url: str, spec: str, seed: int, tmp: Path) -> dict[str, int]:
    from pipeline.demo import generate

    demo = tmp / "demo"
    generate(demo, "small", seed=0)
    points = chosen_points(spec, seed)
    reference_daemon = FaultDaemon(tmp / "reference", server_url, telemetry=False)
    try:
        reference_daemon.start()
        run_id = reference_daemon.submit(fault_config(tmp / "reference" / "run", demo))
        reference = reference_daemon.wait(run_id, "done", 180)
    finally:
        reference_daemon.cleanup()
    totals = {"injected": 0, "resumed": 0, "identical": 0, "lost": 0, "duplicates": 0}
    print(f"{'point':<34} {'stage at kill':<14} {'attempts':>8} {'identical':>9} {'lost':>5}")
    for index, point in enumerate(points):
        database = Database(server_url)
        daemon = FaultDaemon(tmp / f"p{index}", database.url)
        try:
            daemon.start()
            try:
                result = inject(daemon, fault_config(tmp / f"p{index}" / "run", demo), point)
            except AssertionError as exc:  # counted as not resumed; the next point goes on
                print(f"{point.label:<34} FAILED: {str(exc).splitlines()[0]}", flush=True)
                continue
            run = result.run
            totals["injected"] += int(result.landed)
            done = run["state"] == "done"
            totals["resumed"] += int(done)
            problems = []
            if done:
                problems += output_differences(output_dir(reference), output_dir(run))
                problems += store_differences(store_dir(reference), store_dir(run))
                problems += [f"left {p}" for p in leftovers(output_dir(run), Path(run["run_dir"]))]
            identical = done and not problems
            totals["identical"] += int(identical)
            count = telemetry_count(database.url, result.run_id, run["last_seq"])
            totals["lost"] += count.lost
            totals["duplicates"] += count.duplicates
            print(
                f"{point.label:<34} {result.stage_at_kill or '-':<14} {result.attempts:>8} "
                f"{'yes' if identical else 'NO':>9} {count.lost:>5}"
                + (f"  {problems}" if problems else ""),
                flush=True,
            )
        finally:
            daemon.cleanup()
            database.drop()
    totals["points"] = len(points)
    return totals


def run_bad_inputs(tmp: Path) -> tuple[int, int]:
    from pipeline.demo import generate
    from tests.bad_inputs import run_all_cases

    demo = tmp / "demo"
    generate(demo, "small", seed=0)
    return run_all_cases(tmp, demo)


def run_fuzz(seconds: float, tmp: Path) -> dict[str, int]:
    from tests.fuzzing import fuzz_daemon

    return fuzz_daemon(tmp, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", default=os.environ.get("GEOD_FAULT_POINTS", "all"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fuzz-seconds", type=float, default=60.0)
    parser.add_argument("--skip", default="", help="comma list of faults,bad,fuzz to skip")
    args = parser.parse_args()
    server_url = os.environ.get("GEOD_TEST_DATABASE_URL", DEFAULT_URL)
    skip = set(filter(None, args.skip.split(",")))
    rows: list[Row] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="geod-faults-") as scratch:
        tmp = Path(scratch)
        if "faults" not in skip:
            t = run_faults(server_url, args.points, args.seed, tmp / "faults")
            n = t["points"]
            rows += [
                _count("faults injected (SIGKILL landed mid-run)", t["injected"], n),
                _count("runs resumed to done", t["resumed"], n),
                _count("outputs identical (files, store, no temp)", t["identical"], n),
                _zero("telemetry rows lost", t["lost"]),
                _zero("telemetry duplicate rows", t["duplicates"]),
            ]
        if "bad" not in skip:
            clean, tried = run_bad_inputs(tmp / "bad")
            rows.append(_count("bad inputs rejected cleanly", clean, tried))
        if "fuzz" not in skip:
            f = run_fuzz(args.fuzz_seconds, tmp / "fuzz")
            rows += [
                (f"fuzz examples in {f['seconds']} s", str(f["examples"]), "-", "-"),
                _zero("fuzz: daemon crashes", f["crashes"]),
                _zero("fuzz: leaked descriptors", max(0, f["leaked_fds"])),
            ]
    print()
    print(f"{'check':<44} {'got':>6} {'target':>7} {'ratio':>6}")
    for label, got, target, ratio in rows:
        print(f"{label:<44} {got:>6} {target:>7} {ratio:>6}")
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    return 0


Row = tuple[str, str, str, str]


def _count(label: str, got: int, target: int) -> Row:
    """A count whose target is every case: the ratio is got / target."""
    return (label, str(got), str(target), f"{got / target:.2f}" if target else "-")


def _zero(label: str, got: int) -> Row:
    """A count whose target is zero."""
    return (label, str(got), "0", "ok" if got == 0 else "FAIL")


if __name__ == "__main__":
    sys.exit(main())
