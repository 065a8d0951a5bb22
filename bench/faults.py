"""Fault-injection summary: crash-anywhere resume, bad inputs, protocol fuzzing.

    GEOD_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/faults.py [--points all] [--fuzz-seconds 60] [--seed 0] \\
        [--skip faults,bad,fuzz,trust]

Every section is a set of tests run by one pytest subprocess (``-p
no:cacheprovider``, ``--junitxml``); this script imports nothing from tests/.
Parameters reach the tests through environment variables, and the tests hand
their figures back as JUnit properties (``record_property``, recorded before
they assert), which this script reads to print one table.

1. tests/test_faults_resume.py with ``GEOD_FAULT_POINTS`` (``--points``: every
   kill point of tests/faults.py by default, each anchor × worker/daemon/both
   plus seeded random times) and ``GEOD_FAULT_SEED`` (``--seed``): an
   uninterrupted reference run, then one run per point under a real daemon
   (``geod serve``, telemetry in a fresh PostgreSQL database), SIGKILLed there
   and resumed. Counted from each point's properties: faults injected, runs
   resumed to "done", outputs identical (files, layer store, no temporary
   files), telemetry rows lost and duplicated. A point whose test failed before
   recording counts as not resumed.
2. The bad-input table of tests/test_bad_inputs.py through ``geod check``,
   ``geod run`` and the daemon: a case (its ``bad_input`` property) is rejected
   cleanly when all its tests passed (one line naming it, non-zero exit, daemon
   still up, nothing under a final name); cases skipped everywhere (a tmpfs
   mount without root) are not counted.
3. tests/fuzzing.py (named explicitly: the suite never collects it) with
   ``GEOD_FUZZ_SECONDS`` (``--fuzz-seconds``), hypothesis against a live daemon:
   it never dies, answers a probe after every example, and holds no more
   descriptors at the end than at the start.
4. The trust-boundary cases (each a test running a real daemon, a second uid
   where it matters). Counted: cases that hold, per group.

Prints one table; the ratio column is achieved / target.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
FAULT_TESTS = ("tests/test_faults_resume.py",)
BAD_INPUT_TESTS = (
    "tests/test_bad_inputs.py::test_cli_rejects_bad_input_in_one_line",
    "tests/test_bad_inputs.py::test_daemon_rejects_bad_input_and_stays_up",
)
FUZZ_TESTS = ("tests/fuzzing.py",)
#: pytest-timeout's per-test bound (pyproject) must leave room for the fuzzing budget.
TIMEOUT_MARGIN = 300.0

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


@dataclass
class Outcome:
    """One test case of the JUnit report: its node id, result and recorded properties."""

    node: str
    result: str  # passed | failed | skipped
    message: str = ""
    properties: dict[str, str] = field(default_factory=dict)


def run_pytest(
    node_ids: list[str], env: dict[str, str], report: Path, timeout: float
) -> list[Outcome]:
    """Run ``node_ids`` in one pytest subprocess; every test case of its JUnit XML."""
    report.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--timeout={timeout:.0f}",
            "-o",
            "junit_family=xunit1",  # record_property needs it
            f"--junitxml={report}",
            *node_ids,
        ],
        cwd=REPO,
        env={**os.environ, **env},
        check=False,
    )
    outcomes = []
    for case in ET.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/") + ".py"
        outcome = Outcome(f"{module}::{case.get('name', '')}", "passed")
        for tag in ("failure", "error", "skipped"):  # a skip decides, as pytest reports it
            found = case.find(tag)
            if found is not None:
                outcome.result = "skipped" if tag == "skipped" else "failed"
                outcome.message = (found.get("message") or "").partition("\n")[0]
        outcome.properties = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        outcomes.append(outcome)
    return outcomes


def of(outcomes: list[Outcome], nodes: tuple[str, ...]) -> list[Outcome]:
    """The outcomes of ``nodes`` (files or node ids, parametrized cases included)."""
    return [o for o in outcomes if any(o.node.startswith(node) for node in nodes)]


def fault_rows(outcomes: list[Outcome]) -> list[Row]:
    """Per-point lines (printed), then the five summary rows of the kill points."""
    totals = dict.fromkeys(("landed", "resumed", "identical", "lost", "duplicates"), 0)
    print(f"{'point':<34} {'stage at kill':<14} {'attempts':>8} {'identical':>9} {'lost':>5}")
    for outcome in outcomes:
        figures = outcome.properties
        if "label" not in figures:  # failed before its figures: counted as not resumed
            print(f"{outcome.node.split('[')[-1].rstrip(']'):<34} FAILED: {outcome.message}")
            continue
        for name in totals:
            totals[name] += int(figures[name])
        problems = f"  [{figures['problems']}]" if figures["problems"] else ""
        print(
            f"{figures['label']:<34} {figures['stage_at_kill']:<14} {figures['attempts']:>8} "
            f"{'yes' if figures['identical'] == '1' else 'NO':>9} {figures['lost']:>5}{problems}"
        )
    n = len(outcomes)
    return [
        _count("faults injected (SIGKILL landed mid-run)", totals["landed"], n),
        _count("runs resumed to done", totals["resumed"], n),
        _count("outputs identical (files, store, no temp)", totals["identical"], n),
        _zero("telemetry rows lost", totals["lost"]),
        _zero("telemetry duplicate rows", totals["duplicates"]),
    ]


def bad_input_row(outcomes: list[Outcome]) -> Row:
    """A case is tried when any of its tests ran, clean when every one that ran passed."""
    results: dict[str, list[str]] = {}
    for outcome in outcomes:
        if outcome.result != "skipped":
            results.setdefault(outcome.properties.get("bad_input", outcome.node), []).append(
                outcome.result
            )
    for case, got in results.items():
        print(f"{case:<40} {'clean' if set(got) == {'passed'} else got}")
    clean = sum(set(got) == {"passed"} for got in results.values())
    return _count("bad inputs rejected cleanly", clean, len(results))


def fuzz_rows(outcomes: list[Outcome]) -> list[Row]:
    """Examples, crashes and leaked fds of the fuzzing test (a crash if it recorded none)."""
    figures = outcomes[0].properties if outcomes else {}
    if "examples" not in figures:
        message = outcomes[0].message if outcomes else "not run"
        print(f"fuzzing FAILED: {message}")
        figures = {"seconds": "-", "examples": "0", "crashes": "1", "leaked_fds": "0"}
    return [
        (f"fuzz examples in {figures['seconds']} s", figures["examples"], "-", "-"),
        _zero("fuzz: daemon crashes", int(figures["crashes"])),
        _zero("fuzz: leaked descriptors", int(figures["leaked_fds"])),
    ]


def trust_rows(outcomes: list[Outcome]) -> list[Row]:
    """Cases that hold per trust group (skipped ones noted, not counted)."""
    rows = []
    for label, nodes in TRUST_CASES.items():
        mine = [o.result for o in of(outcomes, nodes)]
        tried = sum(result != "skipped" for result in mine)
        skipped = mine.count("skipped")
        note = f" ({skipped} skipped)" if skipped else ""
        rows.append(_count(label + note, mine.count("passed"), tried))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", default=os.environ.get("GEOD_FAULT_POINTS", "all"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fuzz-seconds", type=float, default=60.0)
    parser.add_argument("--skip", default="", help="comma list of faults,bad,fuzz,trust to skip")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    sections = {
        "faults": FAULT_TESTS,
        "bad": BAD_INPUT_TESTS,
        "fuzz": FUZZ_TESTS,
        "trust": tuple(node for nodes in TRUST_CASES.values() for node in nodes),
    }
    node_ids = [node for name, nodes in sections.items() if name not in skip for node in nodes]
    env = {
        "GEOD_TEST_DATABASE_URL": os.environ.get("GEOD_TEST_DATABASE_URL", DEFAULT_URL),
        "GEOD_FAULT_POINTS": args.points,
        "GEOD_FAULT_SEED": str(args.seed),
        "GEOD_FUZZ_SECONDS": str(args.fuzz_seconds),
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="geod-faults-") as scratch:
        report = Path(scratch) / "faults.xml"
        outcomes = run_pytest(node_ids, env, report, args.fuzz_seconds + TIMEOUT_MARGIN)
    print()
    rows: list[Row] = []
    if "faults" not in skip:
        rows += fault_rows(of(outcomes, FAULT_TESTS))
    if "bad" not in skip:
        rows.append(bad_input_row(of(outcomes, BAD_INPUT_TESTS)))
    if "fuzz" not in skip:
        rows += fuzz_rows(of(outcomes, FUZZ_TESTS))
    if "trust" not in skip:
        rows += trust_rows(outcomes)
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
