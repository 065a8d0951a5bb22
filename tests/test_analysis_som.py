"""SOM on a real Parquet table: determinism, BMUs equal to MiniSom's, maps, missing values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import rasterio
from minisom import MiniSom

from pipeline.analysis import run_analysis
from pipeline.analysis.som import BMU_NODATA, best_matching_units
from pipeline.control import StopRequested
from tests.analysis_support import COLUMNS, Harness, make_harness

SOM = {"rows": 4, "cols": 5, "iterations": 400, "sample_size": 800, "batch_rows": 1000}


def run_som(tmp_path: Path, **overrides: object) -> Harness:
    h = make_harness(tmp_path, {"methods": ["som"], "som": {**SOM, **overrides}})
    run_analysis(h.ctx, h.table, h.grid, h.out, h.ctx.stage("analysis"))
    return h


def test_same_seed_same_map_other_seed_other_map(tmp_path: Path) -> None:
    first = run_som(tmp_path / "one")
    second = run_som(tmp_path / "two")
    other = run_som(tmp_path / "three", seed=11)
    for name in ("som_bmu.parquet", "som_weights.parquet"):
        assert pq.read_table(first.out / name).equals(pq.read_table(second.out / name))
    np.testing.assert_array_equal(
        np.load(first.out / "som_umatrix.npy"), np.load(second.out / "som_umatrix.npy")
    )
    assert not pq.read_table(first.out / "som_weights.parquet").equals(
        pq.read_table(other.out / "som_weights.parquet")
    )


def test_bmus_match_minisom_winner_and_metrics_are_consistent(tmp_path: Path) -> None:
    h = run_som(tmp_path)
    weights_table = pq.read_table(h.out / "som_weights.parquet")
    z = np.column_stack([weights_table.column(f"{c}_z").to_numpy() for c in COLUMNS])
    weights = z.reshape(SOM["rows"], SOM["cols"], len(COLUMNS))
    som = MiniSom(SOM["rows"], SOM["cols"], len(COLUMNS))
    som._weights = weights

    metrics = json.loads((h.out / "som_metrics.json").read_text())
    raw = pq.read_table(h.table)
    values = np.column_stack([raw.column(c).to_numpy(zero_copy_only=False) for c in COLUMNS])
    zs = (values - metrics["column_mean"]) / np.array(metrics["column_std"])
    bmus = pq.read_table(h.out / "som_bmu.parquet")
    assert bmus.num_rows == raw.num_rows
    assert bmus.column("x").equals(raw.column("x"))
    bmu = bmus.column("som_bmu").to_numpy(zero_copy_only=False)
    complete = np.flatnonzero(np.isfinite(zs).all(axis=1))
    for i in complete[::53]:
        row, col = som.winner(zs[i])
        assert bmu[i] == row * SOM["cols"] + col
    # Rows with a missing value get no BMU under the default ``missing: drop``.
    assert bmus.column("som_bmu").null_count == len(zs) - len(complete)
    distance = bmus.column("som_distance")
    assert metrics["quantization_error"] == pytest.approx(pc.mean(distance).as_py())
    assert 0 <= metrics["topographic_error_sample"] <= 1
    assert np.load(h.out / "som_umatrix.npy").shape == (SOM["rows"], SOM["cols"])
    # Node weights in column units are the z-weights scaled back.
    a = weights_table.column("a").to_numpy()
    np.testing.assert_allclose(a, z[:, 0] * metrics["column_std"][0] + metrics["column_mean"][0])


def test_vectorised_bmu_equals_argmin_on_ties_and_random() -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(3, 3, 4))
    values = rng.normal(size=(200, 4))
    best, distance = best_matching_units(weights, values)
    nodes = weights.reshape(-1, 4)
    full = np.linalg.norm(values[:, None, :] - nodes[None], axis=2)
    np.testing.assert_array_equal(best, full.argmin(axis=1))
    np.testing.assert_allclose(distance, full.min(axis=1))


def test_cluster_map_holds_each_cells_bmu(tmp_path: Path) -> None:
    h = run_som(tmp_path)
    bmus = pq.read_table(h.out / "som_bmu.parquet")
    with rasterio.open(h.out / "som_bmu.tif") as src:
        assert src.crs == h.grid.crs and src.transform == h.grid.transform
        assert src.nodata == BMU_NODATA
        band = src.read(1)
    cols, rows = ~h.grid.transform @ (bmus.column("x").to_numpy(), bmus.column("y").to_numpy())
    expected = bmus.column("som_bmu").to_numpy(zero_copy_only=False)
    expected = np.where(np.isfinite(expected), expected, BMU_NODATA)
    np.testing.assert_array_equal(band[rows.astype(int), cols.astype(int)], expected)


def test_mean_policy_assigns_every_row(tmp_path: Path) -> None:
    h = run_som(tmp_path, missing="mean")
    bmus = pq.read_table(h.out / "som_bmu.parquet")
    assert bmus.column("som_bmu").null_count == 0


def test_resume_reuses_trained_weights_and_parts(tmp_path: Path) -> None:
    reference = run_som(tmp_path / "reference")
    analysis = {"methods": ["som"], "som": SOM}
    h = make_harness(tmp_path / "resumed", analysis)
    h.stop_when("analysis/som/assign", done=3)
    with pytest.raises(StopRequested):
        run_analysis(h.ctx, h.table, h.grid, h.out, h.ctx.stage("analysis"))
    assert (h.out / ".analysis-work" / "som" / "weights.npy").exists()
    again = make_harness(tmp_path / "resumed", analysis)
    run_analysis(again.ctx, again.table, again.grid, again.out, again.ctx.stage("analysis"))
    assert pq.read_table(again.out / "som_bmu.parquet").equals(
        pq.read_table(reference.out / "som_bmu.parquet")
    )
    starts = [
        e
        for e in again.events
        if getattr(e, "id", None) == "analysis/som/assign" and e.status == "running"
    ]
    assert starts[0].done == 3
