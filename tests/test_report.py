"""The run report: written by a real ``geod run``, rendered by a real headless Chromium.

One demo run (no daemon) per module makes ``report.html`` next to the Parquet,
Zarr and NetCDF outputs; the tests check what the page contains, that it asks
the network for nothing, that a browser draws it, and that ``geod report``
remakes it from telemetry (a real PostgreSQL) or, without one, the run's files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import psycopg2
import pytest
from PIL import Image

from pipeline.events import LogEvent, MemoryEvent, OutputEvent, StageEvent, StateEvent
from pipeline.report.history import HISTORY_NAME, read_history
from pipeline.report.model import lifecycle_marks, stage_bars
from supervisor.telemetry import SPOOL_DIR_NAME
from supervisor.telemetry.identity import load_instance, run_key
from supervisor.telemetry.migrate import migrate_url
from tests import browser
from tests.conftest import write_demo_config
from tests.test_worker import COARSE_GRID, SMALL_WINDOWS
from tests.workerproc import WorkerProcess

GEOD = str(Path(sysconfig.get_path("scripts")) / "geod")
REPO = Path(__file__).resolve().parent.parent
#: Set to refresh docs/report.png from this test's browser run.
SCREENSHOT_ENV = "GEOD_UPDATE_REPORT_SCREENSHOT"
#: Distinct colours a drawn report has at least (text, tables, maps, charts); a blank
#: or unstyled page has a handful.
MIN_COLOURS = 500
#: The demo run's grid: the demo's 5′ cells over a region every demo layer overlaps.
FIVE_MINUTES = 1 / 12
REGION = (-30, -45, 70, 45)


@pytest.fixture(scope="module")
def demo_run(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished foreground demo run with every grid format and a SOM map.

    The demo's 5′ grid (so endemism stays a passthrough) over a region holding
    every layer: still wider than a quick-look (read with a stride), a seventh of
    the global grid's cells to resample and export.
    """
    directory = tmp_path_factory.mktemp("report")
    config = write_demo_config(
        directory,
        demo_dir,
        grid={"crs": "EPSG:4326", "resolution": FIVE_MINUTES, "bounds": list(REGION)},
        export={"formats": ["parquet", "zarr", "netcdf"], "name": "demo"},
        analysis={"methods": ["som"], "som": {"rows": 3, "cols": 3, "iterations": 200}},
    )
    result = subprocess.run([GEOD, "run", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return directory


def report_of(directory: Path) -> Path:
    return directory / "out" / "report.html"


@pytest.fixture(scope="module")
def report_dom(demo_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """Headless Chromium's DOM of the demo run's report after load, and the net log of
    that one visit (the tests that need a browser read both; asked for once it is there)."""
    net_log = tmp_path_factory.mktemp("report-dom") / "net.json"
    return browser.dump_dom(report_of(demo_run), net_log), net_log


def test_run_leaves_report_next_to_the_table_zarr_and_netcdf(demo_run: Path) -> None:
    out = demo_run / "out"
    for name in ("demo.parquet", "demo.zarr", "demo.nc", "report.html"):
        assert (out / name).exists(), name
    page = report_of(demo_run).read_text()
    for heading in ("Stage timeline", "Memory", "Datasets", "Resampled layers", "Outputs"):
        assert f"<h2>{heading}</h2>" in page
    assert '<span class="state-done">done</span>' in page
    for needle in ("Config hash", "GDAL", "PROJ", "rasterio", "Host"):
        assert f"<td>{needle}</td>" in page
    # Datasets: passthrough vs warp as the catalog decided, and the valid-cell counts.
    assert re.search(r"<td>endemism</td>.*?passthrough \(copied\)", page)
    assert re.search(r"<td>threat</td>.*?EPSG:6933.*?warp \(resampled\)", page)
    assert str(out / "demo.nc") in page and str(out / "demo.zarr") in page
    assert "sampled cells per output compared with the store" in page


def test_report_makes_no_external_request(
    demo_run: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    page = report_of(demo_run).read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.IGNORECASE)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page, re.IGNORECASE)
    assert "<script" not in page and "<link" not in page
    sources = re.findall(r'<img[^>]* src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    if browser.chromium() is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    _, net_log = request.getfixturevalue("report_dom")
    assert browser.page_requests(net_log) == []
    # The check sees a page's request when there is one.
    control = tmp_path / "control.html"
    control.write_text('<html><body><img src="http://example.invalid/x.png"></body></html>')
    browser.dump_dom(control, tmp_path / "control.json")
    assert browser.page_requests(tmp_path / "control.json") == ["http://example.invalid/x.png"]


def test_headless_chromium_draws_one_map_per_layer(
    demo_run: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if browser.chromium() is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    page = report_of(demo_run)
    dom, _ = request.getfixturevalue("report_dom")
    layers = re.findall(r'<figure class="map" data-layer="([^"]+)"', dom)
    assert layers == ["richness", "endemism", "landcover", "threat", "som_bmu"]
    shot = tmp_path / "report.png"
    browser.screenshot(page, shot)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) >= MIN_COLOURS
    assert (pixels.sum(axis=2) < 3 * 250).mean() > 0.05  # not a white page
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(shot, REPO / "docs" / "report.png")


def test_geod_report_remakes_it_from_the_run_files_on_demand(
    demo_run: Path, tmp_path: Path
) -> None:
    target = tmp_path / "again.html"
    result = subprocess.run(
        [GEOD, "report", str(demo_run / "config.yml"), "-o", str(target)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    page = target.read_text()
    assert "<td>run directory</td>" in page
    assert page.count('<figure class="map"') == 5


def test_geod_report_reads_telemetry_and_falls_back_to_the_run_directory(
    demo_run: Path, tmp_path: Path, database_url: str
) -> None:
    # A daemon-style run directory: frozen config, work/, events.ndjson.
    run_dir = tmp_path / "r0042"
    run_dir.mkdir()
    shutil.copyfile(demo_run / "config.yml", run_dir / "config.yml")
    (run_dir / "work").symlink_to(demo_run / "work")
    history = read_history(demo_run / "work" / HISTORY_NAME)
    shutil.copyfile(demo_run / "work" / HISTORY_NAME, run_dir / "events.ndjson")
    migrate_url(database_url)
    first = history[0].time
    # The key the daemon of this state directory (GEOD_STATE_DIR below) gives r0042.
    key = str(run_key(load_instance(tmp_path / SPOOL_DIR_NAME), "r0042"))
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        for seq, event in enumerate(history):
            payload = json.loads(event.model_dump_json(exclude_none=True))
            cur.execute(
                "INSERT INTO geod.events (run, run_key, seq, time, type, payload) "
                "VALUES (%s, %s, %s, to_timestamp(%s), %s, %s)",
                ("r0042", key, seq, event.time, payload["type"], json.dumps(payload)),
            )
        cur.execute(
            "INSERT INTO geod.memory_samples (run, run_key, seq, time, rss, window_size) "
            "VALUES ('r0042', %s, 1, to_timestamp(%s), 123456789, 512)",
            (key, first + 1),
        )
        cur.execute(
            "INSERT INTO geod.runs (id, run_key, name, state, started, finished, summary, rev, "
            "updated) VALUES ('r0042', %s, 'demo', 'done', to_timestamp(%s), to_timestamp(%s), "
            "'{}', 1, now())",
            (key, first, history[-1].time),
        )
    target = tmp_path / "from-telemetry.html"
    env = dict(os.environ, GEOD_DATABASE_URL=database_url, GEOD_STATE_DIR=str(tmp_path))
    result = subprocess.run(
        [GEOD, "report", str(run_dir), "-o", str(target)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    page = target.read_text()
    assert "<td>telemetry</td>" in page and "<td>r0042</td>" in page

    env["GEOD_DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/none"
    result = subprocess.run(
        [GEOD, "report", str(run_dir), "-o", str(target)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    page = target.read_text()
    assert "run directory (telemetry unreachable" in page
    assert page.count('<figure class="map"') == 5


def test_geod_report_of_an_unknown_run_is_one_line(tmp_path: Path) -> None:
    env = dict(os.environ, GEOD_STATE_DIR=str(tmp_path))
    result = subprocess.run([GEOD, "report", "r9999"], capture_output=True, text=True, env=env)
    assert result.returncode == 4
    assert result.stderr.strip().splitlines() == [
        f"geod: unknown run r9999 (no {tmp_path / 'runs' / 'r9999'})"
    ]


def test_timeline_marks_pauses_and_resumes_and_closes_interrupted_bars() -> None:
    t = 1000.0
    events = [
        StateEvent(time=t, state="running"),
        StageEvent(time=t + 1, id="resample", kind="stage", name="resample", status="running"),
        StageEvent(time=t + 2, id="resample", kind="stage", name="resample", status="paused"),
        StateEvent(time=t + 2, state="paused"),
        StateEvent(time=t + 5, state="resumed"),
        StateEvent(time=t + 6, state="running"),  # a second worker: a resume
        StageEvent(time=t + 7, id="resample", kind="stage", name="resample", status="running"),
        MemoryEvent(time=t + 8, rss=1),
        StageEvent(time=t + 9, id="resample", kind="stage", name="resample", status="done"),
        StageEvent(time=t + 9, id="export", kind="stage", name="export", status="running"),
        LogEvent(time=t + 10, level="INFO", logger="geod", message="chunk"),
        StateEvent(time=t + 20, state="running"),  # the worker was killed: a third start
        StageEvent(time=t + 21, id="export", kind="stage", name="export", status="running"),
    ]
    bars = stage_bars(events, now=t + 30)
    assert [(b.id, b.start - t, b.end - t, b.status) for b in bars] == [
        ("resample", 1, 2, "paused"),
        ("resample", 7, 9, "done"),
        ("export", 9, 10, "interrupted"),
        ("export", 21, 30, "running"),
    ]
    assert [(m.time - t, m.what) for m in lifecycle_marks(events)] == [
        (0, "start"),
        (2, "paused"),
        (5, "resumed"),
        (6, "resume #1"),
        (20, "resume #2"),
    ]


def test_paused_resumed_then_stopped_run_reports_its_state_and_report_false_writes_none(
    tmp_path: Path, demo_dir: Path
) -> None:
    (tmp_path / "a").mkdir()
    config = write_demo_config(tmp_path / "a", demo_dir, resampling=SMALL_WINDOWS, grid=COARSE_GRID)
    worker = WorkerProcess(config)
    try:
        worker.wait_for(lambda e: isinstance(e, StageEvent) and e.kind == "dataset" and e.done > 0)
        worker.process.send_signal(signal.SIGUSR1)
        worker.wait_for(lambda e: isinstance(e, StateEvent) and e.state == "paused", timeout=5)
        worker.process.send_signal(signal.SIGUSR2)
        worker.wait_for(lambda e: isinstance(e, StateEvent) and e.state == "resumed", timeout=5)
        worker.process.send_signal(signal.SIGTERM)
        worker.wait_for(lambda e: isinstance(e, StateEvent) and e.state == "stopped", timeout=30)
        assert worker.finish() == 0
    finally:
        worker.kill()
    page = (tmp_path / "a" / "out" / "report.html").read_text()
    assert '<span class="state-stopped">stopped</span>' in page
    history = read_history(tmp_path / "a" / "work" / HISTORY_NAME)
    assert [m.what for m in lifecycle_marks(history)] == ["start", "paused", "resumed", "stopped"]
    report_events = [e for e in worker.of_type(OutputEvent) if e.kind == "report"]
    assert [e.path for e in report_events] == [str(tmp_path / "a" / "out" / "report.html")]

    (tmp_path / "b").mkdir()
    quiet = write_demo_config(tmp_path / "b", demo_dir, grid=COARSE_GRID, report=False)
    assert WorkerProcess(quiet, "--stages", "catalog,resample").finish() == 0
    assert not (tmp_path / "b" / "out" / "report.html").exists()
