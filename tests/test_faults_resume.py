"""Crash anywhere, resume to the same result: SIGKILL the worker, the daemon or both.

Each kill point (tests/faults.py) names a moment of the demo run by its event
stream: during the catalog, while resample windows are written to chunks and
appended to the manifest, during the merge and export, between the commits of
the Parquet and CSV files, during the analysis. After the kill the restart
policy (worker) or a restarted daemon (daemon, both) resumes the run from its
checkpoints, and everything it produced must equal the uninterrupted run's:
outputs, layer store, no temporary file left, every telemetry event stored once.

This module runs the seven points of ``faults.SUITE_POINTS`` (every stage and
every target); ``GEOD_FAULT_POINTS=all`` (or a count, or names) runs more,
``GEOD_FAULT_SEED`` draws other delays. Each test records its figures (stage at
kill, attempts, identical, telemetry rows lost and duplicated) with
``record_property`` before asserting, so bench/faults.py, which runs this module
under pytest with ``--junitxml``, reads them back for its summary table.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.faults import (
    ANCHORS,
    FaultDaemon,
    KillPoint,
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

POINTS = chosen_points(
    os.environ.get("GEOD_FAULT_POINTS"), int(os.environ.get("GEOD_FAULT_SEED", "0"))
)


@pytest.fixture(scope="module")
def reference(fault_reference: dict[str, Any]) -> dict[str, Any]:
    """An uninterrupted run of the same config under a daemon (telemetry off: not compared);
    the session's one, which tests/test_faults_state.py compares with too."""
    return fault_reference


@pytest.mark.parametrize("point", POINTS, ids=[p.name for p in POINTS])
def test_killed_run_resumes_to_identical_outputs(
    point: KillPoint,
    reference: dict[str, Any],
    database_url: str,
    demo_dir: Path,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    daemon = FaultDaemon(tmp_path, database_url)
    try:
        daemon.start()
        result = inject(daemon, fault_config(tmp_path / "run", demo_dir), point)
        run = result.run
        done = run["state"] == "done"
        problems: list[str] = []
        if done:
            problems += output_differences(output_dir(reference), output_dir(run))
            problems += store_differences(store_dir(reference), store_dir(run))
            problems += [f"left {p}" for p in leftovers(output_dir(run), Path(run["run_dir"]))]
        count = telemetry_count(database_url, result.run_id, run["last_seq"])
        for name, value in {
            "label": point.label,
            "stage_at_kill": result.stage_at_kill or "-",
            "attempts": result.attempts,
            "landed": int(result.landed),
            "resumed": int(done),
            "identical": int(done and not problems),
            "lost": count.lost,
            "duplicates": count.duplicates,
            "problems": "; ".join(problems),
        }.items():
            record_property(name, value)
        assert done, f"{point.label}: {run}\n{daemon.log()}"
        assert result.landed, f"{point.label}: the kill came after the run had finished"
        assert result.attempts >= 2 or point.target == "daemon", "resumed in a new worker"
        expected_stage = ANCHORS[point.anchor][0] if point.anchor else None
        if expected_stage is not None:
            assert result.stage_at_kill == expected_stage
        assert problems == []
        assert (count.lowest, count.highest) == (1, run["last_seq"])
        assert count.duplicates == 0 and count.lost == 0, count
    finally:
        daemon.cleanup()
