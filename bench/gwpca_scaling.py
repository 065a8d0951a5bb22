"""GWPCA scaling: batched evaluation vs naive per-point numpy loops, same data, same run.

    .venv/bin/python bench/gwpca_scaling.py [--sizes 10000 40000 160000] [--k 200]
    .venv/bin/python bench/gwpca_scaling.py --sizes 2500 10000 --repeats 1   # a quick look

For each size N, N observations with ``--vars`` variables are scattered over a
continent-sized lon/lat box, ordered like the merged table (row-major: latitude
band, then longitude), and GWPCA (adaptive bisquare, k neighbours) is evaluated
at all N of them with the pipeline's batched code
(:func:`pipeline.analysis.gwpca.evaluate_parallel`), once per thread count
(best of ``--repeats``). Printed: seconds, points/s, and the growth ratio per
4× points (target ≤ 4.5, i.e. near-linear). Seconds are process CPU time by
default (``--clock cpu``), so other work on a shared machine does not distort
the ratios; ``--clock wall`` on an idle machine shows what threads buy.

Two naive references run in the same process on the same data:

* ``gwmodel loop`` — what GWmodel's ``gwpca`` does per point: great-circle
  distance to every observation, kernel weights, weighted PCA of the
  observations with positive weight (``np.cov(aweights=...)`` + ``eigh``).
  Its cost per point grows with N. Target: batched ≥ 10× faster.
* ``tree loop`` — the same per-point loop but with neighbours from the same
  KD-tree the batched code uses, so it isolates what batching itself buys.

Timing either loop on every point would take minutes, so each runs on an evenly
spaced subset (``--naive-points``, ``--gwmodel-points``) and its time is
extrapolated linearly per point to N (say so when quoting the figures). The
batched eigenvalues are checked against both loops on their subsets.

Gaussian kernel (adaptive, ``--gaussian-k`` neighbours, one thread): the exact
kernel (every observation within ``gwpca.gaussian_reach`` bandwidths, as
GWmodel weights every observation) against ``gaussian_knn`` (the k nearest
only, not GWmodel's): seconds, growth per 4× points for each, and what
exactness costs (exact / knn). Exact results are checked against a brute-force
gaussian over all observations (to 1e-6 of the largest eigenvalue) on
``--gwmodel-points`` points. These observations cover the whole sphere
(area-uniform, as a global grid's land cells do), so no point sits at the edge
of the data. Growth is near-linear once the kernel's reach (~reach² × k
observations) is small against N: with k = 30 from N ≈ 10,000, with k = 200
from N ≈ 40,000 (below that the reach covers much of the sphere and the cost
per point still grows with N).

The machine may be shared: the load average is printed before and after;
CPU seconds (the default clock) are what the ratios use.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from pipeline.analysis.gwpca import (
    EARTH_RADIUS_KM,
    Bandwidth,
    Geometry,
    Observations,
    evaluate_parallel,
)
from pipeline.config import GwpcaConfig

#: Target of the issue: at most this growth in time per 4× points.
GROWTH_TARGET = 4.5
#: Target of the issue: batched at least this much faster than the naive loop.
SPEEDUP_TARGET = 10.0
#: Latitude band height of the synthetic table's row-major order (a grid row).
BAND_DEGREES = 0.25


def make_data(
    n: int, variables: int, seed: int, whole_sphere: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if whole_sphere:
        lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
        xy = np.column_stack([rng.uniform(-180, 180, n), lat])
    else:
        xy = np.column_stack([rng.uniform(-10, 40, n), rng.uniform(35, 70, n)])
    order = np.lexsort((xy[:, 0], -np.floor(xy[:, 1] / BAND_DEGREES)))
    xy = xy[order]
    values = rng.normal(size=(n, variables))
    values[:, 1] += np.sin(np.radians(xy[:, 0]) * 6) * values[:, 0]
    return xy, values


def haversine_km(lon0: float, lat0: float, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    lon0, lat0, lon, lat = map(np.radians, (lon0, lat0, lon, lat))
    a = np.sin((lat - lat0) / 2) ** 2 + np.cos(lat0) * np.cos(lat) * np.sin((lon - lon0) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def local_eigenvalues(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    use = weights > 0
    cov = np.cov(values[use].T, aweights=weights[use], bias=True)
    return np.linalg.eigh(cov)[0][::-1]


def gaussian_everywhere(xy: np.ndarray, values: np.ndarray, at: np.ndarray, k: int) -> np.ndarray:
    """GWmodel's adaptive gaussian: h the k-th distance, every observation weighted."""
    out = np.empty((len(at), values.shape[1]))
    for row, i in enumerate(at):
        km = haversine_km(xy[i, 0], xy[i, 1], xy[:, 0], xy[:, 1])
        h = np.partition(km, k - 1)[k - 1]
        out[row] = local_eigenvalues(values, np.exp(-0.5 * (km / h) ** 2))
    return out


def load_average() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def bisquare(km: np.ndarray, h: float) -> np.ndarray:
    return np.where(km < h, (1 - (km / h) ** 2) ** 2, 0.0)


def gwmodel_loop(xy: np.ndarray, values: np.ndarray, at: np.ndarray, k: int) -> np.ndarray:
    """GWmodel's per-point loop: all distances, the k-th as bandwidth, weighted PCA."""
    out = np.empty((len(at), values.shape[1]))
    for row, i in enumerate(at):
        km = haversine_km(xy[i, 0], xy[i, 1], xy[:, 0], xy[:, 1])
        h = np.partition(km, k - 1)[k - 1]
        out[row] = local_eigenvalues(values, bisquare(km, h))
    return out


def tree_loop(obs: Observations, at: np.ndarray, k: int) -> np.ndarray:
    """The same loop with neighbours from the batched code's KD-tree."""
    out = np.empty((len(at), obs.values.shape[1]))
    data = obs.values[:-1]
    for row, i in enumerate(at):
        dist, idx = obs.tree.query(obs.coords[i], k=k)
        km = obs.geometry.to_km(dist)
        out[row] = local_eigenvalues(data[idx], bisquare(km, km[-1]))
    return out


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def timed(clock, function, *args) -> tuple[float, object]:
    start = clock()
    result = function(*args)
    return clock() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000, 160_000])
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--vars", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--naive-points", type=int, default=1_000)
    parser.add_argument("--gwmodel-points", type=int, default=200)
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="cpu: process CPU time, robust to other load on a shared machine (sums threads); "
        "wall: elapsed time, to see thread speedups on an idle machine",
    )
    parser.add_argument("--gaussian-k", type=int, default=30)
    parser.add_argument(
        "--gaussian-chunk",
        type=int,
        default=100,
        help="points per evaluation chunk for the gaussian (its neighbourhoods are larger)",
    )
    args = parser.parse_args()
    clock = CLOCKS[args.clock]
    print(f"before: {load_average()} on {os.cpu_count()} CPUs (shared machine)")

    chunk = GwpcaConfig().batch_points
    bw = Bandwidth("bisquare", True, args.k)
    print(
        f"GWPCA adaptive bisquare k={args.k}, {args.vars} variables, chunk {chunk} points; "
        f"naive loops timed on {args.gwmodel_points} (gwmodel) / {args.naive_points} (tree) "
        f"points per size and extrapolated per point; {args.clock} seconds"
    )
    print(
        f"{'points':>8} {'threads':>7} {'seconds':>8} {'points/s':>9} {'growth/4x':>9} "
        f"{'gwmodel loop s':>14} {'speedup':>8} {'tree loop s':>11} {'speedup':>8}"
    )
    previous: dict[int, float] = {}
    worst_growth, worst_gwmodel, worst_tree = 0.0, float("inf"), float("inf")
    for n in args.sizes:
        xy, values = make_data(n, args.vars, seed=n)
        obs = Observations.build(Geometry(True), xy, values)
        at_tree = np.linspace(0, n - 1, min(args.naive_points, n)).astype(np.int64)
        at_gwmodel = np.linspace(0, n - 1, min(args.gwmodel_points, n)).astype(np.int64)
        seconds, tree_ref = timed(clock, tree_loop, obs, at_tree, args.k)
        tree_total = seconds / len(at_tree) * n
        seconds, gwmodel_ref = timed(clock, gwmodel_loop, xy, values, at_gwmodel, args.k)
        gwmodel_total = seconds / len(at_gwmodel) * n
        for threads in args.threads:
            runs = [
                timed(clock, evaluate_parallel, obs, obs.coords, bw, args.k, chunk, threads)
                for _ in range(args.repeats)
            ]
            seconds = min(run[0] for run in runs)
            result = runs[0][1]
            np.testing.assert_allclose(result.eigenvalues[at_tree], tree_ref, rtol=1e-8, atol=1e-12)
            np.testing.assert_allclose(
                result.eigenvalues[at_gwmodel], gwmodel_ref, rtol=1e-6, atol=1e-10
            )
            growth = seconds / previous[threads] if threads in previous else None
            previous[threads] = seconds
            worst_gwmodel = min(worst_gwmodel, gwmodel_total / seconds)
            worst_tree = min(worst_tree, tree_total / seconds)
            if growth is not None:
                worst_growth = max(worst_growth, growth)
            growth_text = f"{growth:9.2f}" if growth is not None else f"{'-':>9}"
            print(
                f"{n:8d} {threads:7d} {seconds:8.2f} {n / seconds:9.0f} {growth_text} "
                f"{gwmodel_total:14.1f} {gwmodel_total / seconds:7.1f}x "
                f"{tree_total:11.1f} {tree_total / seconds:7.1f}x"
            )
    print(
        f"worst growth per 4x points: {worst_growth:.2f} (target <= {GROWTH_TARGET}); "
        f"worst speedup vs gwmodel loop: {worst_gwmodel:.1f}x (target >= {SPEEDUP_TARGET}x); "
        f"vs tree loop: {worst_tree:.1f}x"
    )
    gaussian_section(args, clock)
    print(f"after: {load_average()} (shared machine: other work may run alongside)")


def gaussian_section(args: argparse.Namespace, clock) -> None:
    """Exact adaptive gaussian vs gaussian_knn: time, growth per 4x, cost of exactness."""
    reach = GwpcaConfig().gaussian_reach
    cap = GwpcaConfig().max_neighbours
    k = args.gaussian_k
    print(
        f"\nGWPCA adaptive gaussian k={k}, reach {reach:g} bandwidths, 1 thread, "
        f"chunk {args.gaussian_chunk} points; {args.clock} seconds"
    )
    print(
        f"{'points':>8} {'exact s':>8} {'growth/4x':>9} {'knn s':>8} {'growth/4x':>9} "
        f"{'exact/knn':>9} {'max err/eig1':>12}"
    )
    previous: dict[str, float] = {}
    worst: dict[str, float] = {"gaussian": 0.0, "gaussian_knn": 0.0}
    for n in args.sizes:
        xy, values = make_data(n, args.vars, seed=n, whole_sphere=True)
        obs = Observations.build(Geometry(True), xy, values)
        seconds: dict[str, float] = {}
        growth: dict[str, str] = {}
        results = {}
        for kernel in ("gaussian", "gaussian_knn"):
            bw = Bandwidth(kernel, True, k, reach)
            runs = [
                timed(clock, evaluate_parallel, obs, obs.coords, bw, cap, args.gaussian_chunk, 1)
                for _ in range(args.repeats)
            ]
            seconds[kernel] = min(run[0] for run in runs)
            results[kernel] = runs[0][1]
            if kernel in previous:
                ratio = seconds[kernel] / previous[kernel]
                worst[kernel] = max(worst[kernel], ratio)
                growth[kernel] = f"{ratio:9.2f}"
            else:
                growth[kernel] = f"{'-':>9}"
            previous[kernel] = seconds[kernel]
        at = np.linspace(0, n - 1, min(args.gwmodel_points, n)).astype(np.int64)
        reference = gaussian_everywhere(xy, values, at, k)
        error = np.abs(results["gaussian"].eigenvalues[at] - reference).max(axis=1)
        relative = float((error / reference[:, 0]).max())
        assert relative <= 1e-6, f"exact gaussian differs from all-point weighting: {relative}"
        print(
            f"{n:8d} {seconds['gaussian']:8.2f} {growth['gaussian']} "
            f"{seconds['gaussian_knn']:8.2f} {growth['gaussian_knn']} "
            f"{seconds['gaussian'] / seconds['gaussian_knn']:8.1f}x {relative:12.1e}"
        )
    print(
        f"worst growth per 4x points: exact gaussian {worst['gaussian']:.2f}, "
        f"gaussian_knn {worst['gaussian_knn']:.2f} (target <= {GROWTH_TARGET})"
    )


if __name__ == "__main__":
    main()
