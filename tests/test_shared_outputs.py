"""Two runs writing the same output path: the second waits for the first, and a run's
cleanup of leftovers never removes another live writer's partial file."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.export.atomic import PARTIAL_MARKER, clean_partials, hold_partial, partial_path
from tests.daemon_harness import fake_config, running_daemon


def test_second_run_on_the_same_outputs_waits_for_the_first(tmp_path: Path) -> None:
    with running_daemon(tmp_path, concurrency=2) as daemon:
        config = fake_config(tmp_path / "shared", "steps60")
        first = daemon.submit(config)
        daemon.wait(first, lambda r: r["progress"] > 0)
        second = daemon.submit(config)
        other = daemon.submit(fake_config(tmp_path / "other", "steps60"))
        daemon.wait(other, lambda r: r["state"] in ("running", "done"))
        waiting = daemon.run(second)
        assert waiting["state"] == "queued"  # a free slot, but not its outputs
        # The summary says why (the dashboard's WHY column shows it).
        assert waiting["wait_reason"].startswith(f"waiting for run {first}, which writes")
        logs = daemon.call("logs.tail", run=second)
        expected = f"waiting for run {first}, which writes the same output"
        assert any(expected in event.get("message", "") for event in logs)
        done = daemon.wait(first, "done")
        started = daemon.wait(second, lambda r: r["started"] is not None)
        assert started["started"] >= done["finished"]
        assert started["wait_reason"] is None
        daemon.wait(second, "done")


def test_cleanup_spares_a_live_writers_partial_file(tmp_path: Path) -> None:
    final = tmp_path / "merged.parquet"
    live = partial_path(final)
    hold = hold_partial(live)
    dead = partial_path(final)
    dead.write_bytes(b"left by a killed run")
    try:
        assert clean_partials(final) == [dead]
        assert live.exists() and not dead.exists()
    finally:
        os.close(hold)
    assert clean_partials(final) == [live]  # its writer gone, it is a leftover
    assert not list(tmp_path.glob(f"*{PARTIAL_MARKER}*"))
