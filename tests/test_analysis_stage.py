"""The analysis stage end to end: registry, combined and test methods, events, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio

from pipeline.analysis import METHODS, AnalysisError, run_analysis
from pipeline.config import AnalysisMethod, ConfigError
from pipeline.events import OutputEvent
from pipeline.runner import run_pipeline
from tests.analysis_support import COLUMNS, make_config, make_harness

FAST = {
    "som": {"rows": 3, "cols": 3, "iterations": 300, "sample_size": 500, "batch_rows": 1000},
    "gwpca": {"bandwidth": 30, "subsample": 2, "batch_points": 200},
}


def test_registry_covers_exactly_the_config_enum() -> None:
    assert set(METHODS) == set(AnalysisMethod)


@pytest.mark.parametrize("name", ["pca", "som; rm -rf /", "__import__('os')", "SOM "])
def test_method_outside_the_set_is_rejected_by_config(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=r"analysis\.methods\[1\]: .* is not one of"):
        make_config(tmp_path, {"methods": ["som", name]})


def test_combined_and_test_run_end_to_end(tmp_path: Path) -> None:
    h = make_harness(tmp_path, {"methods": ["test", "combined"], **FAST})
    node = h.ctx.stage("analysis")
    written = run_analysis(h.ctx, h.table, h.grid, h.out, node)

    names = {p.name for p in written}
    assert {
        "test_summary.json",
        "test_completeness.tif",
        "combined_gwpca_local.parquet",
        "combined_bmu.parquet",
        "combined_bmu.tif",
        "combined_metrics.json",
    } <= names
    assert set(h.outputs()) == names  # one OutputEvent per file, nothing unreported
    assert all(isinstance(e, OutputEvent) and e.stage for e in h.outputs().values())
    stages = h.stages()
    # The stage node itself is finished by the runner; its methods are finished here.
    for key in (
        "analysis/test",
        "analysis/combined",
        "analysis/combined/gwpca",
        "analysis/combined/som",
        "analysis/combined/som/assign",
    ):
        assert stages[key].status == "done", key
    assert stages["analysis"].done == stages["analysis"].total == 2
    assert stages["analysis/test"].done == stages["analysis/test"].total == 1
    assert stages["analysis/combined"].done == stages["analysis/combined"].total == 2
    assert stages["analysis/combined/som"].done == stages["analysis/combined/som"].total == 4
    leftovers = [p for p in h.out.rglob("*") if ".partial-" in p.name or "scratch" in p.name]
    assert leftovers == [] and not (h.out / ".analysis-work").exists()

    # test: statistics equal numpy's on the table; the map counts present columns.
    summary = json.loads((h.out / "test_summary.json").read_text())
    raw = pq.read_table(h.table)
    for column in COLUMNS:
        values = raw.column(column).to_numpy(zero_copy_only=False)
        assert summary["columns"][column]["mean"] == pytest.approx(np.nanmean(values))
        assert summary["columns"][column]["std"] == pytest.approx(np.nanstd(values, ddof=1))
    with rasterio.open(h.out / "test_completeness.tif") as src:
        present = src.read(1)
    stacked = np.column_stack([raw.column(c).to_numpy(zero_copy_only=False) for c in COLUMNS])
    assert int(present.sum()) == int(np.isfinite(stacked).sum())

    # combined: the SOM ran on the GWPCA loadings, on GWPCA's evaluation points.
    local = pq.read_table(h.out / "combined_gwpca_local.parquet")
    bmus = pq.read_table(h.out / "combined_bmu.parquet")
    assert bmus.column("x").equals(local.column("x"))
    metrics = json.loads((h.out / "combined_metrics.json").read_text())
    assert metrics["columns"] == [f"pc{j}_{c}" for j in (1, 2) for c in COLUMNS]
    with rasterio.open(h.out / "combined_bmu.tif") as src:
        assert src.width == (h.grid.width + 1) // 2


def test_combined_reuses_gwpca_of_the_same_run(tmp_path: Path) -> None:
    h = make_harness(tmp_path, {"methods": ["gwpca", "combined"], **FAST})
    written = run_analysis(h.ctx, h.table, h.grid, h.out, h.ctx.stage("analysis"))
    assert not any(p.name.startswith("combined_gwpca") for p in written)
    assert "analysis/combined/gwpca" not in h.stages()


def test_unknown_column_is_one_clear_error(tmp_path: Path) -> None:
    h = make_harness(tmp_path, {"methods": ["test"]})
    h.ctx.config.analysis.variables = ["a", "nope"]
    with pytest.raises(AnalysisError, match=r"merged\.parquet: analysis column\(s\) nope not in"):
        run_analysis(h.ctx, h.table, h.grid, h.out, h.ctx.stage("analysis"))


def test_missing_table_is_one_clear_error(tmp_path: Path) -> None:
    h = make_harness(tmp_path, {"methods": ["som"]})
    with pytest.raises(AnalysisError, match="merged table not found"):
        run_analysis(h.ctx, tmp_path / "absent.parquet", h.grid, h.out, h.ctx.stage("analysis"))


def test_no_complete_rows_fails_without_partial_outputs(tmp_path: Path) -> None:
    h = make_harness(tmp_path, {"methods": ["gwpca"]})
    table = pq.read_table(h.table)
    empty = pa.nulls(table.num_rows, pa.float64())
    pq.write_table(table.set_column(table.schema.get_field_index("c"), "c", empty), h.table)
    with pytest.raises(AnalysisError, match=r"merged\.parquet: no complete rows in a, b, c"):
        run_analysis(h.ctx, h.table, h.grid, h.out, h.ctx.stage("analysis"))
    assert not list(h.out.glob("gwpca_*"))
    assert h.stages()["analysis/gwpca"].status == "failed"


def test_non_numeric_column_is_one_clear_error(tmp_path: Path) -> None:
    h = make_harness(tmp_path, {"methods": ["test"]})
    table = pq.read_table(h.table)
    labels = pa.array(["x"] * table.num_rows)
    pq.write_table(table.set_column(table.schema.get_field_index("b"), "b", labels), h.table)
    with pytest.raises(AnalysisError, match=r"merged\.parquet: column 'b' is string, not numeric"):
        run_analysis(h.ctx, h.table, h.grid, h.out, h.ctx.stage("analysis"))


def test_runner_reruns_analysis_alone_on_an_exported_table(tmp_path: Path) -> None:
    """``geod run --stages analysis``: the runner finds the exported table and reruns."""
    h = make_harness(tmp_path, {"methods": ["test", "som"], "som": FAST["som"]})
    exported = h.ctx.config.paths.output_dir / f"{h.ctx.config.export.name}.parquet"
    h.table.rename(exported)
    first = run_pipeline(h.ctx, ["analysis"])
    snapshot = {p.name: p.read_bytes() for p in first if p.suffix in (".json", ".parquet")}
    again = make_harness(tmp_path, {"methods": ["test", "som"], "som": FAST["som"]})
    second = run_pipeline(again.ctx, ["analysis"])
    assert [p.name for p in second] == [p.name for p in first]
    assert {p.name: p.read_bytes() for p in second if p.name in snapshot} == snapshot
    stages = again.stages()
    assert stages["analysis"].status == "done" and stages["analysis"].unit == "methods"
    assert {key for key in stages if key.count("/") == 1} == {"analysis/test", "analysis/som"}
