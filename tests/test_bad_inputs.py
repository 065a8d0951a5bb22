"""Every bad input of the table (tests/bad_inputs.py), end to end.

``geod check`` / ``geod run`` on each case, and the same config through a live
daemon with ``geod start --socket``: one line naming what and where, a non-zero
exit or a failed run, nothing under a final output name, and the daemon still
answering ``hello``. A NaN-only layer is the valid case of the table: it is
submitted first, runs alongside all the bad ones and must complete with an
all-null column. Then the daemon's own bad environments: PostgreSQL down at
start (it starts and spools), a socket path too long, a stale socket file.

Each test of the table records its case's name (``record_property``), so
bench/faults.py, which runs the two table tests under pytest with
``--junitxml``, counts a case as rejected cleanly when all its tests passed.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from supervisor.client import Client
from tests.bad_inputs import (
    CASES,
    RUN_TIMEOUT,
    BadInput,
    can_mount,
    check_cli,
    daemon_problems,
    error_line,
    geod,
    nan_only_table,
    prepared,
    through_daemon,
)
from tests.daemon_harness import DaemonHarness
from tests.faults import WORKER, FaultDaemon

#: A TCP port nothing listens on (the discard port; closed on any test machine).
CLOSED_PORT = 9
CLI_CASES = [(case, verb) for case in CASES for verb in case.verbs]


def _skip_unmountable(case: BadInput) -> None:
    if case.mount is not None and not can_mount():
        pytest.skip("needs root to mount a tmpfs")


@pytest.mark.parametrize(
    ("case", "verb"), CLI_CASES, ids=[f"{verb}-{case.name}" for case, verb in CLI_CASES]
)
def test_cli_rejects_bad_input_in_one_line(
    case: BadInput,
    verb: str,
    tmp_path: Path,
    demo_dir: Path,
    record_property: Callable[[str, object], None],
) -> None:
    record_property("bad_input", case.name)
    _skip_unmountable(case)
    with prepared(case, tmp_path / "case", demo_dir) as config:
        assert check_cli(case, verb, config, tmp_path / "case") == []


def test_nan_only_layer_completes_with_an_all_null_column(tmp_path: Path, demo_dir: Path) -> None:
    config = nan_only_table(tmp_path, demo_dir)
    result = geod("run", str(config))
    assert result.returncode == 0, result.stderr
    # No analysis configured: the progress shows no "analysis 0/? methods" bar.
    assert "0/?" not in result.stderr and "methods" not in result.stderr, result.stderr
    assert "chunks" in result.stderr  # the bars themselves are printed
    table = pq.read_table(tmp_path / "out" / "table.parquet")
    assert table.num_rows > 0 and table.column("richness").null_count < table.num_rows
    assert table.column("empty").null_count == table.num_rows


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonHarness]:
    tmp = tmp_path_factory.mktemp("bad-daemon")
    # disk.min_free 0: the "disk full" case is the worker meeting ENOSPC mid-write (what
    # happens when space runs out between two checks), not the daemon's low-disk pause.
    with_workers = DaemonHarness(tmp, worker_command=WORKER, concurrency=2, disk={"min_free": 0})
    try:
        yield with_workers.start()
    finally:
        with_workers.cleanup()


@pytest.fixture(scope="module")
def valid_run(
    daemon: DaemonHarness, demo_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    """The NaN-only run, submitted before the bad ones and running alongside them."""
    tmp = tmp_path_factory.mktemp("valid")
    return daemon.submit(nan_only_table(tmp, demo_dir)), tmp


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_daemon_rejects_bad_input_and_stays_up(
    case: BadInput,
    daemon: DaemonHarness,
    valid_run: tuple[str, Path],
    tmp_path: Path,
    demo_dir: Path,
    record_property: Callable[[str, object], None],
) -> None:
    record_property("bad_input", case.name)
    _skip_unmountable(case)
    with prepared(case, tmp_path / "case", demo_dir) as config:
        message = through_daemon(daemon, config)
        assert daemon_problems(case, message, tmp_path / "case") == []
    with Client(daemon.socket_path) as client:
        assert client.hello.pid == daemon.process.pid


def test_valid_run_alongside_the_bad_ones_completed(
    daemon: DaemonHarness, valid_run: tuple[str, Path]
) -> None:
    run_id, tmp = valid_run
    run = daemon.wait(run_id, "done", RUN_TIMEOUT)
    assert run["exit_code"] == 0
    table = pq.read_table(tmp / "out" / "table.parquet")
    assert table.num_rows > 0 and table.column("empty").null_count == table.num_rows


# -- the daemon's own environment -------------------------------------------------------


def test_postgres_unreachable_at_start_daemon_runs_and_spools(
    tmp_path: Path, demo_dir: Path
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{CLOSED_PORT}/geod"
    daemon = FaultDaemon(tmp_path, url)
    try:
        daemon.start()
        (tmp_path / "run").mkdir()
        run_id = daemon.submit(nan_only_table(tmp_path / "run", demo_dir))
        assert daemon.wait(run_id, "done", RUN_TIMEOUT)["exit_code"] == 0
        status = daemon.call("status")
        assert status["pid"] == daemon.process.pid
        assert "telemetry database not reachable" in daemon.log()
        spool = daemon.state_dir / "telemetry"
        assert sum(p.stat().st_size for p in spool.iterdir() if p.is_file()) > 0
    finally:
        daemon.cleanup()


def test_socket_path_too_long_is_one_line_exit_1(tmp_path: Path) -> None:
    long_dir = tmp_path / ("d" * 60) / ("e" * 60)
    long_dir.mkdir(parents=True)
    settings = tmp_path / "geod.yml"
    settings.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "socket_path": str(long_dir / "geod.sock"),
                "telemetry": False,
            }
        )
    )
    result = geod("serve", "--config", str(settings))
    assert result.returncode == 1
    assert "socket path too long" in error_line(result.stderr)
    assert str(long_dir / "geod.sock") in error_line(result.stderr)


def test_stale_socket_is_replaced_live_socket_never_deleted(tmp_path: Path) -> None:
    """A SIGKILLed daemon's socket file is reused; a socket someone listens on is kept."""
    first = DaemonHarness(tmp_path / "one")
    try:
        first.start().crash()
        stale = first.socket_path
        assert stale.is_socket()
        first.start()
        assert first.call("status")["pid"] == first.process.pid
    finally:
        first.cleanup()
    second = DaemonHarness(tmp_path / "two")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(second.socket_path))
        listener.listen()
        process = second.spawn()
        assert process.wait(30) == 1
        assert second.socket_path.is_socket(), "a live daemon's socket must never be deleted"
        listener.settimeout(5)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(second.socket_path))  # still the listener's socket
        probe.close()
        assert "listening" in second.log()
    finally:
        listener.close()
        second.cleanup()
