"""What the human output of ``geod status``/``runs``/``logs`` says, rendered to plain text."""

from __future__ import annotations

import io
import re
import time

from rich.console import Console, RenderableType

from pipeline.events import LogEvent
from supervisor.cli import render
from supervisor.protocol import DaemonStatus, RunSummary

NOW = time.time()


def text(renderable: RenderableType) -> str:
    console = Console(width=160, record=True, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def _run(**fields: object) -> RunSummary:
    base: dict[str, object] = {"id": "r0001", "name": "demo", "state": "running"}
    return RunSummary.model_validate(base | fields)


def test_runs_table_row() -> None:
    run = _run(
        progress=0.5,
        stage="resample/bio1",
        started=NOW - 65,
        rss=2 * 1024**2,
        peak_rss=3 * 1024**2,
        eta=120,
        eta_at=NOW + 120,
        eta_range=600,
        running_time=50,
        running_since=NOW - 15,
    )
    out = text(render.runs_table([run], now=NOW))
    header, row = out.splitlines()[:2]
    assert header.split()[:3] == ["ID", "NAME", "STATE"]
    assert "r0001" in row and "running" in row and "50.0%" in row
    # Elapsed is running time (50 s banked + 15 s since the last resume), the ETA a clock time.
    clock = time.strftime("%H:%M", time.localtime(NOW + 120))
    assert "1m 05s" in row and f"≈ {clock} ±10 min" in row and "3.0 MiB" in row


def test_finished_run_has_no_eta_in_detail() -> None:
    run = _run(state="done", progress=1.0, eta=None, running_time=42.0, finished=NOW)
    out = text(render.run_detail(run, now=NOW))
    assert "42s" in out
    assert [line.split() for line in out.splitlines() if line.startswith("eta")] == [["eta", "-"]]


def test_hard_pause_is_visible() -> None:
    assert render.state_text(_run(state="paused", paused_hard=True)).plain == "paused (hard)"
    assert render.state_text(_run(state="paused")).plain == "paused"


def test_stage_tree_nests_by_parent_in_announcement_order() -> None:
    stages = [
        {"id": "run", "parent": None, "kind": "run", "name": "demo", "status": "running"},
        {
            "id": "resample",
            "parent": "run",
            "kind": "stage",
            "name": "resample",
            "status": "running",
            "done": 1,
            "total": 2,
            "unit": "datasets",
        },
        {
            "id": "resample/b",
            "parent": "resample",
            "kind": "dataset",
            "name": "b",
            "status": "done",
            "done": 9,
            "total": 9,
        },
        {
            "id": "resample/a",
            "parent": "resample",
            "kind": "dataset",
            "name": "a",
            "status": "failed",
            "error": "disk full",
        },
        {"id": "orphan", "parent": "gone", "kind": "stage", "name": "orphan", "status": "pending"},
    ]
    lines = text(render.stage_tree("stages", stages)).splitlines()
    names = [line.strip(" │├└─") for line in lines]
    assert names[0] == "stages"
    assert names[1].startswith("▶ demo")
    assert names[2].startswith("▶ resample") and "1/2 datasets" in names[2]
    assert names[3].startswith("✔ b") and "9/9" in names[3]
    assert names[4].startswith("✘ a") and "disk full" in names[4]
    assert names[5].startswith("◌ orphan")  # unknown parent: kept, under the root
    # depth: b and a are deeper than resample, which is deeper than demo
    indent = [len(line) - len(line.lstrip(" │├└─")) for line in lines]
    assert indent[1] < indent[2] < indent[3] == indent[4]
    assert indent[5] == indent[1]


def test_run_detail_shows_peak_rss_outputs_and_stages() -> None:
    run = _run(
        state="done",
        progress=1.0,
        started=NOW - 100,
        finished=NOW,
        peak_rss=512 * 1024**2,
        outputs=[{"kind": "parquet", "path": "/out/demo.parquet"}],
        stages=[{"id": "run", "parent": None, "kind": "run", "name": "demo", "status": "done"}],
    )
    out = text(render.run_detail(run, now=NOW))
    assert "peak rss" in out and "512.0 MiB" in out
    assert "/out/demo.parquet" in out and "parquet" in out
    assert "✔ demo" in out
    assert "1m 40s" in out


def test_log_line() -> None:
    record = LogEvent(
        time=NOW,
        level="WARNING",
        logger="pipeline.resample",
        stage="resample",
        dataset="bio1",
        message="slow window",
    )
    line = render.log_line(record).plain
    assert line.split()[1:] == ["WARNING", "resample[bio1]", "slow", "window"]


def test_daemon_summary_is_readable_and_keeps_unknown_fields() -> None:
    status = DaemonStatus.model_validate(
        {
            "version": "0.1.0",
            "pid": 42,
            "started": NOW - 3700,
            "uptime": 3700.0,
            "state_dir": "/state",
            "socket": "/run/geod.sock",
            "concurrency": 2,
            "counts": {"running": 1, "queued": 0, "done": 2},
            "stopping": False,
            "future_field": "shown",
        }
    )
    out = text(render.daemon_summary(status, now=NOW))
    assert "1h 01m" in out and "1 running, 2 done" in out and "queued" not in out
    assert "stopping" not in out
    assert re.search(r"future field +shown", out)
    assert str(int(NOW)) not in out  # no raw epoch seconds


def test_daemon_summary_shows_settings_load_and_watch_rules() -> None:
    base = {"version": "0.1.0", "pid": 42, "started": NOW - 60, "uptime": 60.0}
    base |= {"state_dir": "/state", "socket": "/s.sock", "concurrency": 2}
    status = DaemonStatus.model_validate(
        base
        | {
            "settings_file": "/etc/geod/geod.yml",
            "settings_loaded": NOW - 30,
            "settings_error": "/etc/geod/geod.yml: concurrency: Input should be ≥ 1",
            "watching": ["in: watching /data/in (record; 3 taken, 0 settling)", "out: …"],
        }
    )
    out = text(render.daemon_summary(status, now=NOW))
    assert re.search(r"settings file +/etc/geod/geod.yml", out)
    assert "settings loaded" in out and str(int(NOW - 30)) not in out
    assert "Input should be ≥ 1 (the previous settings are in force)" in out
    assert re.search(r"watch 1 +in: watching /data/in", out) and "watch 2" in out


def test_finished_run_shows_no_current_rss() -> None:
    run = _run(state="done", rss=0, peak_rss=1024**2, started=NOW - 5, finished=NOW)
    row = text(render.runs_table([run], now=NOW)).splitlines()[1]
    assert row.split()[-4:] == ["-", "1.0", "MiB", "-"]  # RSS, PEAK, DISK


def test_runs_table_says_why_a_run_waits_or_was_paused_its_disk_and_an_oom() -> None:
    reason = "waiting for memory: needs ~3.1 GiB, 1.4 GiB free of the host budget"
    waiting = _run(id="r0002", state="queued", wait_reason=reason, disk_used=3 * 1024**2)
    oom = _run(id="r0003", state="failed", oom=True, started=NOW - 5, finished=NOW)
    out = text(render.runs_table([waiting, oom], now=NOW))
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert rows["r0002"].split()[-2:] == ["3.0", "MiB"]  # DISK
    assert "waiting for memory" in rows["r0002"]  # WAITS (folded on a narrow terminal)
    assert render.queue_text(waiting, NOW) == reason
    assert "failed (oom)" in rows["r0003"]
    pressed = _run(state="paused", paused_by="memory", wait_reason="paused for disk space")
    assert render.queue_text(pressed, NOW) == "paused for disk space"


def test_run_detail_shows_the_memory_prediction_disk_and_why_it_waits() -> None:
    run = _run(
        state="queued",
        predicted_peak=3 * 1024**3,
        prediction="peak of run r0001",
        disk_used=5 * 1024**2,
        wait_reason="waiting for memory: needs ~3.0 GiB, 1.4 GiB free of the host budget",
        start_window=512,
    )
    out = " ".join(text(render.run_detail(run, now=NOW)).split())
    assert "predicted peak 3.0 GiB (peak of run r0001)" in out
    assert "disk used 5.0 MiB" in out
    assert "waits waiting for memory: needs ~3.0 GiB, 1.4 GiB free of the host budget" in out
    assert "start window 512" in out
