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

4. The trust-boundary cases (``--skip trust`` to leave out): each is a test that
   runs a real daemon (a second uid where it matters); they run under pytest in
   a subprocess (``-p no:cacheprovider``, JUnit XML read back), so this script
   needs nothing from tests/ for them. Counted: cases that hold, per group.

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


#: Trust-boundary groups: label → pytest node ids (files or single tests).
TRUST_CASES: dict[str, tuple[str, ...]] = {
    "trust: JSON-RPC ids, NaN, nesting, NUL, names": (
        "tests/test_protocol.py::test_invalid_id_refused_without_executing",
        "tests/test_protocol.py::test_non_finite_ids_never_echoed",
        "tests/test_protocol.py::test_deep_nesting_is_an_error_reply",
        "tests/test_protocol.py::test_nul_byte_in_config_path_is_one_line",
        "tests/test_protocol.py::test_run_names_must_match_whole",
    ),
    "trust: files read for clients (config, /dev)": (
        "tests/test_config.py::test_a_file_that_is_not_a_config_is_not_quoted",
        "tests/test_config.py::test_excerpts_of_file_content_are_capped",
        "tests/test_config.py::test_config_must_be_a_small_regular_file",
        "tests/test_config.py::test_dataset_in_a_pseudo_filesystem_refused_before_resolution",
        "tests/test_cli_offline.py::test_dev_zero_refused_at_once",
        "tests/test_daemon_control.py::test_bad_submissions_rejected_daemon_stays_up",
    ),
    "trust: socket directory and server uid": ("tests/test_socket_trust.py",),
    "trust: modes 0700/0600, pid file": (
        "tests/test_cli_daemonize.py::"
        "test_serve_after_start_rewrites_pid_file_and_keeps_state_private",
    ),
    "trust: parallel starts reach one daemon": (
        "tests/test_cli_daemonize.py::test_parallel_starts_reach_one_daemon",
    ),
    "trust: one writer per output, live partials": ("tests/test_shared_outputs.py",),
    "trust: run dir vanished, runs/ unwritable": ("tests/test_run_dir_faults.py",),
    "trust: shared database, two daemons": (
        "tests/test_telemetry_daemon.py::test_two_daemons_share_one_database_without_mixing_runs",
        "tests/test_telemetry_migrate.py::"
        "test_run_identity_migration_keeps_rows_under_a_legacy_key",
    ),
    "trust: workers run as the submitting user": ("tests/test_run_as_peer.py",),
}


def run_trust(tmp: Path) -> list[tuple[str, int, int, int]]:
    """(label, passed, tried, skipped) per trust group, from one pytest subprocess."""
    import subprocess
    import xml.etree.ElementTree as ET

    report = tmp / "trust.xml"
    tmp.mkdir(parents=True, exist_ok=True)
    node_ids = [node for nodes in TRUST_CASES.values() for node in nodes]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
            *node_ids,
        ],
        cwd=REPO,
        check=False,
    )
    outcomes: list[tuple[str, str]] = []  # (file::name, passed|failed|skipped)
    for case in ET.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/") + ".py"
        name = f"{module}::{case.get('name', '')}"
        if case.find("skipped") is not None:
            outcomes.append((name, "skipped"))
        elif case.find("failure") is not None or case.find("error") is not None:
            outcomes.append((name, "failed"))
        else:
            outcomes.append((name, "passed"))
    rows = []
    for label, nodes in TRUST_CASES.items():
        mine = [o for n, o in outcomes if any(n.startswith(node) for node in nodes)]
        tried = sum(o != "skipped" for o in mine)
        rows.append((label, mine.count("passed"), tried, mine.count("skipped")))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", default=os.environ.get("GEOD_FAULT_POINTS", "all"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fuzz-seconds", type=float, default=60.0)
    parser.add_argument("--skip", default="", help="comma list of faults,bad,fuzz,trust to skip")
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
        if "trust" not in skip:
            for label, passed, tried, skipped in run_trust(tmp / "trust"):
                note = f" ({skipped} skipped)" if skipped else ""
                rows.append(_count(label + note, passed, tried))
    print()
    print(f"{'check':<52} {'got':>6} {'target':>7} {'ratio':>6}")
    for label, got, target, ratio in rows:
        print(f"{label:<52} {got:>6} {target:>7} {ratio:>6}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
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
