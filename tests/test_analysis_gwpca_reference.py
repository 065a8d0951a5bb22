"""geod's GWPCA against GWmodel's definition, written out independently in this file.

The reference shares no code with :mod:`pipeline.analysis`: distances are
brute-force haversine great circles to every observation, weights are the
kernels as GWmodel's ``gw.weight`` writes them over *all* observations (the
gaussian is never cut), the local PCA is ``np.cov(aweights=…)`` + ``eigh`` of
the observations with positive weight, and a location has a result only if at
least 6 observations have positive weight (GWmodel skips ≤ 5). "Positive"
follows the definition's tie rule: an observation at the bandwidth, or tied
with the k-th neighbour up to rounding, gets weight 0.

Two data sets: the demo world (its richness, endemism and threat fields on a
0.5° land grid over Africa and Europe, standardized as the pipeline does) and
a small regular grid of random values, where mirror images of the k-th
neighbour lie at exactly the same distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from pipeline.analysis.gwpca import Bandwidth, Geometry, LocalPca, Observations, evaluate_parallel
from pipeline.config import GwpcaConfig
from pipeline.demo import SphereBlock, World

#: Mean Earth radius, km (IUGG), as GWmodel's great-circle distance uses ~6371.
RADIUS_KM = 6371.0088
#: Relative slack of "below the bandwidth" in the reference (ties get weight 0).
TIE = 1e-9
#: Agreement asked of geod: eigenvalues to this share of the largest one.
EIGEN_TOLERANCE = 1e-6
DEFAULT_MAX_NEIGHBOURS = GwpcaConfig().max_neighbours


@dataclass
class Reference:
    eigenvalues: np.ndarray  # (p,) descending, NaN without a result
    vectors: np.ndarray  # (p, p)
    positive: int


def great_circle_km(lon0: float, lat0: float, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    lon0, lat0, lon, lat = map(np.radians, (lon0, lat0, lon, lat))
    a = np.sin((lat - lat0) / 2) ** 2 + np.cos(lat0) * np.cos(lat) * np.sin((lon - lon0) / 2) ** 2
    return 2 * RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def reference_gwpca(
    xy: np.ndarray, values: np.ndarray, i: int, kernel: str, adaptive: bool, bandwidth: float
) -> Reference:
    """GWmodel's gwpca at observation i: all distances, kernel weights, weighted PCA."""
    d = great_circle_km(xy[i, 0], xy[i, 1], xy[:, 0], xy[:, 1])
    if adaptive:
        k = int(bandwidth)
        h = np.sort(d)[k - 1] if k <= len(d) else d.max() * k / len(d)
    else:
        h = bandwidth
    if kernel == "bisquare":
        w = np.where(d < h * (1 - TIE), (1 - (d / h) ** 2) ** 2, 0.0)
    else:
        w = np.exp(-0.5 * (d / h) ** 2)
    use = w > 0
    p = values.shape[1]
    if use.sum() < 6:
        return Reference(np.full(p, np.nan), np.full((p, p), np.nan), int(use.sum()))
    cov = np.cov(values[use].T, aweights=w[use], bias=True)
    eigenvalues, vectors = np.linalg.eigh(cov)
    return Reference(eigenvalues[::-1], vectors[:, ::-1], int(use.sum()))


def demo_world() -> tuple[np.ndarray, np.ndarray]:
    """The demo's continuous fields on land cells of a 0.5° grid, z-scored."""
    world = World(0)
    block = SphereBlock(np.arange(-19.75, 40, 0.5), np.arange(39.75, -10, -0.5))
    land = world.land(block)
    lon, lat = np.meshgrid(block.lon, block.lat)
    fields = [world.richness(block), world.endemism(block), world.threat(block)]
    values = np.column_stack([f[land] for f in fields]).astype(float)
    return np.column_stack([lon[land], lat[land]]), zscore(values)


def regular_grid() -> tuple[np.ndarray, np.ndarray]:
    """A 30 × 24 grid of 0.5° cells with random values: exact mirror ties everywhere."""
    lon, lat = np.meshgrid(np.arange(0.25, 15, 0.5), np.arange(40.25, 52, 0.5))
    rng = np.random.default_rng(11)
    values = rng.normal(size=(lon.size, 4))
    values[:, 1] += np.sin(np.radians(lon.ravel()) * 20) * values[:, 0]
    return np.column_stack([lon.ravel(), lat.ravel()]), zscore(values)


def zscore(values: np.ndarray) -> np.ndarray:
    return (values - values.mean(axis=0)) / values.std(axis=0, ddof=1)


DATA = {"demo": demo_world, "grid": regular_grid}

CASES = [
    ("bisquare", True, 7),
    ("bisquare", True, 200),
    ("gaussian", True, 200),
    ("bisquare", False, 100.0),
    ("gaussian", False, 60.0),
    ("bisquare", False, 1e8),
    ("gaussian", True, 1e12),
]
CASE_IDS = [
    "adaptive-bisquare-7",
    "adaptive-bisquare-200",
    "adaptive-gaussian-200",
    "fixed-bisquare-100km",
    "fixed-gaussian-60km",
    "fixed-huge-bandwidth",
    "adaptive-gaussian-huge",
]


def geod(xy: np.ndarray, values: np.ndarray, at: np.ndarray, bw: Bandwidth) -> LocalPca:
    obs = Observations.build(Geometry.of("EPSG:4326"), xy, values)
    return evaluate_parallel(obs, obs.coords[at], bw, DEFAULT_MAX_NEIGHBOURS, chunk=13, workers=2)


def assert_matches(result: LocalPca, row: int, ref: Reference, exact_count: bool) -> None:
    """Validity, neighbour count (exact kernels), eigenvalues, PC1 and the winner."""
    assert result.valid[row] == (ref.positive >= 6), f"row {row}: {ref.positive} positive weights"
    if exact_count:
        assert result.used[row] == ref.positive
    if ref.positive < 6:
        assert np.isnan(result.eigenvalues[row]).all()
        return
    largest = ref.eigenvalues[0]
    np.testing.assert_allclose(
        result.eigenvalues[row], ref.eigenvalues, rtol=0, atol=EIGEN_TOLERANCE * largest
    )
    if ref.eigenvalues[0] - ref.eigenvalues[1] > 1e-3 * largest:
        cos = abs(float(result.loadings[row, :, 0] @ ref.vectors[:, 0]))
        assert cos == pytest.approx(1.0, abs=1e-6)
        first = np.sort(np.abs(ref.vectors[:, 0]))[::-1]
        if first[0] - first[1] > 1e-6:
            assert result.winner()[row] == int(np.abs(ref.vectors[:, 0]).argmax())


@pytest.mark.parametrize("data", sorted(DATA))
@pytest.mark.parametrize(("kernel", "adaptive", "bandwidth"), CASES, ids=CASE_IDS)
def test_gwpca_equals_gwmodel_definition(
    data: str, kernel: str, adaptive: bool, bandwidth: float
) -> None:
    xy, values = DATA[data]()
    if bandwidth >= 1e8:
        assert len(xy) > DEFAULT_MAX_NEIGHBOURS or data == "grid"  # demo: blocks are exercised
    at = np.linspace(0, len(xy) - 1, 40).astype(np.int64)
    bw = Bandwidth(kernel, adaptive, bandwidth, GwpcaConfig().gaussian_reach)
    result = geod(xy, values, at, bw)
    for row, i in enumerate(at):
        ref = reference_gwpca(xy, values, int(i), kernel, adaptive, bandwidth)
        assert_matches(result, row, ref, exact_count=kernel == "bisquare")


def test_huge_bandwidth_is_global_pca_with_default_max_neighbours() -> None:
    xy, values = demo_world()
    assert len(xy) > DEFAULT_MAX_NEIGHBOURS
    at = np.linspace(0, len(xy) - 1, 12).astype(np.int64)
    for bw in (Bandwidth("bisquare", False, 1e8), Bandwidth("gaussian", False, 1e8)):
        result = geod(xy, values, at, bw)
        eigenvalues, vectors = np.linalg.eigh(np.cov(values.T, bias=True))
        assert (result.used == len(xy)).all()
        np.testing.assert_allclose(
            result.eigenvalues,
            np.broadcast_to(eigenvalues[::-1], result.eigenvalues.shape),
            rtol=0,
            atol=EIGEN_TOLERANCE * eigenvalues.max(),
        )
        cos = np.abs(result.loadings[:, :, 0] @ vectors[:, -1])
        np.testing.assert_allclose(cos, 1.0, atol=1e-6)


def test_mirror_ties_at_the_kth_neighbour_get_no_weight() -> None:
    """On the regular grid, k = 7 leaves some points with 5 positive weights: no result."""
    xy, values = regular_grid()
    at = np.arange(len(xy))
    result = geod(xy, values, at, Bandwidth("bisquare", True, 7))
    counts = np.array(
        [reference_gwpca(xy, values, int(i), "bisquare", True, 7).positive for i in at]
    )
    assert (counts < 6).any(), "no tie at the 7th neighbour: the grid does not test ties"
    np.testing.assert_array_equal(result.used, counts)
    np.testing.assert_array_equal(result.valid, counts >= 6)


def island_and_continent() -> tuple[np.ndarray, np.ndarray]:
    """A small island of 8 observations and, 3 to 12 of its bandwidths away, 20,000 more."""
    rng = np.random.default_rng(5)
    island = np.column_stack([rng.uniform(0, 0.2, 8), rng.uniform(0, 0.2, 8)])
    angle = rng.uniform(0, 2 * np.pi, 20_000)
    radius = rng.uniform(0.6, 2.4, 20_000)  # degrees; the island's h is ~0.2°
    continent = np.column_stack([0.1 + radius * np.cos(angle), 0.1 + radius * np.sin(angle)])
    values = rng.normal(size=(20_008, 3))
    values[8:, 0] += 4.0  # the continent differs: any weight leaking in shows
    return np.vstack([island, continent]), values


@pytest.mark.parametrize("reach", [GwpcaConfig().gaussian_reach, 3.0], ids=["default", "3"])
def test_default_gaussian_reach_equals_weighting_every_observation(reach: float) -> None:
    """The default reach is exact to 1e-6 where it matters most; a reach of 3 is not."""
    xy, values = island_and_continent()
    at = np.arange(8)
    result = geod(xy, values, at, Bandwidth("gaussian", True, 7, reach))
    errors = []
    for row, i in enumerate(at):
        ref = reference_gwpca(xy, values, int(i), "gaussian", True, 7)
        errors.append(np.abs(result.eigenvalues[row] - ref.eigenvalues).max() / ref.eigenvalues[0])
    if reach == GwpcaConfig().gaussian_reach:
        assert max(errors) <= EIGEN_TOLERANCE
    else:
        assert max(errors) > EIGEN_TOLERANCE


def test_gaussian_knn_weights_only_the_k_nearest_and_their_ties() -> None:
    """The old truncation, kept by name: within h (ties included), exp(−½(d/h)²)."""
    xy, values = regular_grid()
    at = np.arange(0, len(xy), 17)
    result = geod(xy, values, at, Bandwidth("gaussian_knn", True, 9))
    for row, i in enumerate(at):
        d = great_circle_km(xy[i, 0], xy[i, 1], xy[:, 0], xy[:, 1])
        h = np.sort(d)[8]
        w = np.where(d <= h * (1 + TIE), np.exp(-0.5 * (d / h) ** 2), 0.0)
        assert result.used[row] == (w > 0).sum() >= 9
        cov = np.cov(values[w > 0].T, aweights=w[w > 0], bias=True)
        expected = np.linalg.eigvalsh(cov)[::-1]
        np.testing.assert_allclose(result.eigenvalues[row], expected, rtol=1e-9, atol=1e-12)
