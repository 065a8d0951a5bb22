"""A root daemon serving a socket group runs each member's work as that member.

The member (uid 65534 here, via a forked child that drops to it) submits through
the real socket. A config only root can read is refused as unreadable; a config
they can read, naming a raster only root can read, gets a worker running as them
in a run directory they own, and the raster is unreadable to it.

The worker is a shell script here, not ``python -m pipeline.worker``: this
machine's interpreter lives under /root (0700), which uid 65534 cannot execute.
A deployment puts the venv where its users can run it (/opt/geod).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.transform import from_origin

from supervisor.client import Client
from supervisor.protocol import ErrorCode, ProtocolError
from tests.as_user import call_as
from tests.daemon_harness import running_daemon

NOBODY = 65534
NOGROUP = 65534
#: Records whom it runs as in its work dir, then reads the dataset as the pipeline would.
WORKER = 'mkdir -p "$3" && id -u > "$3/uid" && head -c 4 "$SECRET" > /dev/null'
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs a root daemon and a second uid")


@pytest.fixture()
def shared() -> Iterator[Path]:
    """A directory both root and the member can reach (pytest's tmp is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="geod-peer-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _submit_as_member(socket_path: Path, config: Path) -> dict[str, Any]:
    """Submit ``config`` as uid/gid 65534; the reply, or the error's code and message."""

    def submit() -> dict[str, Any]:
        try:
            with Client(socket_path) as client:
                return {"result": client.submit(str(config)).model_dump(mode="json")}
        except ProtocolError as exc:
            return {"code": exc.code, "message": exc.message}

    return call_as(NOBODY, NOGROUP, submit)


def _raster(path: Path) -> Path:
    profile = {
        "driver": "GTiff",
        "width": 8,
        "height": 8,
        "count": 1,
        "dtype": "float32",
        "crs": "EPSG:4326",
        "transform": from_origin(0, 8, 1, 1),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.ones((1, 8, 8), dtype="float32"))
    return path


def _config(path: Path, raster: Path) -> Path:
    data = {
        "name": "peer",
        "datasets": [{"name": "layer", "path": str(raster)}],
        "paths": {
            "work_dir": str(path.parent / "work"),
            "output_dir": str(path.parent / "out"),
        },
        # The failing run still goes through its default retries (each a worker run as
        # the member); a short first delay spares the 2 + 4 + 8 s of the default backoff.
        "restart": {"backoff": 0.1},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def test_member_runs_are_read_and_run_as_the_member(
    shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = shared / "state"
    secret_raster = shared / "secret.tif"
    monkeypatch.setenv("SECRET", str(secret_raster))  # inherited by the daemon and its workers
    with running_daemon(
        shared / "daemon",
        state_dir=str(state),
        socket_group="nogroup",
        worker_command=["/bin/sh", "-c", WORKER, "worker"],
    ) as daemon:
        os.chmod(daemon.socket_dir, 0o755)  # the member reaches the 0660 group socket
        _raster(secret_raster)
        secret_raster.chmod(0o600)
        root_only = _config(shared / "root-only.yml", secret_raster)
        root_only.chmod(0o600)

        refused = _submit_as_member(daemon.socket_path, root_only)
        assert refused["code"] == ErrorCode.BAD_CONFIG, refused
        assert refused["message"] == f"{root_only}: permission denied"

        readable = _config(shared / "readable.yml", secret_raster)
        readable.chmod(0o644)
        answer = _submit_as_member(daemon.socket_path, readable)
        assert "result" in answer, answer
        run = answer["result"]
        assert run["owner"]["uid"] == NOBODY
        run_dir = Path(run["run_dir"])
        assert (run_dir.stat().st_uid, run_dir.stat().st_gid) == (NOBODY, NOGROUP)
        final = daemon.wait(run["id"], lambda r: r["state"] in ("failed", "done"))
        assert final["state"] == "failed"
        assert (run_dir / "work" / "uid").read_text().strip() == str(NOBODY)
        logs = daemon.call("logs.tail", run=run["id"], limit=1000)
        messages = " ".join(e.get("message", "") for e in logs)
        assert f"cannot open '{secret_raster}' for reading: Permission denied" in messages, messages
        # Globs are expanded as the member lists folders: a folder only root can
        # list matches nothing for them (its file names never reach their run).
        private = shared / "private"
        private.mkdir(mode=0o700)
        _raster(private / "hidden.tif")
        globbed = shared / "globbed.yml"
        globbed.write_text(
            yaml.safe_dump({"name": "peer", "datasets": [{"glob": "private/*.tif"}]})
        )
        globbed.chmod(0o644)
        refused = _submit_as_member(daemon.socket_path, globbed)
        assert refused["code"] == ErrorCode.BAD_CONFIG, refused
        assert refused["message"] == f"{globbed}: datasets[0].glob: private/*.tif matches no file"
        private.chmod(0o755)
        answer = _submit_as_member(daemon.socket_path, globbed)
        assert "result" in answer, answer
        frozen = yaml.safe_load((Path(answer["result"]["run_dir"]) / "config.yml").read_text())
        assert [d["name"] for d in frozen["datasets"]] == ["hidden"]
        daemon.call("runs.kill", run=answer["result"]["id"], force=True)
        # The root user's own runs still run as root.
        root_run = daemon.submit(readable)
        assert daemon.run(root_run)["owner"] is None
        daemon.call("runs.kill", run=root_run, force=True)
