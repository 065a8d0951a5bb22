"""Clean-up and disk space through a real daemon: `geod clean`, retention, low-disk pauses.

The CLI is the installed ``geod`` entry point in a subprocess against a
DaemonHarness daemon (fake workers); free space is stood in for by the
``disk.probe_file`` the settings name, everything else is real.
"""

from __future__ import annotations

import os
import subprocess
import sysconfig
from pathlib import Path

from supervisor.cli.main import EXIT_BAD_STATE, EXIT_USAGE
from tests.daemon_harness import DaemonHarness, fake_config, running_daemon

GEOD = str(Path(sysconfig.get_path("scripts")) / "geod")


def _geod(daemon: DaemonHarness, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GEOD_SOCKET=str(daemon.socket_path))
    return subprocess.run(
        [GEOD, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _finished_run(daemon: DaemonHarness, tmp: Path, name: str) -> tuple[str, Path]:
    config = fake_config(tmp / name, f"steps3-bulk200-{name}")
    run_id = daemon.submit(config)
    daemon.wait(run_id, "done")
    return run_id, daemon.state_dir / "runs" / run_id


def test_clean_removes_work_files_of_finished_runs_only(tmp_path: Path) -> None:
    with running_daemon(tmp_path, concurrency=2) as daemon:
        done_id, done_dir = _finished_run(daemon, tmp_path, "a")
        output = tmp_path / "a" / "out" / "a.parquet"
        output.parent.mkdir(parents=True)
        output.write_bytes(b"result")
        busy = daemon.submit(fake_config(tmp_path / "b", "steps400-slow50"))
        daemon.wait(busy, "running")

        status = _geod(daemon, "status")
        assert status.returncode == 0 and "DISK" in status.stdout
        listed = daemon.wait(done_id, lambda r: (r["disk_used"] or 0) > 200 * 1024)
        used = listed["disk_used"]
        row = next(line for line in status.stdout.splitlines() if line.startswith(done_id))
        assert " 2" in row and "KiB" in row  # 200+ KiB in the DISK column

        dry = _geod(daemon, "clean", done_id, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.startswith(f"{done_id}\twould free ")
        assert (done_dir / "work" / "bulk.bin").exists()

        refused = _geod(daemon, "clean", done_id, busy)
        assert refused.returncode == EXIT_BAD_STATE
        assert refused.stderr.strip() == (
            f"geod: cannot clean run {busy}: it is running "
            "(only done, failed or killed runs are cleaned)"
        )
        assert (done_dir / "work").exists()  # a refused request cleans nothing

        cleaned = _geod(daemon, "clean", "--done")
        assert cleaned.returncode == 0, cleaned.stderr
        first, total = cleaned.stdout.splitlines()
        assert first.startswith(f"{done_id}\tfreed ") and first.endswith(str(done_dir / "work"))
        assert total.startswith("1 run(s): freed ")
        assert not (done_dir / "work").exists()
        # Outputs, history and the run itself stay.
        assert output.read_bytes() == b"result"
        assert (done_dir / "events.ndjson").stat().st_size > 0
        assert any("step 3/3" in e["message"] for e in daemon.call("logs.tail", run=done_id))
        after = daemon.wait(done_id, lambda r: r["disk_used"] < used - 200 * 1024)
        assert after["state"] == "done"

        again = _geod(daemon, "clean", done_id, "--json")
        assert again.returncode == 0 and '"freed": 0' in again.stdout
        assert _geod(daemon, "clean").returncode == EXIT_USAGE
        assert _geod(daemon, "clean", "--older-than", "soon").returncode == EXIT_USAGE
        unknown = _geod(daemon, "clean", "r9999")
        assert unknown.returncode == 4 and unknown.stderr.strip() == "geod: no run 'r9999'"
        daemon.call("runs.kill", run=busy)


def test_retention_cleans_finished_runs_on_its_timer(tmp_path: Path) -> None:
    daemon = DaemonHarness(tmp_path, concurrency=2)
    try:
        daemon.start()
        old_id, old_dir = _finished_run(daemon, tmp_path, "old")
        daemon.stop()
        daemon.write_settings(
            **{**daemon.settings_values, "retention": "1s", "retention_interval": 0.2}
        )
        daemon.start()
        daemon.wait(old_id, lambda r: "retention: cleaned 1 run(s)" in daemon.log())
        assert not (old_dir / "work").exists()
        assert daemon.run(old_id)["state"] == "done"
    finally:
        daemon.cleanup()


def test_a_run_pauses_on_low_disk_and_resumes_when_space_returns(tmp_path: Path) -> None:
    probe = tmp_path / "free"
    disk = {"min_free": "1GiB", "interval": 0.2, "probe_file": str(probe)}
    with running_daemon(tmp_path, disk=disk) as daemon:
        run_id = daemon.submit(fake_config(tmp_path / "d", "steps80-slow50"))
        daemon.wait(run_id, lambda r: r["state"] == "running" and r["progress"] > 0)
        probe.write_text("300MiB")
        paused = daemon.wait(run_id, "paused")
        work = daemon.state_dir / "runs" / run_id / "work"
        assert paused["paused_by"] == "disk"
        assert paused["wait_reason"] == (
            f"paused for disk space: 300 MiB free in {work}, below disk.min_free 1.0 GiB"
        )
        # A queued run does not start on that disk: it waits, and starts once space is back.
        queued = daemon.submit(fake_config(tmp_path / "e", "steps5"))
        waiting = daemon.wait(queued, lambda r: r["wait_reason"] is not None)
        assert waiting["state"] == "queued"
        assert waiting["wait_reason"].startswith("waiting for disk space: 300 MiB free in ")
        probe.write_text("5GiB")
        done = daemon.wait(run_id, "done")
        assert done["paused_by"] is None and done["error"] is None
        assert (work / "done").read_text() == "80"
        assert daemon.wait(queued, "done")["wait_reason"] is None
