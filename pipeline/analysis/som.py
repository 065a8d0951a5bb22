"""Self-organising map (MiniSom) of the merged table, trained on a sample, applied to every row.

Training needs random access to the rows, so it runs on a uniform sample of
``som.sample_size`` rows (the whole table when smaller), standardized with the
mean and standard deviation of the whole table from a streamed pass: the
columns are in unrelated units and an unscaled SOM would only see the one with
the biggest numbers. MiniSom is seeded (``som.seed``) for both its initial
weights and its sample order, so the same table and config give the same map.

Every row then gets its best-matching unit (BMU) in streamed batches, with a
vectorised distance to all nodes instead of MiniSom's per-row ``winner`` (same
Euclidean argmin, first node on ties), one part file per batch so a killed run
resumes at the first missing batch. Rows with a missing value get no BMU under
``missing: drop``; under ``missing: mean`` the missing value is the column
mean (0 after standardization).

Outputs (``PREFIX`` = ``som``, or ``combined`` for SOM on GWPCA loadings):
``PREFIX_bmu.parquet`` (x, y, PREFIX_bmu, PREFIX_distance; join on x/y),
``PREFIX_weights.parquet`` (node, row, col, weights in column units and as
z-scores), ``PREFIX_umatrix.npy`` (MiniSom's ``distance_map``),
``PREFIX_metrics.json`` (quantization error over all assigned rows; the sample's
quantization and topographic errors as MiniSom computes them) and
``PREFIX_bmu.tif`` (the BMU cluster map on the grid; nodata 65535).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from minisom import MiniSom

from pipeline.analysis.io import (
    AnalysisError,
    ColumnStats,
    PartStore,
    RasterSpec,
    batch_count,
    compute_stats,
    file_identity,
    fingerprint,
    iter_table,
    sample_rows,
    standardize,
    table_rows,
    write_geotiff,
    write_json_atomic,
    write_npy_atomic,
    write_parquet_atomic,
)
from pipeline.analysis.runtime import MethodRun
from pipeline.config import SomConfig

log = logging.getLogger("geod.analysis.som")

#: BMU map nodata (uint16): rows without a BMU and cells not in the table.
BMU_NODATA = 65535
#: Share of the memory budget the row × node distance arrays of one chunk may take.
CHUNK_BUDGET_SHARE = 0.05
#: Bytes per row per node while matching: the float64 squared-distance matrix
#: and the temporaries of its expansion.
BYTES_PER_DISTANCE = 8 * 3
#: The method's sub-steps, in order (its node counts them).
SOM_PHASES = ("stats", "train", "assign", "write")


def prepare(values: np.ndarray, stats: ColumnStats, missing: str) -> tuple[np.ndarray, np.ndarray]:
    """Standardized values and the mask of rows that get a BMU under the missing policy."""
    z = standardize(values, stats)
    complete = np.isfinite(z).all(axis=1)
    if missing == "mean":
        return np.where(np.isfinite(z), z, 0.0), np.ones(len(z), dtype=bool)
    return z, complete


def train(sample: np.ndarray, config: SomConfig) -> MiniSom:
    """A seeded MiniSom trained on ``sample`` (already standardized, no NaN)."""
    som = MiniSom(
        config.rows,
        config.cols,
        sample.shape[1],
        sigma=config.sigma,
        learning_rate=config.learning_rate,
        random_seed=config.seed,
    )
    som.random_weights_init(sample)
    som.train(sample, config.iterations, random_order=True)
    return som


def best_matching_units(weights: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat BMU index (row-major over the map) and Euclidean distance for each row."""
    nodes = weights.reshape(-1, weights.shape[-1])
    d2 = (values**2).sum(axis=1)[:, None] - 2.0 * values @ nodes.T + (nodes**2).sum(axis=1)[None, :]
    best = d2.argmin(axis=1)
    # Recompute the winning distance directly: the expanded form loses precision.
    distance = np.sqrt(((values - nodes[best]) ** 2).sum(axis=1))
    return best, distance


def run_som(run: MethodRun) -> list[Path]:
    """The ``som`` method on ``run.table``'s ``run.columns``; outputs under ``run.prefix``."""
    config = run.ctx.config.analysis.som
    if config.rows * config.cols >= BMU_NODATA:
        raise AnalysisError(
            f"analysis.som: {config.rows}×{config.cols} nodes do not fit the uint16 BMU map"
        )
    # Fixed (not governor-scaled): a batch index must mean the same rows after a resume.
    batch_rows = config.batch_rows
    rows = table_rows(run.table)
    batches = batch_count(rows, batch_rows)
    digest = fingerprint(
        run.prefix,
        run.columns,
        config.model_dump(mode="json"),
        file_identity(run.table),
        batch_rows,
    )
    store = PartStore(run.work_root, run.prefix, digest)

    run.node.set_total(len(SOM_PHASES))
    stats_node = run.phase("stats", total=batches)

    def counted() -> None:
        stats_node.advance()
        run.boundary()

    stats = compute_stats(run.table, run.variables, batch_rows, counted)
    run.phase_done(stats_node)
    population = stats.complete_rows if config.missing == "drop" else stats.rows
    if population == 0:
        raise AnalysisError(
            f"{run.table}: no complete rows in {', '.join(run.columns)} to train on"
        )

    train_node = run.phase("train", total=1, unit="maps")
    weights = store.load_array("weights")
    _, sample = sample_rows(
        run.table,
        run.variables,
        batch_rows,
        config.sample_size,
        config.seed,
        population,
        complete_only=config.missing == "drop",
    )
    sample, _ = prepare(sample, stats, config.missing)
    som = train(sample, config) if weights is None else _restore(weights, config)
    if weights is None:
        store.save_array("weights", som.get_weights())
    run.phase_done(train_node)
    run.boundary()

    weights = som.get_weights()
    nodes = config.rows * config.cols
    node_chunk = max(
        1, int(CHUNK_BUDGET_SHARE * run.ctx.governor.budget / (BYTES_PER_DISTANCE * nodes))
    )
    assign_node = run.phase("assign", total=batches, done=len(store.done))
    start = min((i for i in range(batches) if i not in store.done), default=batches)
    for batch in iter_table(run.table, run.variables, batch_rows, start_batch=start):
        if batch.index in store.done:
            continue
        z, usable = prepare(batch.values, stats, config.missing)
        bmu = np.full(len(z), -1, dtype=np.int64)
        distance = np.full(len(z), np.nan)
        chunk = run.scaled(min(batch_rows, node_chunk))
        for lo in range(0, len(z), chunk):
            part = slice(lo, lo + chunk)
            take = np.flatnonzero(usable[part]) + lo
            if len(take):
                bmu[take], distance[take] = best_matching_units(weights, z[take])
        store.record(batch.index, _bmu_table(run.prefix, batch.xy, bmu, distance))
        assign_node.advance()
        run.boundary()
    run.phase_done(assign_node)
    outputs = _finalize(run, store, batches, som, sample, stats)
    store.remove()
    return outputs


def _restore(weights: np.ndarray, config: SomConfig) -> MiniSom:
    """A MiniSom holding saved weights (resume: training is not repeated)."""
    som = MiniSom(
        config.rows,
        config.cols,
        weights.shape[-1],
        sigma=config.sigma,
        learning_rate=config.learning_rate,
        random_seed=config.seed,
    )
    som._weights = weights.copy()  # MiniSom has no public setter for trained weights.
    return som


def _bmu_table(prefix: str, xy: np.ndarray, bmu: np.ndarray, distance: np.ndarray) -> pa.Table:
    missing = bmu < 0
    return pa.table(
        {
            "x": pa.array(xy[:, 0]),
            "y": pa.array(xy[:, 1]),
            f"{prefix}_bmu": pa.array(np.where(missing, 0, bmu).astype(np.int32), mask=missing),
            f"{prefix}_distance": pa.array(distance, mask=missing),
        }
    )


def _finalize(
    run: MethodRun,
    store: PartStore,
    batches: int,
    som: MiniSom,
    sample: np.ndarray,
    stats: ColumnStats,
) -> list[Path]:
    config = run.ctx.config.analysis.som
    node = run.phase("write", total=5, unit="files")
    bmu_path = store.assemble(run.output("bmu.parquet"), batches)
    outputs = [run.emit_output("table", bmu_path, join=["x", "y"])]
    node.advance()

    weights = som.get_weights()
    nodes = weights.reshape(-1, weights.shape[-1])
    grid_rows, grid_cols = np.unravel_index(np.arange(len(nodes)), weights.shape[:2])
    table = {
        "node": np.arange(len(nodes), dtype=np.int32),
        "row": grid_rows.astype(np.int32),
        "col": grid_cols.astype(np.int32),
    }
    for j, name in enumerate(run.columns):
        table[name] = nodes[:, j] * np.where(stats.std[j] > 0, stats.std[j], 1.0) + stats.mean[j]
        table[f"{name}_z"] = nodes[:, j]
    weights_path = write_parquet_atomic(run.output("weights.parquet"), pa.table(table))
    outputs.append(run.emit_output("table", weights_path, nodes=len(nodes)))
    node.advance()

    umatrix = write_npy_atomic(run.output("umatrix.npy"), som.distance_map())
    outputs.append(run.emit_output("array", umatrix, shape=list(weights.shape[:2])))
    node.advance()

    distance = pq.read_table(bmu_path, columns=[f"{run.prefix}_distance"]).column(0)
    assigned = len(distance) - distance.null_count
    metrics = {
        "method": run.prefix,
        "columns": run.columns,
        "grid": [config.rows, config.cols],
        "seed": config.seed,
        "iterations": config.iterations,
        "missing": config.missing,
        "sample_rows": len(sample),
        "assigned_rows": int(assigned),
        "quantization_error": float(pc.mean(distance).as_py() or 0.0),
        "quantization_error_sample": float(som.quantization_error(sample)),
        "topographic_error_sample": float(som.topographic_error(sample)),
        "column_mean": stats.mean.tolist(),
        "column_std": stats.std.tolist(),
    }
    outputs.append(
        run.emit_output("report", write_json_atomic(run.output("metrics.json"), metrics))
    )
    node.advance()

    spec = RasterSpec("uint16", BMU_NODATA, [f"{run.prefix}_bmu"])
    map_path = write_geotiff(
        run.output("bmu.tif"),
        run.grid,
        spec,
        _map_batches(bmu_path, f"{run.prefix}_bmu"),
        run.work_root / run.prefix,
        run.cache_bytes,
    )
    outputs.append(run.emit_output("map", map_path, nodes=len(nodes)))
    run.phase_done(node)
    return outputs


def _map_batches(table_path: Path, field: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for record in pq.ParquetFile(table_path).iter_batches(columns=["x", "y", field]):
        xy = np.column_stack([record.column("x").to_numpy(), record.column("y").to_numpy()])
        column = record.column(field)
        bmu = np.array(column.to_numpy(zero_copy_only=False), dtype=np.float64)
        bmu[column.is_null().to_numpy(zero_copy_only=False)] = BMU_NODATA
        yield xy, bmu[:, None]
