"""Geographically weighted PCA (Harris, Brunsdon & Charlton 2011), batched and resumable.

At every evaluation point a PCA of the data is computed with each observation
weighted by a kernel of its distance to the point; where the loadings and the
share of variance change across space is the result. The definitions follow
GWmodel's ``gwpca``:

* weights: bisquare ``(1 − (d/h)²)²`` for ``d < h`` (0 beyond) or gaussian
  ``exp(−½ (d/h)²)`` for every observation; ``h`` is a distance in km (fixed)
  or, adaptive, the distance to the k-th nearest observation (the point itself
  counts as the first), so with bisquare the k-th neighbour gets weight 0
  exactly as in GWmodel; k larger than the data stretches the farthest
  distance by k / n. "Below h" means below by more than :data:`TIE_TOLERANCE`
  (relative), so observations tied with the k-th (mirror images on a regular
  grid) get weight 0 too, whatever the rounding of their distances;
* local PCA: eigen-decomposition of the weighted covariance
  ``Σ wᵢ (xᵢ − x̄_w)(xᵢ − x̄_w)ᵀ / Σ wᵢ``; its eigenvalues are the local
  variances (GWmodel's ``var``), the first k as % of their sum its
  ``local.PV``, and the variable with the largest |loading| on PC1 its
  ``win_var_PC1``; locations with fewer than :data:`MIN_LOCAL_POINTS`
  positive weights have no result (GWmodel skips ≤ 5);
* bandwidth cross-validation (``bw.gwpca``/``gwpca.cv``): leave observation i
  out (weight 0), fit the local PCA, reconstruct xᵢ from the first k loadings
  V: ``rᵢ = xᵢ − xᵢ V Vᵀ``, and sum a per-point score, minimised by
  golden-section search over [2, n] neighbours or [extent / 5000, extent] km
  like GWmodel's ``gold``. The per-point score is GWmodel's by default
  (``gwpca.cv_score: gwmodel``): both its R ``gwpca.cv`` (``sum(r)**2``) and
  its C++ (``pow(sum(r), 2)``) square the *sum* of the residual vector, so
  bandwidths match GWmodel's; ``squares`` uses ``‖rᵢ‖²``, the reconstruction
  error as usually written (Harris et al. 2011), which cancelling residual
  signs cannot hide.

Distances. For a geographic CRS the points are placed on the unit sphere in
3-D, where the Euclidean chord is monotone in the great-circle angle, so a
``cKDTree`` finds true great-circle neighbours (no seam at ±180°, no polar
distortion); chords are converted to great-circle km for the kernel. A
projected CRS uses its own coordinates scaled to km.

Speed and memory. Neighbours come from one tree query per batch (fixed shape:
k for adaptive bisquare, else the batch's largest count within the kernel's
cut, padded with weight 0), then the weighted covariances of the whole batch
are one batched matrix product and one batched ``eigh``. A point whose cut
holds more than ``gwpca.max_neighbours`` observations (a huge fixed
bandwidth, a wide gaussian) gets them from the tree's ball query and adds them
``max_neighbours`` at a time: the weighted covariance is a sum over
observations, so blocks give the same result as one pass (:class:`Moments`).
Batches are split into sub-chunks sized by the memory governor and run on
``gwpca.workers`` threads (numpy's BLAS and LAPACK release the GIL). Every
batch of evaluation points is a part file; a killed run resumes at the first
missing part.

Outputs (``PREFIX`` = ``gwpca``, or ``combined_gwpca``): ``PREFIX_local.parquet``
— one row per evaluation point: x, y, neighbours (positive weights),
eigenvalue_1…p (local variances), pv_pc1…k and pv_cumulative (% of the local
variance), pcJ_<column> (loading of a column on component J ≤ k), winner /
winner_index (largest |loading| on PC1); ``PREFIX_metrics.json`` — bandwidth
(and the CV trace when selected), counts, column means/stds, and the global PCA
(``global_loadings[i][j]``: variable i on component j) for comparison;
GeoTIFFs on the target grid strided by ``gwpca.subsample``: ``PREFIX_pv.tif``
(one band per pv column), ``PREFIX_pc1_loadings.tif`` (one band per column) and
``PREFIX_winner.tif`` (uint8 column index, names in the ``winner_<i>`` tags,
nodata 255).

Data and evaluation points. All complete rows of the table are the
observations, held in memory with the KD-tree; if they would exceed
:data:`DATA_BUDGET_SHARE` of the memory budget they are thinned to a regular
stride (every 2nd, 4th, … complete row), which is logged and recorded in the
metrics. Evaluation points are the observations on the ``gwpca.subsample``
lattice of the target grid (row and column multiples of it), thinned evenly
to ``gwpca.max_points`` when set.

Gaussian reach. The gaussian weights every observation; the ones beyond
``gwpca.gaussian_reach`` bandwidths (default 8) are left out, each weighing
less than exp(−32) ≈ 1.3e-14 of the nearest: even a million times more
observations outside than within h move the covariance by ~1e-8 of the local
weight, and the tests check the default against weighting every observation
(to 1e-6 of the largest eigenvalue). Validity counts the observations within
the reach, which differs from GWmodel's count (positive float64 weights, out
to ~38 h) only where fewer than 6 lie within the reach.

``kernel: gaussian_knn`` is *not* GWmodel's: it weights by ``exp(−½ (d/h)²)``
only the observations within h (adaptive: the k nearest and any tied with the
k-th), cheaper by about ``gaussian_reach``² and kept for comparison with
results of earlier versions, which used it for ``gaussian``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rasterio.crs import CRS
from scipy.spatial import cKDTree

from pipeline.analysis.io import (
    AnalysisError,
    ColumnStats,
    PartStore,
    RasterSpec,
    batch_count,
    file_identity,
    fingerprint,
    iter_table,
    standardize,
    table_rows,
    write_geotiff,
    write_json_atomic,
)
from pipeline.analysis.runtime import MethodRun
from pipeline.config import DEFAULT_GAUSSIAN_REACH, GwpcaConfig
from pipeline.executor import ordered

log = logging.getLogger("geod.analysis.gwpca")

#: Mean Earth radius (IUGG), km: great-circle distances on the sphere.
EARTH_RADIUS_KM = 6371.0088
#: GWmodel gives no result where ≤ 5 observations have positive weight.
MIN_LOCAL_POINTS = 6
#: Relative tolerance of the kernel's cut: an observation gets weight only if
#: its distance is below the cut (the bandwidth h, or ``gaussian_reach`` × h)
#: by more than this share of it. Distances computed two ways (chord → arc,
#: haversine) differ by ~1e-13 relative, so the mirror image of the k-th
#: neighbour on a regular grid would otherwise get a weight of ~1e-27 and count
#: as a seventh point; 1e-9 of 100 km is 0.1 mm, far below any cell size.
TIE_TOLERANCE = 1e-9
#: Points per padded neighbour query of a kernel cut by distance, after sorting
#: a chunk's points by their neighbour count: each group pads to its own
#: largest count, which wastes a few % instead of the ~50 % of padding a whole
#: chunk to its largest (gaussian bandwidths vary a lot from point to point).
QUERY_GROUP = 32
#: The kernel that weights only the k nearest with a gaussian (not GWmodel's).
GAUSSIAN_KNN = "gaussian_knn"
#: Share of the memory budget the observations and their KD-tree may take.
DATA_BUDGET_SHARE = 0.25
#: Share of the memory budget one sub-chunk's neighbour arrays may take.
CHUNK_BUDGET_SHARE = 0.05
#: Bytes per neighbour slot per variable during a sub-chunk: the gathered
#: values, their centred and weighted copies (float64), with headroom.
BYTES_PER_SLOT = 8 * 4
#: Bytes per observation held besides its values: table x/y, 3-D coordinates,
#: the tree's own copy of them and its index (all 8-byte).
BYTES_PER_POINT = 8 * (2 + 3 + 3 + 1)
#: Copies of an observation's values alive at once: the loaded rows and the
#: padded array the neighbour gather reads (float64 each).
VALUE_COPIES = 2
#: GWmodel's fixed-bandwidth search starts at the extent divided by this.
FIXED_SEARCH_LOWER_RATIO = 5000
#: Golden-section search stops when the bracket is this fraction of its start
#: (fixed bandwidth) or one neighbour wide (adaptive).
GOLDEN_TOLERANCE = 1e-3
_GOLDEN = (math.sqrt(5) - 1) / 2
#: Winner-map nodata (uint8): no result at this cell.
WINNER_NODATA = 255


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """How table coordinates become tree coordinates and km."""

    geographic: bool
    unit_km: float = 1.0

    @classmethod
    def of(cls, crs: object) -> Geometry:
        parsed = CRS.from_user_input(crs)
        if parsed.is_geographic:
            return cls(True)
        _name, metres = parsed.linear_units_factor
        return cls(False, metres / 1000.0)

    def embed(self, xy: np.ndarray) -> np.ndarray:
        if not self.geographic:
            return np.asarray(xy, float) * self.unit_km
        lon, lat = np.radians(xy[:, 0]), np.radians(xy[:, 1])
        cos_lat = np.cos(lat)
        return np.column_stack([cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)])

    def to_km(self, tree_distance: np.ndarray) -> np.ndarray:
        if not self.geographic:
            return tree_distance
        chord = np.clip(tree_distance, 0.0, 2.0)
        return 2.0 * EARTH_RADIUS_KM * np.arcsin(chord / 2.0)

    def from_km(self, km: np.ndarray) -> np.ndarray:
        """Tree distance (chord) of great-circle km; beyond the antipode, the diameter."""
        if not self.geographic:
            return np.asarray(km, float)
        angle = np.minimum(np.asarray(km, float) / EARTH_RADIUS_KM, math.pi)
        return 2.0 * np.sin(angle / 2.0)

    def extent_km(self, coords: np.ndarray) -> float:
        """Upper bound of the distance between two observations (the CV search's top)."""
        span = coords.max(axis=0) - coords.min(axis=0)
        return float(self.to_km(np.array([np.sqrt((span**2).sum())]))[0])


# --------------------------------------------------------------------------- model


@dataclass
class Observations:
    """The data points: tree coordinates, (standardized) values, and their KD-tree."""

    geometry: Geometry
    coords: np.ndarray
    values: np.ndarray
    tree: cKDTree

    @classmethod
    def build(cls, geometry: Geometry, xy: np.ndarray, values: np.ndarray) -> Observations:
        coords = geometry.embed(xy)
        # One zero row after the data: padded neighbour slots index it with weight 0.
        padded = np.vstack([values, np.zeros((1, values.shape[1]))])
        return cls(geometry, coords, padded, cKDTree(coords))

    @property
    def n(self) -> int:
        return len(self.coords)


@dataclass
class LocalPca:
    """Results at a batch of points; rows without a result are NaN (winner −1)."""

    eigenvalues: np.ndarray  # (B, p), descending
    loadings: np.ndarray  # (B, p, p), column j = component j
    used: np.ndarray  # (B,), observations with positive weight

    @property
    def valid(self) -> np.ndarray:
        return self.used >= MIN_LOCAL_POINTS

    def percent_variance(self, k: int) -> np.ndarray:
        total = self.eigenvalues.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.eigenvalues[:, :k] / total * 100.0

    def winner(self) -> np.ndarray:
        index = np.abs(self.loadings[:, :, 0]).argmax(axis=1)
        return np.where(self.valid, index, -1)


def kernel_weights(distance_km: np.ndarray, h_km: np.ndarray, kernel: str) -> np.ndarray:
    """GWmodel's kernels before any cut; ``h_km`` broadcasts against ``distance_km`` (B, K)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        squared = (distance_km / h_km) ** 2
        weights = (1.0 - squared) ** 2 if kernel == "bisquare" else np.exp(-0.5 * squared)
    return np.where(np.isfinite(distance_km), weights, 0.0)


def cut_weights(distance_km: np.ndarray, h_km: np.ndarray, bw: Bandwidth) -> np.ndarray:
    """Kernel weights with the cut of :meth:`Bandwidth.cutoff` and its tie rule applied.

    A distance counts as inside only if it is below the cut by more than
    :data:`TIE_TOLERANCE` (relative): mirror images of the k-th neighbour, whose
    distances differ from it by rounding alone, then get weight 0 like the k-th
    itself, as the definition says. ``gaussian_knn`` instead keeps everything
    up to its cut (the k-th neighbour and its ties get exp(−½)).
    """
    weights = kernel_weights(distance_km, h_km, bw.kernel)
    cut = h_km * bw.cutoff
    if bw.kernel == GAUSSIAN_KNN:
        inside = distance_km <= cut * (1.0 + TIE_TOLERANCE)
    else:
        inside = distance_km < cut * (1.0 - TIE_TOLERANCE)
    return np.where(inside, weights, 0.0)


@dataclass
class Moments:
    """Weighted sums of a batch of neighbourhoods, accumulated block by block.

    The weighted covariance is additive over blocks of neighbours, so a
    neighbourhood of any size goes through in blocks of bounded width. Sums are
    taken about a per-point ``shift`` (the first block's weighted mean), which
    keeps the one-pass formula as precise as a two-pass one when the local mean
    is far from zero.
    """

    shift: np.ndarray  # (B, p)
    weight: np.ndarray  # (B,)
    first: np.ndarray  # (B, p): Σ w (x − shift)
    second: np.ndarray  # (B, p, p): Σ w (x − shift)(x − shift)ᵀ
    used: np.ndarray  # (B,): positive weights

    @classmethod
    def empty(cls, points: int, variables: int) -> Moments:
        return cls(
            np.zeros((points, variables)),
            np.zeros(points),
            np.zeros((points, variables)),
            np.zeros((points, variables, variables)),
            np.zeros(points, dtype=np.int64),
        )

    def add(self, rows: np.ndarray, values: np.ndarray, weights: np.ndarray) -> None:
        """Add one block: ``values`` (b, K, p) and ``weights`` (b, K) of points ``rows``."""
        block_weight = weights.sum(axis=1)
        fresh = self.weight[rows] == 0
        if fresh.any():
            safe = np.where(block_weight > 0, block_weight, 1.0)
            mean = np.einsum("bk,bkp->bp", weights, values) / safe[:, None]
            self.shift[rows] = np.where(fresh[:, None], mean, self.shift[rows])
        centred = values - self.shift[rows][:, None, :]
        scaled = centred * np.sqrt(weights)[:, :, None]
        self.first[rows] += np.einsum("bk,bkp->bp", weights, centred)
        self.second[rows] += np.matmul(scaled.transpose(0, 2, 1), scaled)
        self.weight[rows] += block_weight
        self.used[rows] += (weights > 0).sum(axis=1)

    def pca(self) -> LocalPca:
        """Eigen-decomposition of every point's weighted covariance; < 6 points: none.

        Loadings are sign-normalised (largest |element| of each component
        positive) so that results are reproducible and comparable between runs.
        """
        safe = np.where(self.weight > 0, self.weight, 1.0)
        offset = self.first / safe[:, None]
        cov = self.second / safe[:, None, None] - offset[:, :, None] * offset[:, None, :]
        eigenvalues, vectors = principal_axes(cov)
        invalid = self.used < MIN_LOCAL_POINTS
        eigenvalues[invalid] = np.nan
        vectors[invalid] = np.nan
        return LocalPca(eigenvalues, vectors, self.used.copy())


def principal_axes(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and sign-normalised eigenvectors of covariances (B, p, p)."""
    eigenvalues, vectors = np.linalg.eigh(cov)
    eigenvalues = np.clip(eigenvalues[:, ::-1], 0.0, None)
    vectors = vectors[:, :, ::-1]
    rows = np.arange(len(vectors))[:, None]
    biggest = np.abs(vectors).argmax(axis=1)
    signs = np.sign(vectors[rows, biggest, np.arange(vectors.shape[2])[None, :]])
    return eigenvalues, vectors * np.where(signs == 0, 1.0, signs)[:, None, :]


def global_pca(values: np.ndarray, rows_per_chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Unweighted PCA of all observations, accumulated in row chunks (no full copy)."""
    mean = values.mean(axis=0)
    cov = np.zeros((values.shape[1], values.shape[1]))
    for start in range(0, len(values), rows_per_chunk):
        centred = values[start : start + rows_per_chunk] - mean
        cov += centred.T @ centred
    eigenvalues, vectors = principal_axes((cov / len(values))[None])
    return eigenvalues[0], vectors[0]


@dataclass(frozen=True)
class Bandwidth:
    """A kernel and its bandwidth: k neighbours (adaptive) or km (fixed)."""

    kernel: str
    adaptive: bool
    value: float
    reach: float = DEFAULT_GAUSSIAN_REACH

    @classmethod
    def of(cls, config: GwpcaConfig, value: float | None = None) -> Bandwidth:
        chosen = config.bandwidth if value is None else value
        return cls(config.kernel, config.adaptive, chosen, config.gaussian_reach)

    @property
    def cutoff(self) -> float:
        """Where weights stop, in bandwidths: the gaussian's reach, else 1."""
        return self.reach if self.kernel == "gaussian" else 1.0

    @property
    def nearest_only(self) -> bool:
        """Adaptive bisquare: every positive weight is among the k nearest (one k-NN query)."""
        return self.adaptive and self.kernel == "bisquare"


def evaluate(
    obs: Observations,
    points: np.ndarray,
    bw: Bandwidth,
    max_neighbours: int,
    exclude: np.ndarray | None = None,
) -> LocalPca:
    """Local PCA at ``points`` (tree coordinates); ``exclude`` = own index (leave-one-out).

    Adaptive: one k-NN query gives h (the k-th distance) and, for bisquare, the
    whole neighbourhood. Otherwise every observation within ``h × cutoff`` is
    weighted, ``max_neighbours`` at a time (see :func:`_add_within`).
    """
    moments = Moments.empty(len(points), obs.values.shape[1])
    if bw.adaptive:
        k = max(1, int(bw.value))  # GWmodel truncates: int(bw)
        slots = min(k, obs.n)
        dist, idx = obs.tree.query(points, k=slots)
        dist, idx = dist.reshape(len(points), slots), idx.reshape(len(points), slots)
        km = obs.geometry.to_km(dist)
        h = km[:, -1:] * (k / slots)
        if bw.nearest_only:
            _add(moments, np.arange(len(points)), obs, idx, km, h, bw, exclude)
            return moments.pca()
    else:
        h = np.full((len(points), 1), float(bw.value))
    _add_within(moments, obs, points, h, bw, max_neighbours, exclude)
    return moments.pca()


def _add(
    moments: Moments,
    rows: np.ndarray,
    obs: Observations,
    idx: np.ndarray,
    km: np.ndarray,
    h: np.ndarray,
    bw: Bandwidth,
    exclude: np.ndarray | None,
) -> None:
    """Weight one block of neighbours (``idx``/``km``, (b, K); padding = n) into ``moments``."""
    weights = cut_weights(km, h, bw)
    if exclude is not None:
        weights = np.where(idx == exclude[rows][:, None], 0.0, weights)
    weights = np.where(idx >= obs.n, 0.0, weights)
    moments.add(rows, np.take(obs.values, idx, axis=0), weights)


def _add_within(
    moments: Moments,
    obs: Observations,
    points: np.ndarray,
    h: np.ndarray,
    bw: Bandwidth,
    max_neighbours: int,
    exclude: np.ndarray | None,
) -> None:
    """Every observation within each point's cut, in blocks of at most ``max_neighbours``.

    Points whose ball holds at most ``max_neighbours`` observations get them
    from padded k-NN queries, :data:`QUERY_GROUP` points of similar counts at a
    time; a bigger ball (a huge fixed bandwidth, a wide gaussian)
    is listed by the tree's ball query and added ``max_neighbours`` at a time,
    so the neighbour arrays stay bounded and the result is the definition's
    however many observations the bandwidth reaches.
    """
    radius = obs.geometry.from_km(h[:, 0] * bw.cutoff * (1.0 + TIE_TOLERANCE))
    counts = np.asarray(obs.tree.query_ball_point(points, radius, return_length=True))
    dense = np.flatnonzero(counts <= max_neighbours)
    dense = dense[np.argsort(counts[dense], kind="stable")]
    for start in range(0, len(dense), QUERY_GROUP):
        rows = dense[start : start + QUERY_GROUP]
        slots = max(1, int(counts[rows].max()))
        bound = float(radius[rows].max()) * (1.0 + TIE_TOLERANCE)
        dist, idx = obs.tree.query(points[rows], k=slots, distance_upper_bound=bound)
        dist, idx = dist.reshape(len(rows), slots), idx.reshape(len(rows), slots)
        found = np.isfinite(dist)
        km = np.where(found, obs.geometry.to_km(np.where(found, dist, 0.0)), np.inf)
        _add(moments, rows, obs, idx, km, h[rows], bw, exclude)
    for row in np.flatnonzero(counts > max_neighbours):
        members = np.asarray(obs.tree.query_ball_point(points[row], radius[row]), dtype=np.intp)
        for start in range(0, len(members), max_neighbours):
            block = members[None, start : start + max_neighbours]
            chord = np.linalg.norm(obs.coords[block] - points[row], axis=2)
            here = np.array([row])
            _add(moments, here, obs, block, obs.geometry.to_km(chord), h[here], bw, exclude)


def evaluate_parallel(
    obs: Observations,
    points: np.ndarray,
    bw: Bandwidth,
    max_neighbours: int,
    chunk: int,
    workers: int,
    exclude: np.ndarray | None = None,
) -> LocalPca:
    """:func:`evaluate` over sub-chunks of ``chunk`` points on ``workers`` threads."""
    starts = range(0, len(points), max(1, chunk))

    def one(start: int) -> LocalPca:
        part = slice(start, start + chunk)
        return evaluate(
            obs, points[part], bw, max_neighbours, None if exclude is None else exclude[part]
        )

    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(one, starts))
    else:
        results = [one(start) for start in starts]
    return LocalPca(
        np.concatenate([r.eigenvalues for r in results]),
        np.concatenate([r.loadings for r in results]),
        np.concatenate([r.used for r in results]),
    )


@dataclass(frozen=True)
class LocalFits:
    """What every batch of local fits shares: the observations with their KD-tree."""

    obs: Observations
    bandwidth: Bandwidth
    max_neighbours: int
    workers: int


def local_fits(fits: LocalFits, batch: tuple[int, np.ndarray, int]) -> LocalPca:
    """One batch ``(index, points, chunk)`` of local PCAs, as a task."""
    _, points, chunk = batch
    return evaluate_parallel(
        fits.obs, points, fits.bandwidth, fits.max_neighbours, chunk, fits.workers
    )


# --------------------------------------------------------------------------- bandwidth


def cv_score(
    obs: Observations,
    at: np.ndarray,
    bw: Bandwidth,
    components: int,
    max_neighbours: int,
    chunk: int,
    workers: int = 1,
    residual: str = "gwmodel",
) -> float:
    """Leave-one-out reconstruction score at observations ``at`` (see the module docstring)."""
    result = evaluate_parallel(obs, obs.coords[at], bw, max_neighbours, chunk, workers, exclude=at)
    if not result.valid.all():
        return math.inf
    x = obs.values[at]
    v = result.loadings[:, :, :components]
    r = x - np.einsum("bp,bpk,bqk->bq", x, v, v)
    if residual == "gwmodel":
        return float((r.sum(axis=1) ** 2).sum())
    return float((r**2).sum())


def golden_section(
    score: Callable[[float], float], lower: float, upper: float, integer: bool
) -> tuple[float, list[tuple[float, float]]]:
    """Minimise ``score`` on [lower, upper] like GWmodel's ``gold``; returns (best, trace)."""
    trace: list[tuple[float, float]] = []
    cache: dict[float, float] = {}

    def f(x: float) -> float:
        key = float(round(x)) if integer else x
        if key not in cache:
            cache[key] = score(key)
            trace.append((key, cache[key]))
        return cache[key]

    tolerance = 1.0 if integer else (upper - lower) * GOLDEN_TOLERANCE
    a, b = lower, upper
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tolerance:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = f(d)
    best = min(cache, key=lambda key: (cache[key], key))
    return best, trace


def search_bounds(obs: Observations, config: GwpcaConfig, variables: int) -> tuple[float, float]:
    if config.adaptive:
        lower = max(MIN_LOCAL_POINTS + 1, variables + 1)
        return float(lower), float(max(lower, min(obs.n, config.max_neighbours)))
    upper = obs.geometry.extent_km(obs.coords)
    return upper / FIXED_SEARCH_LOWER_RATIO, upper


# --------------------------------------------------------------------------- stage


@dataclass
class Loaded:
    xy: np.ndarray
    values: np.ndarray
    stride: int


def load_observations(
    run: MethodRun,
    batch_rows: int,
    max_points: int,
    on_batch: Callable[[], None],
) -> Loaded:
    """Complete rows of the table, thinned to a regular stride if more than ``max_points``."""
    xy_parts: list[np.ndarray] = []
    value_parts: list[np.ndarray] = []
    stride, held, seen = 1, 0, 0
    for batch in iter_table(run.table, run.variables, batch_rows):
        complete = np.isfinite(batch.values).all(axis=1)
        ranks = seen + np.arange(int(complete.sum()))
        keep = ranks % stride == 0
        xy_parts.append(batch.xy[complete][keep])
        value_parts.append(batch.values[complete][keep])
        held += int(keep.sum())
        seen += int(complete.sum())
        while held > max_points:
            stride *= 2
            xy_all, val_all = np.concatenate(xy_parts), np.concatenate(value_parts)
            # Rows held so far are those with rank % (stride/2) == 0; keep every other one.
            xy_parts, value_parts = [xy_all[::2]], [val_all[::2]]
            held = len(xy_parts[0])
        on_batch()
    if not xy_parts or held == 0:
        raise AnalysisError(f"{run.table}: no complete rows in {', '.join(run.columns)}")
    return Loaded(np.concatenate(xy_parts), np.concatenate(value_parts), stride)


def evaluation_points(xy: np.ndarray, run: MethodRun, config: GwpcaConfig) -> np.ndarray:
    """Indices of the observations evaluated: cells on the ``subsample`` lattice, capped."""
    chosen = np.arange(len(xy))
    if config.subsample > 1:
        rows, cols = run.grid.cell_index(xy[:, 0], xy[:, 1])
        on = (rows >= 0) & (rows % config.subsample == 0) & (cols % config.subsample == 0)
        chosen = chosen[on]
    if config.max_points is not None and len(chosen) > config.max_points:
        picks = np.linspace(0, len(chosen) - 1, config.max_points).round().astype(np.int64)
        chosen = chosen[np.unique(picks)]
    return chosen


def result_table(xy: np.ndarray, result: LocalPca, columns: list[str], components: int) -> pa.Table:
    """One row per evaluation point: eigenvalues, % variance, loadings, winner."""
    data: dict[str, pa.Array] = {"x": pa.array(xy[:, 0]), "y": pa.array(xy[:, 1])}
    data["neighbours"] = pa.array(result.used.astype(np.int32))
    for j in range(len(columns)):
        data[f"eigenvalue_{j + 1}"] = pa.array(result.eigenvalues[:, j], from_pandas=True)
    pv = result.percent_variance(components)
    for j in range(components):
        data[f"pv_pc{j + 1}"] = pa.array(pv[:, j], from_pandas=True)
    data["pv_cumulative"] = pa.array(pv.sum(axis=1), from_pandas=True)
    for j in range(components):
        for v, name in enumerate(columns):
            data[f"pc{j + 1}_{name}"] = pa.array(result.loadings[:, v, j], from_pandas=True)
    winner = result.winner()
    names = pa.array([columns[w] if w >= 0 else None for w in winner], pa.string())
    data["winner"] = names
    data["winner_index"] = pa.array(
        np.where(winner >= 0, winner, 0).astype(np.int16), mask=winner < 0
    )
    return pa.table(data)


def run_gwpca(run: MethodRun) -> list[Path]:
    """The ``gwpca`` method: local PCA table, metrics and maps under ``run.prefix``."""
    ctx, config = run.ctx, run.ctx.config.analysis.gwpca
    p = len(run.columns)
    if config.components > p:
        raise AnalysisError(
            f"analysis.gwpca.components: {config.components} exceeds the {p} analysed columns"
        )
    batch_rows = run.scaled(ctx.config.analysis.read_batch_rows, floor=1_000)
    rows = table_rows(run.table)
    run.node.set_total(3 + int(config.select_bandwidth))  # load, [bandwidth], local, write
    load_node = run.phase("load", total=batch_count(rows, batch_rows))
    budget = ctx.governor.budget
    per_point = BYTES_PER_POINT + VALUE_COPIES * 8 * p
    max_points = max(MIN_LOCAL_POINTS, int(DATA_BUDGET_SHARE * budget / per_point))

    def loaded_batch() -> None:
        load_node.advance()
        run.boundary()

    loaded = load_observations(run, batch_rows, max_points, loaded_batch)
    xy, raw, stride = loaded.xy, loaded.values, loaded.stride
    del loaded
    run.phase_done(load_node)
    if stride > 1:
        log.warning(
            "gwpca: observations thinned to every %d-th complete row to fit the memory budget",
            stride,
        )
    stats = ColumnStats.empty(run.columns)
    stats.update(raw)
    if config.standardize:
        raw = standardize(raw, stats)
    obs = Observations.build(Geometry.of(run.grid.crs), xy, raw)
    del raw  # the padded copy inside ``obs`` is the one kept
    eval_index = evaluation_points(xy, run, config)
    if not len(eval_index):
        raise AnalysisError(f"{run.table}: no evaluation points on the subsample lattice")

    digest = fingerprint(
        run.prefix,
        run.columns,
        config.model_dump(mode="json"),
        file_identity(run.table),
        run.grid.width,
        run.grid.height,
        stride,
    )
    store = PartStore(run.work_root, run.prefix, digest)
    bandwidth = _bandwidth(run, obs, eval_index, store, p)
    chunk_base = _chunk_points(run, bandwidth, obs, p)

    batches = math.ceil(len(eval_index) / config.batch_points)
    local_node = run.phase("local", total=batches, done=len(store.done))

    def todo() -> Iterator[tuple[int, np.ndarray, int]]:
        """(batch, its evaluation points, sub-chunk size), the size read as each batch starts."""
        for index in range(batches):
            if index in store.done:
                continue
            part = eval_index[index * config.batch_points : (index + 1) * config.batch_points]
            chunk = run.scaled(min(chunk_base, config.batch_points))
            yield index, obs.coords[part], min(chunk, math.ceil(len(part) / config.workers))

    fits = LocalFits(obs, bandwidth, config.max_neighbours, config.workers)
    # Locally each batch is computed when its turn comes (its sub-chunks on gwpca.workers
    # threads); on a cluster the batches are tasks, the tree shipped to each worker once.
    results = ordered(run.ctx.executor, local_fits, fits, todo(), ahead=0)
    with contextlib.closing(results):
        for (index, _, _), result in results:
            part = eval_index[index * config.batch_points : (index + 1) * config.batch_points]
            store.record(index, result_table(xy[part], result, run.columns, config.components))
            local_node.advance()
            run.boundary()
    run.phase_done(local_node)
    outputs = _finalize(run, store, batches, bandwidth, stats, obs, stride, eval_index)
    store.remove()
    return outputs


def _chunk_points(run: MethodRun, bw: Bandwidth, obs: Observations, variables: int) -> int:
    """Points per sub-chunk so all workers' neighbour arrays fit their budget share."""
    config = run.ctx.config.analysis.gwpca
    limit = config.max_neighbours
    if bw.adaptive:  # the k-NN query that finds h holds k slots per point
        limit = int(bw.value) if bw.nearest_only else max(int(bw.value), limit)
    slots = max(1, min(limit, obs.n))
    share = CHUNK_BUDGET_SHARE * run.ctx.governor.budget / config.workers
    return max(1, int(share / (BYTES_PER_SLOT * variables * slots)))


def _bandwidth(
    run: MethodRun,
    obs: Observations,
    eval_index: np.ndarray,
    store: PartStore,
    variables: int,
) -> Bandwidth:
    """The configured bandwidth, or the CV-selected one (remembered across a resume)."""
    config = run.ctx.config.analysis.gwpca
    if not config.select_bandwidth:
        return Bandwidth.of(config)
    saved = store.load_array("bandwidth")
    if saved is not None:
        run.node.advance()  # the search finished before the resume
        return Bandwidth.of(config, float(saved[0]))
    lower, upper = search_bounds(obs, config, variables)
    node = run.phase("bandwidth", unit="scores")

    def score(value: float) -> float:
        bw = Bandwidth.of(config, value)
        chunk = run.scaled(_chunk_points(run, bw, obs, variables))
        result = cv_score(
            obs,
            eval_index,
            bw,
            config.components,
            config.max_neighbours,
            chunk,
            config.workers,
            config.cv_score,
        )
        node.advance()
        run.boundary()
        return result

    best, trace = golden_section(score, lower, upper, integer=config.adaptive)
    run.phase_done(node)
    store.save_array("bandwidth", np.array([best]))
    store.save_array("cv_trace", np.array(trace))
    log.info(
        "gwpca: cross-validated bandwidth %s (%s)", best, "neighbours" if config.adaptive else "km"
    )
    return Bandwidth.of(config, best)


def _finalize(
    run: MethodRun,
    store: PartStore,
    batches: int,
    bandwidth: Bandwidth,
    stats: ColumnStats,
    obs: Observations,
    stride: int,
    eval_index: np.ndarray,
) -> list[Path]:
    config = run.ctx.config.analysis.gwpca
    values = obs.values[:-1]  # without the padding row
    k = config.components
    node = run.phase("write", total=4, unit="files")
    table_path = store.assemble(run.output("local.parquet"), batches)
    outputs = [run.emit_output("table", table_path, rows=len(eval_index))]
    node.advance()

    global_values, global_axes = global_pca(values, run.ctx.config.analysis.read_batch_rows)
    cv_trace = store.load_array("cv_trace")
    metrics = {
        "method": run.prefix,
        "columns": run.columns,
        "kernel": bandwidth.kernel,
        "gaussian_reach": bandwidth.reach if bandwidth.kernel == "gaussian" else None,
        "tie_tolerance": TIE_TOLERANCE,
        "adaptive": bandwidth.adaptive,
        "bandwidth": bandwidth.value,
        "bandwidth_unit": "neighbours" if bandwidth.adaptive else "km",
        "bandwidth_selected": config.select_bandwidth,
        "cv_score": config.cv_score,
        "cv_trace": [] if cv_trace is None else cv_trace.tolist(),
        "components": k,
        "standardized": config.standardize,
        "observations": len(values),
        "observation_stride": stride,
        "evaluation_points": len(eval_index),
        "subsample": config.subsample,
        "column_mean": stats.mean.tolist(),
        "column_std": stats.std.tolist(),
        "global_eigenvalues": global_values.tolist(),
        "global_loadings": global_axes.tolist(),
    }
    outputs.append(
        run.emit_output("report", write_json_atomic(run.output("metrics.json"), metrics))
    )
    node.advance()
    grid = run.grid.strided(config.subsample)
    scratch = run.work_root / run.prefix
    pv_bands = [f"pv_pc{j + 1}" for j in range(k)] + ["pv_cumulative"]
    pc1_bands = [f"pc1_{name}" for name in run.columns]
    maps = [
        ("pv.tif", RasterSpec("float32", float("nan"), pv_bands), pv_bands, None),
        ("pc1_loadings.tif", RasterSpec("float32", float("nan"), pc1_bands), pc1_bands, None),
        (
            "winner.tif",
            RasterSpec("uint8", WINNER_NODATA, ["winner"]),
            ["winner_index"],
            {f"winner_{i}": name for i, name in enumerate(run.columns)},
        ),
    ]
    for name, spec, fields, tags in maps:
        path = write_geotiff(
            run.output(name),
            grid,
            spec,
            _map_batches(table_path, fields, spec),
            scratch,
            run.cache_bytes,
            tags,
        )
        outputs.append(
            run.emit_output("map", path, bands=list(spec.bands), subsample=config.subsample)
        )
    run.phase_done(node)
    return outputs


def _map_batches(
    table_path: Path, fields: list[str], spec: RasterSpec
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(xy, values) batches of the result table for one map; nulls become nodata."""
    parquet = pq.ParquetFile(table_path)
    for record in parquet.iter_batches(columns=["x", "y", *fields]):
        xy = np.column_stack([record.column("x").to_numpy(), record.column("y").to_numpy()])
        layers = []
        for field in fields:
            column = record.column(field)
            array = np.array(column.to_numpy(zero_copy_only=False), dtype=np.float64)
            array[column.is_null().to_numpy(zero_copy_only=False)] = np.nan
            layers.append(array)
        values = np.column_stack(layers)
        if np.issubdtype(np.dtype(spec.dtype), np.integer):
            values = np.where(np.isfinite(values), values, spec.nodata)
        yield xy, values
