"""The daemon's own directories misbehaving under it: a run directory deleted mid-run and
an unwritable ``runs/``. The affected run fails with one line; the daemon keeps serving."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from supervisor.protocol import ErrorCode, ProtocolError
from tests.daemon_harness import fake_config, running_daemon


def test_run_directory_deleted_mid_run(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        run_id = daemon.submit(fake_config(tmp_path / "a", "steps400"))
        run = daemon.wait(run_id, lambda r: r["progress"] > 0)
        shutil.rmtree(run["run_dir"])
        failed = daemon.wait(run_id, "failed")
        assert failed["error"] == f"run directory vanished: {run['run_dir']}"
        assert failed["retry_at"] is None and failed["pid"] is None
        # Every control verb answers, with its documented error where it does not apply.
        for method, params, code in (
            ("runs.kill", {"run": run_id, "force": True}, ErrorCode.BAD_STATE),
            ("runs.pause", {"run": run_id}, ErrorCode.BAD_STATE),
            ("runs.resume", {"run": run_id}, ErrorCode.BAD_STATE),
        ):
            with pytest.raises(ProtocolError) as error:
                daemon.call(method, **params)
            assert error.value.code == code, error.value.message
        assert daemon.call("runs.get", run=run_id)["state"] == "failed"
        assert daemon.call("logs.tail", run=run_id)
        daemon.call("memory.history", run=run_id)
        daemon.call("subscribe")
        assert daemon.call("status")["counts"] == {"failed": 1}
        other = daemon.submit(fake_config(tmp_path / "b", "steps5"))
        daemon.wait(other, "done")
        assert "Traceback" not in daemon.log()


def _immutable(path: Path, on: bool) -> bool:
    result = subprocess.run(
        ["chattr", "+i" if on else "-i", str(path)], capture_output=True, check=False
    )
    return result.returncode == 0


def test_unwritable_runs_directory_is_one_line(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        runs = daemon.state_dir / "runs"
        runs.mkdir(exist_ok=True)
        if shutil.which("chattr") is None or not _immutable(runs, True):
            pytest.skip("chattr +i is not supported here")
        try:
            with pytest.raises(ProtocolError) as error:
                daemon.submit(fake_config(tmp_path / "a", "steps5"))
        finally:
            _immutable(runs, False)
        message = error.value.message
        assert message.startswith(f"cannot create a run directory in {runs}: ")
        assert "Operation not permitted" in message and "\n" not in message
        assert "internal error" not in message
        run_id = daemon.submit(fake_config(tmp_path / "b", "steps5"))
        daemon.wait(run_id, "done")
