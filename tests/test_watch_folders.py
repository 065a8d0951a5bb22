"""Watched folders and live settings reload: a real daemon, real files, the real observer.

Each test starts a daemon (``tests.daemon_harness``) whose ``geod.yml`` has
``watch:`` rules with short ``settle_seconds``, writes rasters into the folders
the way users and tools do (slow copies, atomic renames, replacements,
deletions, a thousand files at once), and reads what the daemon made of them
through ``sources.list``, ``status``, its runs and telemetry in PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml

from supervisor.client import Client
from tests import daemon_harness
from tests.daemon_harness import DaemonHarness, running_daemon
from tests.rasters import global_geotiff as _raster
from tests.tui_support import pilot_test
from tui.app import GeodApp
from tui.screens.sources import SourcesScreen

#: Short settling keeps the tests to seconds; the logic is the same at 10 s.
SETTLE = 1.0
TIMEOUT = 60.0
POLL = 0.05
MIB = 1024 * 1024
GEOD = str(Path(sys.executable).parent / "geod")


def _rule(folder: Path, **keys: Any) -> dict[str, Any]:
    return {"dir": str(folder), "settle_seconds": SETTLE, **keys}


def _sources(daemon: DaemonHarness, rule: str | None = None) -> dict[str, dict[str, Any]]:
    params = {} if rule is None else {"rule": rule}
    return {s["path"]: s for s in daemon.call("sources.list", **params)}


def _until(what: Callable[[], Any], message: Callable[[], str], timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        assert time.monotonic() < deadline, message()
        time.sleep(POLL)


def _slow_copy(source: Path, target: Path, chunk: int, pause: float, stall_at: int) -> None:
    """Copy in ``chunk``-byte writes with ``pause`` between them, stalling once for longer
    than the settle time at write ``stall_at`` (a copy over a slow link that hiccups)."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        index = 0
        while block := src.read(chunk):
            dst.write(block)
            dst.flush()
            index += 1
            time.sleep(SETTLE * 1.6 if index == stall_at else pause)


def _watch_rows(url: str, rule: str) -> list[tuple[Any, ...]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT path, status, change, size, width FROM geod.raster_sources"
            " WHERE run = %s ORDER BY seq",
            (f"watch:{rule}",),
        )
        return cur.fetchall()


def test_slow_copy_rename_replace_delete(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_harness, "DAEMON_SCRIPT", daemon_harness.DAEMON_WITH_TELEMETRY)
    inbox, drop, staging = tmp_path / "inbox", tmp_path / "drop", tmp_path / "staging"
    inbox.mkdir()
    drop.mkdir()
    big = _raster(staging / "big.tif", side=3620)  # float32, uncompressed: 50 MiB
    assert big.stat().st_size >= 50 * MIB
    rules = [_rule(inbox), _rule(drop, settle_seconds=30.0, attempts=1)]
    with running_daemon(
        tmp_path / "d", watch=rules, telemetry=True, database_url=database_url
    ) as daemon:
        # 1. A 50 MiB GeoTIFF copied in 1 MiB writes, with a stall longer than the settle
        #    time halfway: the partial file is inspected, refused, and taken once complete.
        _slow_copy(big, inbox / "big.tif", MIB, 0.01, stall_at=25)
        copied = time.time()
        found = _until(
            lambda: _sources(daemon).get(str(inbox / "big.tif")),
            lambda: daemon.log()[-3000:],
        )
        assert found["status"] == "ok" and found["change"] == "new"
        assert found["size"] == big.stat().st_size and found["width"] == 3620
        assert found["taken"] >= copied
        assert "not a complete raster yet" in daemon.log()  # the stall was seen, and retried
        os.chmod(inbox / "big.tif", 0o640)  # touched, not rewritten: not taken again

        # 2. Renamed in (from a hidden temporary name, and from outside the folder):
        #    taken at once, although this rule settles for 30 s.
        _raster(drop / ".fresh.tif.part")
        _raster(staging / "moved.tif")
        renamed = time.monotonic()
        os.rename(drop / ".fresh.tif.part", drop / "fresh.tif")
        os.rename(staging / "moved.tif", drop / "moved.tif")
        _until(
            lambda: {str(drop / "fresh.tif"), str(drop / "moved.tif")} <= set(_sources(daemon)),
            lambda: daemon.log()[-3000:],
        )
        assert time.monotonic() - renamed < 10.0

        # 3. Replaced by a rename over it: recorded again, as replaced.
        _raster(staging / "fresh.tif", side=16)
        os.replace(staging / "fresh.tif", drop / "fresh.tif")
        _until(
            lambda: _sources(daemon)[str(drop / "fresh.tif")]["change"] == "replaced",
            lambda: str(_sources(daemon)),
        )
        assert _sources(daemon)[str(drop / "fresh.tif")]["width"] == 16

        # 4. Deleted: recorded as gone.
        time.sleep(SETTLE * 1.5)  # time enough for the chmod to be (wrongly) taken again
        os.remove(inbox / "big.tif")
        _until(
            lambda: _sources(daemon)[str(inbox / "big.tif")]["status"] == "gone",
            lambda: str(_sources(daemon)),
        )
        # Telemetry has each change once: the big file taken once, then gone.
        _until(lambda: len(_watch_rows(database_url, "inbox")) == 2, lambda: daemon.log()[-2000:])
        rows = _watch_rows(database_url, "inbox")
        assert [(r[1], r[2]) for r in rows] == [("ok", "new"), ("gone", "gone")]
        assert rows[0][3] == big.stat().st_size
        drop_rows = _watch_rows(database_url, "drop")
        assert sorted((r[0], r[2]) for r in drop_rows) == [
            (str(drop / "fresh.tif"), "new"),
            (str(drop / "fresh.tif"), "replaced"),
            (str(drop / "moved.tif"), "new"),
        ]


def _glob_config(directory: Path, inbox: Path, name: str) -> Path:
    """A config whose datasets are every raster of ``inbox`` (fake worker: ``name`` steps)."""
    path = directory / f"{name}.yml"
    data = {
        "name": name,
        "datasets": [{"glob": f"{inbox.name}/*.tif"}],
        "paths": {"work_dir": str(directory / "work"), "output_dir": str(directory / "out")},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_thousand_files_at_once_give_few_runs_and_a_responsive_daemon(tmp_path: Path) -> None:
    inbox, staging = tmp_path / "inbox", tmp_path / "staging"
    inbox.mkdir()
    template = _raster(staging / "template.tif", side=4)
    config = _glob_config(tmp_path, inbox, "steps2")
    rule = _rule(inbox, on_new="submit", config=str(config))
    latencies: list[float] = []
    with running_daemon(tmp_path / "d", watch=[rule], concurrency=1) as daemon:
        stop = threading.Event()

        def poll_status() -> None:
            with Client(daemon.socket_path, timeout=10.0) as client:
                while not stop.is_set():
                    began = time.monotonic()
                    client.status()
                    latencies.append(time.monotonic() - began)
                    time.sleep(0.02)

        poller = threading.Thread(target=poll_status)
        poller.start()
        try:
            for index in range(1000):
                shutil.copyfile(template, inbox / f"layer{index:04d}.tif")
            # Every file recorded (status says so cheaply), then each in a submitted run.
            _until(
                lambda: "1000 taken, 0 settling" in daemon.call("status")["watching"][0],
                lambda: f"{daemon.call('status')['watching']}\n{daemon.log()[-2000:]}",
            )
            _until(
                lambda: all(s["run"] for s in _sources(daemon).values()),
                lambda: daemon.log()[-2000:],
            )
            time.sleep(SETTLE * 2)  # any further run would be submitted by now
        finally:
            stop.set()
            poller.join()
        sources = _sources(daemon)
        assert all(s["status"] == "ok" for s in sources.values())
        runs = daemon.call("runs.list")
        assert 1 <= len(runs) <= 5, runs  # "one or a few", never one per file
        assert max(latencies) < 1.0, f"slowest status answer {max(latencies):.3f} s"
        # The frozen run config lists the glob's datasets, one per file taken before it.
        first = min(runs, key=lambda r: r["id"])
        frozen = yaml.safe_load((Path(first["run_dir"]) / "config.yml").read_text())
        names = [d["name"] for d in frozen["datasets"]]
        assert names == sorted(names) and names[0] == "layer0000" and len(names) >= 1
        assert {s["run"] for s in sources.values()} <= {r["id"] for r in runs}
        print(
            f"\n1000 files: {len(runs)} run(s), status answered in at most "
            f"{max(latencies) * 1000:.0f} ms ({len(latencies)} calls), load {os.getloadavg()}"
        )


def test_settled_file_to_run_start_latency_and_no_duplicate_queued_run(tmp_path: Path) -> None:
    inbox, staging = tmp_path / "inbox", tmp_path / "staging"
    inbox.mkdir()
    config = _glob_config(tmp_path, inbox, "steps200")  # 10 s per run: the next one queues
    rule = _rule(inbox, on_new="submit", config=str(config))
    with running_daemon(tmp_path / "d", watch=[rule], concurrency=1) as daemon:
        _raster(staging / "a.tif")
        os.rename(staging / "a.tif", inbox / "a.tif")
        first = _until(lambda: daemon.call("runs.list"), lambda: daemon.log()[-2000:])[0]
        run = daemon.wait(first["id"], lambda r: r["started"] is not None)
        taken = _sources(daemon)[str(inbox / "a.tif")]["taken"]
        latency = run["started"] - taken
        assert 0 <= latency < 5.0
        print(f"\nsettled file → run started: {latency * 1000:.0f} ms, load {os.getloadavg()}")
        # Editing the template changes no submitted run: its config was frozen.
        frozen = (Path(run["run_dir"]) / "config.yml").read_text()
        template = config.read_text()
        config.write_text(template.replace("steps200", "steps1"))
        assert (Path(run["run_dir"]) / "config.yml").read_text() == frozen
        assert daemon.run(run["id"])["name"] == "steps200"
        config.write_text(template)
        # While the first run works, two more arrivals: one queued run, not two.
        for name in ("b", "c"):
            _raster(staging / f"{name}.tif")
            os.rename(staging / f"{name}.tif", inbox / f"{name}.tif")
            time.sleep(SETTLE * 1.5)
        runs = daemon.call("runs.list")
        assert [r["state"] for r in runs] == ["running", "queued"], runs
        sources = _sources(daemon)
        assert sources[str(inbox / "b.tif")]["run"] == runs[1]["id"]
        assert sources[str(inbox / "c.tif")]["run"] is None  # waits for the next run
        # Once the queued run starts, the waiting file gets a run of its own.
        daemon.call("runs.kill", run=runs[0]["id"])
        _until(
            lambda: _sources(daemon)[str(inbox / "c.tif")]["run"] == "r0003",
            lambda: daemon.log()[-2000:],
        )


def test_files_arriving_while_the_daemon_is_down_are_found_once(tmp_path: Path) -> None:
    inbox, staging = tmp_path / "inbox", tmp_path / "staging"
    inbox.mkdir()
    config = _glob_config(tmp_path, inbox, "steps2")
    rule = _rule(inbox, on_new="submit", config=str(config))
    daemon = DaemonHarness(tmp_path / "d", watch=[rule])
    try:
        daemon.start()
        _raster(staging / "a.tif")
        os.rename(staging / "a.tif", inbox / "a.tif")
        _until(lambda: daemon.call("runs.list"), lambda: daemon.log()[-2000:])
        first = _sources(daemon)[str(inbox / "a.tif")]
        daemon.wait(daemon.call("runs.list")[0]["id"], "done")
        assert daemon.stop() == 0
        _raster(inbox / "b.tif")  # arrives while nobody watches
        os.remove(inbox / "a.tif")
        daemon.start()
        _until(
            lambda: len(daemon.call("runs.list")) == 2 and str(inbox / "b.tif") in _sources(daemon),
            lambda: daemon.log()[-2000:],
        )
        time.sleep(SETTLE * 2)
        sources = _sources(daemon)
        assert sources[str(inbox / "a.tif")]["status"] == "gone"
        assert sources[str(inbox / "b.tif")]["status"] == "ok"
        assert len(daemon.call("runs.list")) == 2  # a.tif was not taken (or submitted) again
        assert first["taken"] < sources[str(inbox / "b.tif")]["taken"]
    finally:
        daemon.cleanup()


def test_deleted_watch_folder_is_logged_and_resumed(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with running_daemon(tmp_path / "d", watch=[_rule(inbox)]) as daemon:
        _raster(inbox / "a.tif")
        _until(lambda: _sources(daemon), lambda: daemon.log()[-2000:])
        # Inspected in a child process: the daemon itself never loads GDAL.
        assert "libgdal" not in Path(f"/proc/{daemon.process.pid}/maps").read_text()
        shutil.rmtree(inbox)
        _until(lambda: "watched folder" in daemon.log(), lambda: daemon.log()[-2000:])
        assert _sources(daemon)[str(inbox / "a.tif")]["status"] == "gone"
        assert "folder missing" in daemon.call("status")["watching"][0]
        inbox.mkdir()
        _raster(inbox / "b.tif")
        _until(
            lambda: _sources(daemon).get(str(inbox / "b.tif"), {}).get("status") == "ok",
            lambda: daemon.log()[-2000:],
        )
        assert "watching" in daemon.call("status")["watching"][0]
        # What users type: `geod sources` and `geod status` show the same.
        socket = ["--socket", str(daemon.socket_path)]
        listed = subprocess.run(
            [GEOD, "sources", *socket], capture_output=True, text=True, timeout=60
        )
        assert listed.returncode == 0, listed.stderr
        rows = {line.split()[1]: line.split()[2] for line in listed.stdout.splitlines()[1:]}
        assert rows == {"a": "gone", "b": "ok"}
        shown = subprocess.run([GEOD, "status", *socket], capture_output=True, text=True)
        assert f"inbox: watching {inbox} (record; 1 taken, 0 settling)" in shown.stdout
        assert "settings loaded" in shown.stdout


def test_geod_yml_edits_are_reloaded_and_invalid_ones_refused(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with running_daemon(tmp_path / "d", concurrency=2, reload_debounce=0.2) as daemon:
        loaded = daemon.call("status")["settings_loaded"]
        assert daemon.call("status")["settings_error"] is None
        values = dict(daemon.settings_values)
        daemon.settings_path.write_text("concurrency: [oops\n")  # invalid YAML
        _until(lambda: daemon.call("status")["settings_error"], lambda: daemon.log()[-2000:])
        status = daemon.call("status")
        assert "settings not reloaded, the old ones stay" in daemon.log()
        assert status["concurrency"] == 2 and status["settings_loaded"] == loaded
        daemon.write_settings(**{**values, "concurrency": 0})  # valid YAML, invalid value
        _until(
            lambda: "concurrency" in (daemon.call("status")["settings_error"] or ""),
            lambda: daemon.log()[-2000:],
        )
        error_lines = [line for line in daemon.log().splitlines() if "not reloaded" in line]
        assert error_lines and all("Traceback" not in line for line in error_lines)
        daemon.write_settings(**{**values, "concurrency": 3, "watch": [_rule(inbox)]})
        _until(lambda: daemon.call("status")["concurrency"] == 3, lambda: daemon.log()[-2000:])
        status = daemon.call("status")
        assert status["settings_error"] is None and status["settings_loaded"] > loaded
        _raster(inbox / "a.tif")  # the rule added by the edit is live
        _until(lambda: _sources(daemon), lambda: daemon.log()[-2000:])


@pilot_test
async def test_dashboard_lists_watched_sources_from_the_palette(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with running_daemon(tmp_path / "d", watch=[_rule(inbox)]) as daemon:
        _raster(inbox / "tree cover.tif")
        _until(lambda: _sources(daemon), lambda: daemon.log()[-2000:])
        app = GeodApp(socket_path=daemon.socket_path)
        async with app.run_test(size=(160, 40)) as pilot:
            while app.link is None or not app.link.connected:
                await pilot.pause(0.05)
            app.action_sources()  # what the palette's "Watched sources" runs
            while not isinstance(app.screen, SourcesScreen):
                await pilot.pause(0.05)
            await pilot.pause(0.1)
            shown = app.export_screenshot()
            assert "Watched&#160;sources" in shown
            for text in ("tree_cover", "8×8", "float32", "EPSG:4326"):
                assert text in shown, text
            await pilot.press("escape")
            assert not isinstance(app.screen, SourcesScreen)


def test_a_file_that_never_becomes_a_raster_is_retried_then_reported(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rule = _rule(inbox, settle_seconds=0.5, attempts=2)
    with running_daemon(tmp_path / "d", watch=[rule]) as daemon:
        began = time.monotonic()
        (inbox / "bad.tif").write_bytes(os.urandom(4096))
        found = _until(
            lambda: _sources(daemon).get(str(inbox / "bad.tif")), lambda: daemon.log()[-2000:]
        )
        assert found["status"] == "error" and "not a raster GDAL can read" in found["error"]
        assert time.monotonic() - began >= 2 * 0.5  # settled, tried, settled again, tried
        assert "still not a usable raster after 2 attempts" in daemon.log()
        # Completed later (renamed over it): taken.
        _raster(tmp_path / "good.tif")
        os.replace(tmp_path / "good.tif", inbox / "bad.tif")
        _until(
            lambda: _sources(daemon)[str(inbox / "bad.tif")]["status"] == "ok",
            lambda: daemon.log()[-2000:],
        )
