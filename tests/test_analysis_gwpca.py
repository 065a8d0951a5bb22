"""GWPCA against references: global PCA at huge bandwidths, naive local PCA at tiny ones."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine

from pipeline.analysis import run_analysis
from pipeline.analysis.gwpca import (
    BYTES_PER_POINT,
    DATA_BUDGET_SHARE,
    EARTH_RADIUS_KM,
    VALUE_COPIES,
    Bandwidth,
    Geometry,
    Observations,
    cv_score,
    evaluate,
    golden_section,
)
from pipeline.control import StopRequested
from pipeline.events import StageEvent
from tests.analysis_support import COLUMNS, make_harness

MAX_NEIGHBOURS = 5_000


def haversine_km(lon0: float, lat0: float, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Great-circle distance the textbook way, independent of the 3-D chord trick."""
    lon0, lat0, lon, lat = map(np.radians, (lon0, lat0, lon, lat))
    a = np.sin((lat - lat0) / 2) ** 2 + np.cos(lat0) * np.cos(lat) * np.sin((lon - lon0) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def random_points(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xy = np.column_stack([rng.uniform(-20, 20, n), rng.uniform(30, 60, n)])
    values = rng.normal(size=(n, 4))
    values[:, 1] += np.where(xy[:, 0] < 0, 1.0, -1.0) * values[:, 0]
    return xy, values


def assert_same_components(loadings: np.ndarray, reference: np.ndarray, count: int) -> None:
    """Loadings equal up to sign, component by component."""
    for j in range(count):
        dot = abs(float(loadings[:, j] @ reference[:, j]))
        assert dot == pytest.approx(1.0, abs=1e-8), f"component {j + 1}: |cos| = {dot}"


def naive_local_pca(
    xy: np.ndarray, values: np.ndarray, i: int, bw: Bandwidth, exclude_self: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One point's GWPCA written out directly: all distances, kernel, np.cov, eigh."""
    d = haversine_km(xy[i, 0], xy[i, 1], xy[:, 0], xy[:, 1])
    h = np.sort(d)[int(bw.value) - 1] if bw.adaptive else bw.value
    if bw.kernel == "bisquare":
        w = np.where(d < h, (1 - (d / h) ** 2) ** 2, 0.0)
    else:
        w = np.exp(-0.5 * (d / h) ** 2)
    if exclude_self:
        w[i] = 0.0
    cov = np.cov(values.T, aweights=w, bias=True)
    eigenvalues, vectors = np.linalg.eigh(cov)
    return eigenvalues[::-1], vectors[:, ::-1], w


@pytest.mark.parametrize(
    "bw",
    [
        Bandwidth("bisquare", False, 1e9),
        Bandwidth("gaussian", False, 1e9),
        Bandwidth("gaussian", True, 1e12),
    ],
    ids=["bisquare-fixed", "gaussian-fixed", "gaussian-adaptive"],
)
def test_bandwidth_beyond_extent_is_global_pca(bw: Bandwidth) -> None:
    xy, values = random_points(400)
    obs = Observations.build(Geometry(True), xy, values)
    result = evaluate(obs, obs.coords[::37], bw, MAX_NEIGHBOURS)
    eigenvalues, vectors = np.linalg.eigh(np.cov(values.T, bias=True))
    eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]
    for point in range(len(result.used)):
        assert result.used[point] == len(values)
        np.testing.assert_allclose(result.eigenvalues[point], eigenvalues, rtol=1e-9)
        assert_same_components(result.loadings[point], vectors, values.shape[1])


@pytest.mark.parametrize(
    "bw",
    [
        Bandwidth("bisquare", True, 12),
        Bandwidth("gaussian", False, 150.0),
        Bandwidth("bisquare", False, 250.0),
    ],
    ids=["bisquare-adaptive-12", "gaussian-fixed-150km", "bisquare-fixed-250km"],
)
def test_tiny_bandwidth_matches_naive_local_pca(bw: Bandwidth) -> None:
    xy, values = random_points(600)
    obs = Observations.build(Geometry(True), xy, values)
    at = np.arange(0, 600, 23)
    result = evaluate(obs, obs.coords[at], bw, MAX_NEIGHBOURS)
    for row, i in enumerate(at):
        eigenvalues, vectors, w = naive_local_pca(xy, values, i, bw)
        positive = int((w > 1e-300).sum()) if bw.kernel == "bisquare" else None
        if positive is not None:
            assert result.used[row] == positive
        # The gaussian leaves out only observations beyond gwpca.gaussian_reach
        # bandwidths (each < 1.3e-14 of the nearest's weight): the untruncated
        # reference is matched as tightly as the bisquare.
        np.testing.assert_allclose(result.eigenvalues[row], eigenvalues, rtol=1e-8, atol=1e-10)
        assert_same_components(result.loadings[row], vectors, 2)


def test_tiny_bandwidth_differs_from_global() -> None:
    """The reference checks would pass vacuously if local PCA ignored the weights."""
    xy, values = random_points(600)
    obs = Observations.build(Geometry(True), xy, values)
    local = evaluate(obs, obs.coords[:50], Bandwidth("bisquare", True, 30), MAX_NEIGHBOURS)
    glob = np.linalg.eigvalsh(np.cov(values.T, bias=True))[::-1]
    assert np.abs(local.eigenvalues - glob).max() > 0.1


@pytest.mark.parametrize("residual", ["gwmodel", "squares"])
def test_cross_validation_score_is_leave_one_out_reconstruction(residual: str) -> None:
    """GWmodel's gwpca.cv: leave i out, rᵢ = xᵢ − xᵢVVᵀ; its score is (Σⱼ rᵢⱼ)² per point."""
    xy, values = random_points(300)
    obs = Observations.build(Geometry(True), xy, values)
    bw = Bandwidth("bisquare", True, 25)
    at = np.arange(0, 300, 11)
    expected = 0.0
    for i in at:
        _, vectors, _ = naive_local_pca(xy, values, i, bw, exclude_self=True)
        v = vectors[:, :2]
        residual_vector = values[i] - values[i] @ v @ v.T
        if residual == "gwmodel":
            expected += float(residual_vector.sum()) ** 2
        else:
            expected += float((residual_vector**2).sum())
    score = cv_score(obs, at, bw, 2, MAX_NEIGHBOURS, chunk=7, residual=residual)
    assert score == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("integer", [True, False])
def test_golden_section_finds_the_minimum(integer: bool) -> None:
    best, trace = golden_section(lambda x: (x - 37.3) ** 2, 2.0, 500.0, integer)
    assert best == (37.0 if integer else pytest.approx(37.3, abs=0.5))
    assert len(trace) < 40


def test_great_circle_distances_and_antimeridian() -> None:
    geometry = Geometry(True)
    rng = np.random.default_rng(1)
    a = np.column_stack([rng.uniform(-180, 180, 50), rng.uniform(-89, 89, 50)])
    b = np.column_stack([rng.uniform(-180, 180, 50), rng.uniform(-89, 89, 50)])
    chord = np.linalg.norm(geometry.embed(a) - geometry.embed(b), axis=1)
    expected = np.array([haversine_km(*a[i], b[i, :1], b[i, 1:])[0] for i in range(50)])
    np.testing.assert_allclose(geometry.to_km(chord), expected, rtol=1e-9)
    xy = np.array([[179.9, 0.0], [-179.9, 0.0], [0.0, 0.0], [90.0, 0.0]])
    obs = Observations.build(geometry, xy, np.zeros((4, 2)))
    _, idx = obs.tree.query(obs.coords[:1], k=2)
    assert idx[0, 1] == 1  # across the ±180° seam, 22 km away, not 40,000


def test_projected_crs_distances_are_in_km() -> None:
    geometry = Geometry.of("EPSG:3857")
    assert geometry.unit_km == pytest.approx(0.001)
    assert geometry.embed(np.array([[3000.0, 4000.0]]))[0] == pytest.approx([3.0, 4.0])


def _read_matrix(path: Path, prefix: str, count: int) -> np.ndarray:
    table = pq.read_table(path)
    return np.column_stack([table.column(f"{prefix}{j + 1}").to_numpy() for j in range(count)])


def test_pipeline_huge_bandwidth_equals_global_pca_of_standardized_table(tmp_path: Path) -> None:
    h = make_harness(
        tmp_path,
        {
            "methods": ["gwpca"],
            "gwpca": {"adaptive": False, "bandwidth": 1e8, "components": 2, "batch_points": 300},
        },
    )
    run_analysis(h.ctx, h.table, h.grid, h.out, h.ctx.stage("analysis"))
    raw = pq.read_table(h.table)
    values = np.column_stack([raw.column(c).to_numpy(zero_copy_only=False) for c in COLUMNS])
    values = values[np.isfinite(values).all(axis=1)]
    z = (values - values.mean(axis=0)) / values.std(axis=0, ddof=1)
    eigenvalues, vectors = np.linalg.eigh(np.cov(z.T, bias=True))
    eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]

    local = pq.read_table(h.out / "gwpca_local.parquet")
    assert local.num_rows == len(z)
    eig = _read_matrix(h.out / "gwpca_local.parquet", "eigenvalue_", 3)
    np.testing.assert_allclose(eig, np.broadcast_to(eigenvalues, eig.shape), rtol=1e-6)
    pc1 = np.column_stack([local.column(f"pc1_{c}").to_numpy() for c in COLUMNS])
    assert np.abs(pc1 @ vectors[:, 0]) == pytest.approx(np.ones(len(pc1)), abs=1e-6)
    pv = _read_matrix(h.out / "gwpca_local.parquet", "pv_pc", 2)
    np.testing.assert_allclose(
        pv, np.broadcast_to(eigenvalues[:2] / eigenvalues.sum() * 100, pv.shape), rtol=1e-6
    )
    winner = COLUMNS[int(np.abs(vectors[:, 0]).argmax())]
    assert set(local.column("winner").to_pylist()) == {winner}
    metrics = json.loads((h.out / "gwpca_metrics.json").read_text())
    np.testing.assert_allclose(metrics["global_eigenvalues"], eigenvalues, rtol=1e-9)
    assert_same_components(np.array(metrics["global_loadings"]), vectors, 3)


def test_maps_on_the_subsampled_grid_carry_the_table(tmp_path: Path) -> None:
    h = make_harness(
        tmp_path,
        {
            "methods": ["gwpca"],
            "gwpca": {"bandwidth": 40, "subsample": 3, "batch_points": 100, "components": 2},
        },
    )
    run_analysis(h.ctx, h.table, h.grid, h.out, h.ctx.stage("analysis"))
    local = pq.read_table(h.out / "gwpca_local.parquet")
    with rasterio.open(h.out / "gwpca_winner.tif") as src:
        assert src.crs == h.grid.crs
        assert src.transform == h.grid.transform @ Affine.scale(3)
        assert (src.width, src.height) == (
            math.ceil(h.grid.width / 3),
            math.ceil(h.grid.height / 3),
        )
        winners = src.read(1)
        assert src.tags()["winner_0"] == "a"
    with rasterio.open(h.out / "gwpca_pv.tif") as src:
        assert src.count == 3
        assert src.descriptions == ("pv_pc1", "pv_pc2", "pv_cumulative")
        cumulative = src.read(3)
    x, y = local.column("x").to_numpy(), local.column("y").to_numpy()
    cols, rows = ~(h.grid.transform @ Affine.scale(3)) @ (x, y)
    rows, cols = rows.astype(int), cols.astype(int)
    expected = local.column("winner_index").to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(winners[rows, cols], expected)
    np.testing.assert_allclose(
        cumulative[rows, cols], local.column("pv_cumulative").to_numpy(), rtol=1e-6
    )
    # Every evaluated cell lies on the stride-3 lattice of the full grid.
    full_cols, full_rows = ~h.grid.transform @ (x, y)
    assert (np.floor(full_rows) % 3 == 0).all() and (np.floor(full_cols) % 3 == 0).all()
    assert (winners != 255).sum() == local.num_rows


def test_killed_run_resumes_from_part_files_with_identical_output(tmp_path: Path) -> None:
    analysis = {"methods": ["gwpca"], "gwpca": {"bandwidth": 30, "batch_points": 250, "workers": 2}}
    reference = make_harness(tmp_path / "reference", analysis)
    run_analysis(
        reference.ctx,
        reference.table,
        reference.grid,
        reference.out,
        reference.ctx.stage("analysis"),
    )

    h = make_harness(tmp_path / "resumed", analysis)
    h.stop_when("analysis/gwpca/local", done=2)
    with pytest.raises(StopRequested):
        run_analysis(h.ctx, h.table, h.grid, h.out, h.ctx.stage("analysis"))
    assert not (h.out / "gwpca_local.parquet").exists()
    assert h.stages()["analysis/gwpca"].status == "paused"

    again = make_harness(tmp_path / "resumed", analysis)
    run_analysis(again.ctx, again.table, again.grid, again.out, again.ctx.stage("analysis"))
    starts = [
        e
        for e in again.events
        if isinstance(e, StageEvent) and e.id == "analysis/gwpca/local" and e.status == "running"
    ]
    assert starts[0].done == 2  # two batches came from the killed run's parts
    assert pq.read_table(again.out / "gwpca_local.parquet").equals(
        pq.read_table(reference.out / "gwpca_local.parquet")
    )
    assert not (again.out / ".analysis-work").exists()


def test_cross_validated_bandwidth_is_recorded(tmp_path: Path) -> None:
    h = make_harness(
        tmp_path,
        {
            "methods": ["gwpca"],
            "gwpca": {"select_bandwidth": True, "subsample": 4, "max_neighbours": 300},
        },
    )
    run_analysis(h.ctx, h.table, h.grid, h.out, h.ctx.stage("analysis"))
    metrics = json.loads((h.out / "gwpca_metrics.json").read_text())
    trace = {bw: score for bw, score in metrics["cv_trace"]}
    assert metrics["bandwidth_selected"] is True
    assert metrics["bandwidth"] == min(trace, key=trace.get)
    assert 7 <= metrics["bandwidth"] <= 300
    assert len(trace) >= 5


KILL_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from pipeline.analysis import run_analysis
from tests.analysis_support import make_harness
h = make_harness(Path({folder!r}), {analysis!r})
run_analysis(h.ctx, h.table, h.grid, h.out, h.ctx.stage("analysis"))
"""


def test_sigkilled_worker_resumes_with_identical_output(tmp_path: Path) -> None:
    """A real process killed with SIGKILL mid-stage leaves only complete, listed parts."""
    analysis = {"methods": ["gwpca"], "gwpca": {"bandwidth": 60, "batch_points": 40}}
    reference = make_harness(tmp_path / "reference", analysis)
    run_analysis(
        reference.ctx,
        reference.table,
        reference.grid,
        reference.out,
        reference.ctx.stage("analysis"),
    )

    folder = tmp_path / "killed"
    folder.mkdir()
    make_harness(folder, analysis)  # writes the table before the worker starts
    script = KILL_SCRIPT.format(
        repo=str(Path(__file__).parent.parent), folder=str(folder), analysis=analysis
    )
    parts = folder / "out" / ".analysis-work" / "gwpca"
    worker = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        done: list[Path] = []
        while time.monotonic() < deadline and len(done) < 3:
            time.sleep(0.01)
            done = list(parts.glob("part-*.parquet"))
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        worker.wait()
    assert worker.returncode == -signal.SIGKILL
    assert len(done) >= 3, "the worker never got going"
    assert not (folder / "out" / "gwpca_local.parquet").exists(), "killed too late to test"

    again = make_harness(folder, analysis)
    run_analysis(again.ctx, again.table, again.grid, again.out, again.ctx.stage("analysis"))
    resumed_at = next(
        e.done
        for e in again.events
        if isinstance(e, StageEvent) and e.id == "analysis/gwpca/local" and e.status == "running"
    )
    assert resumed_at >= 3
    assert pq.read_table(again.out / "gwpca_local.parquet").equals(
        pq.read_table(reference.out / "gwpca_local.parquet")
    )


def test_observations_are_thinned_to_the_memory_budget(tmp_path: Path) -> None:
    h = make_harness(tmp_path, {"methods": ["gwpca"], "gwpca": {"bandwidth": 30}})
    complete = pq.read_table(h.table).drop_null().num_rows
    h.ctx.governor.budget = 64 * 1024  # room for a few hundred observations only
    run_analysis(h.ctx, h.table, h.grid, h.out, h.ctx.stage("analysis"))
    metrics = json.loads((h.out / "gwpca_metrics.json").read_text())
    per_point = BYTES_PER_POINT + VALUE_COPIES * 8 * len(COLUMNS)
    cap = DATA_BUDGET_SHARE * h.ctx.governor.budget / per_point
    assert metrics["observation_stride"] >= 2
    assert metrics["observations"] <= cap
    assert metrics["observations"] == -(-complete // metrics["observation_stride"])
    assert pq.read_table(h.out / "gwpca_local.parquet").num_rows == metrics["observations"]


@pytest.mark.parametrize(
    "bw",
    [Bandwidth("gaussian", False, 300.0), Bandwidth("bisquare", False, 900.0)],
    ids=["gaussian-fixed-300km", "bisquare-fixed-900km"],
)
def test_neighbourhoods_in_blocks_equal_one_pass(bw: Bandwidth) -> None:
    """max_neighbours bounds the block, not the neighbourhood: 40 at a time = all at once."""
    xy, values = random_points(600)
    obs = Observations.build(Geometry(True), xy, values)
    at = np.arange(0, 600, 7)
    whole = evaluate(obs, obs.coords[at], bw, MAX_NEIGHBOURS, exclude=at)
    blocks = evaluate(obs, obs.coords[at], bw, 40, exclude=at)
    assert whole.used.max() > 40  # the small cap really splits neighbourhoods
    np.testing.assert_array_equal(blocks.used, whole.used)
    np.testing.assert_allclose(blocks.eigenvalues, whole.eigenvalues, rtol=1e-10, atol=1e-12)
    for row in range(len(at)):
        assert_same_components(blocks.loadings[row], whole.loadings[row], 2)
    score_whole = cv_score(obs, at, bw, 2, MAX_NEIGHBOURS, chunk=9)
    assert cv_score(obs, at, bw, 2, 40, chunk=9) == pytest.approx(score_whole, rel=1e-9)
