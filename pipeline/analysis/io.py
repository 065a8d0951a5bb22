"""Reading the merged table in bounded batches, and writing analysis outputs durably.

The merged table of a global run can be far larger than memory, so nothing here
ever reads it whole: :func:`iter_table` re-chunks ``ParquetFile.iter_batches``
into batches of exactly ``batch_rows`` rows, which makes a batch index mean the
same rows in every run, so a killed analysis resumes at the first batch whose
part file is missing (:class:`PartStore`). Column statistics are merged batch by
batch (Chan's parallel update), and training samples are drawn by rank without
holding more than one batch.

Outputs are never visible half-written: single files go through
:mod:`pipeline.export.atomic` (temporary name, fsync, rename); per-batch part
files and their manifest are written the same way, and the final table is
assembled from the parts into a temporary file that is renamed at the end.
GeoTIFFs are filled window by window in a sparse scratch GeoTIFF (GDAL's block
cache, capped from the memory budget, is the only buffer) and then copied,
compressed, to their final name.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.windows import Window

from pipeline.context import RunError
from pipeline.export.atomic import (
    PARTIAL_MARKER,
    clean_partials,
    commit,
    discard,
    partial_path,
)

#: Columns of the merged table that are coordinates or indices, never analysed.
COORDINATE_COLUMNS = ("x", "y", "row", "col")
#: Scratch directory (inside the output directory) for parts, manifests and rasters.
WORK_DIR_NAME = ".analysis-work"
#: Values (cells × bands) of one GeoTIFF window read and rewritten while
#: scattering a batch: 4 Mi values is 16 MiB of float32, whatever the grid width
#: or band count. A merged batch spans a few grid rows, so it needs one or two.
RASTER_WINDOW_VALUES = 4 * 1024 * 1024
#: Version of the part-manifest layout; a change discards old parts.
MANIFEST_VERSION = 1


class AnalysisError(RunError):
    """Bad analysis input or state, phrased as one line naming the file and the reason."""


# --------------------------------------------------------------------------- grids


@dataclass(frozen=True)
class RasterGrid:
    """Where analysis maps go: the target grid, or a regular subsample of it.

    Only ``crs``, ``transform``, ``width`` and ``height`` are used, so the
    pipeline's :class:`~pipeline.grid.TargetGrid` converts with :meth:`of`.
    """

    crs: Any
    transform: Affine
    width: int
    height: int

    @classmethod
    def of(cls, grid: Any) -> RasterGrid:
        return cls(grid.crs, grid.transform, int(grid.width), int(grid.height))

    def strided(self, step: int) -> RasterGrid:
        """Every ``step``-th cell in both directions, keeping cell (0, 0)'s corner."""
        if step == 1:
            return self
        return RasterGrid(
            self.crs,
            self.transform @ Affine.scale(step),
            math.ceil(self.width / step),
            math.ceil(self.height / step),
        )

    def cell_index(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) of the cells whose centres are (x, y); -1 outside the grid."""
        cols_f, rows_f = ~self.transform @ (np.asarray(x, float), np.asarray(y, float))
        rows = np.floor(rows_f).astype(np.int64)
        cols = np.floor(cols_f).astype(np.int64)
        outside = (rows < 0) | (rows >= self.height) | (cols < 0) | (cols >= self.width)
        rows[outside] = -1
        cols[outside] = -1
        return rows, cols


# --------------------------------------------------------------------------- variables


@dataclass(frozen=True)
class Variables:
    """What a method analyses: the table columns it reads, categorical ones one-hot encoded.

    A class code is a label, not a quantity (class 7 is not "more" than class
    3), so a categorical column never enters a covariance or a distance as a
    number: it becomes one 0/1 indicator per class, named ``<column>_<class>``
    (null where the code is null). The indicators of a row sum to one, so a
    GWPCA of them always has one zero local eigenvalue.
    """

    sources: tuple[str, ...]
    classes: tuple[tuple[str, tuple[float, ...]], ...] = ()

    @classmethod
    def plain(cls, columns: Sequence[str]) -> Variables:
        return cls(tuple(columns))

    @classmethod
    def of(cls, columns: Sequence[str] | Variables) -> Variables:
        return columns if isinstance(columns, Variables) else cls.plain(columns)

    @property
    def names(self) -> list[str]:
        """Analysed variable names, one per output column (indicators expanded)."""
        classes = dict(self.classes)
        names: list[str] = []
        for source in self.sources:
            if source in classes:
                names += [f"{source}_{class_label(code)}" for code in classes[source]]
            else:
                names.append(source)
        return names

    def expand(self, values: np.ndarray) -> np.ndarray:
        """Source values (n, sources) → analysed values (n, names)."""
        if not self.classes:
            return values
        classes = dict(self.classes)
        parts = []
        for j, source in enumerate(self.sources):
            column = values[:, j]
            if source not in classes:
                parts.append(column[:, None])
                continue
            indicator = (column[:, None] == np.array(classes[source])[None, :]).astype(float)
            indicator[~np.isfinite(column)] = np.nan
            parts.append(indicator)
        return np.hstack(parts)


def class_label(code: float) -> str:
    """A class code as a column-name suffix: ``3`` for 3.0, else its shortest repr."""
    return str(int(code)) if float(code).is_integer() else repr(float(code))


def scan_classes(
    path: Path, columns: Sequence[str], batch_rows: int, limit: int
) -> tuple[tuple[str, tuple[float, ...]], ...]:
    """The distinct non-null values of each categorical column, in one streamed pass."""
    found: dict[str, set[float]] = {name: set() for name in columns}
    for batch in iter_table(path, columns, batch_rows):
        for j, name in enumerate(columns):
            column = batch.values[:, j]
            found[name].update(np.unique(column[np.isfinite(column)]).tolist())
            if len(found[name]) > limit:
                raise AnalysisError(
                    f"{path}: categorical column {name!r} has more than {limit} classes "
                    "(analysis.max_categories)"
                )
    return tuple((name, tuple(sorted(found[name]))) for name in columns)


# --------------------------------------------------------------------------- reading


@dataclass
class TableBatch:
    """Rows ``start`` … ``start + len`` of the table: coordinates and float64 values."""

    index: int
    start: int
    xy: np.ndarray
    values: np.ndarray


def open_table(path: Path) -> pq.ParquetFile:
    """Open the merged table, or fail with one line naming it."""
    try:
        return pq.ParquetFile(path)
    except FileNotFoundError:
        raise AnalysisError(f"{path}: merged table not found (run the export stage)") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise AnalysisError(f"{path}: not a readable Parquet table ({exc})") from None


def table_columns(path: Path, wanted: Sequence[str] | None) -> list[str]:
    """The analysed columns: ``wanted`` (all checked present) or every non-coordinate one."""
    schema = open_table(path).schema_arrow
    names = schema.names
    for required in ("x", "y"):
        if required not in names:
            raise AnalysisError(f"{path}: column {required!r} missing (has {', '.join(names)})")
    if wanted:
        missing = [c for c in wanted if c not in names]
        if missing:
            raise AnalysisError(
                f"{path}: analysis column(s) {', '.join(missing)} not in the table "
                f"(has {', '.join(names)})"
            )
        columns = list(wanted)
    else:
        columns = [n for n in names if n not in COORDINATE_COLUMNS]
    if not columns:
        raise AnalysisError(f"{path}: no data columns to analyse")
    for name in columns:
        kind = schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise AnalysisError(f"{path}: column {name!r} is {kind}, not numeric")
    return columns


def table_rows(path: Path) -> int:
    return open_table(path).metadata.num_rows


def batch_count(rows: int, batch_rows: int) -> int:
    return max(1, math.ceil(rows / batch_rows)) if rows else 0


def _to_float(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Arrow column → float64 with nulls as NaN (the table's missing-value convention)."""
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def iter_table(
    path: Path, columns: Sequence[str] | Variables, batch_rows: int, start_batch: int = 0
) -> Iterator[TableBatch]:
    """Batches of exactly ``batch_rows`` rows (the last may be shorter), from ``start_batch``.

    Row groups before the first wanted row are not read at all, so resuming
    late in a big table costs nothing for the skipped part. Values are the
    analysed variables (categorical columns expanded, see :class:`Variables`).
    """
    variables = Variables.of(columns)
    parquet = open_table(path)
    first_row = start_batch * batch_rows
    groups, group_start, skip = [], 0, 0
    for index in range(parquet.num_row_groups):
        count = parquet.metadata.row_group(index).num_rows
        if group_start + count > first_row:
            if not groups:
                skip = first_row - group_start
            groups.append(index)
        group_start += count
    if not groups:
        return
    wanted = ["x", "y", *variables.sources]
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    index, start = start_batch, first_row

    def emit(table: pa.Table) -> TableBatch:
        xy = np.column_stack([_to_float(table.column("x")), _to_float(table.column("y"))])
        values = np.column_stack([_to_float(table.column(c)) for c in variables.sources])
        values = variables.expand(values.reshape(len(table), len(variables.sources)))
        return TableBatch(index, start, xy, values)

    for record in parquet.iter_batches(batch_size=batch_rows, row_groups=groups, columns=wanted):
        if skip:
            dropped = min(skip, record.num_rows)
            record = record.slice(dropped)
            skip -= dropped
        if record.num_rows == 0:
            continue
        pending.append(record)
        pending_rows += record.num_rows
        while pending_rows >= batch_rows:
            table = pa.Table.from_batches(pending).combine_chunks()
            yield emit(table.slice(0, batch_rows))
            rest = table.slice(batch_rows)
            pending = rest.to_batches()
            pending_rows = rest.num_rows
            index += 1
            start += batch_rows
    if pending_rows:
        yield emit(pa.Table.from_batches(pending))


@dataclass
class ColumnStats:
    """Per-column count/mean/std/min/max ignoring missing values, and complete-row count."""

    columns: list[str]
    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    rows: int = 0
    complete_rows: int = 0

    @classmethod
    def empty(cls, columns: Sequence[str]) -> ColumnStats:
        p = len(columns)
        return cls(
            list(columns),
            np.zeros(p),
            np.zeros(p),
            np.zeros(p),
            np.full(p, np.inf),
            np.full(p, -np.inf),
        )

    def update(self, values: np.ndarray) -> None:
        """Merge one batch (Chan et al.'s pairwise update: exact, order-independent)."""
        self.rows += len(values)
        self.complete_rows += int(np.isfinite(values).all(axis=1).sum())
        valid = np.isfinite(values)
        n_b = valid.sum(axis=0).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            sums = np.where(valid, values, 0.0).sum(axis=0)
            mean_b = np.where(n_b > 0, sums / np.maximum(n_b, 1), 0.0)
            dev = np.where(valid, values - mean_b, 0.0)
            m2_b = (dev * dev).sum(axis=0)
        total = self.count + n_b
        delta = mean_b - self.mean
        safe_total = np.maximum(total, 1)
        self.mean = self.mean + delta * n_b / safe_total
        self.m2 = self.m2 + m2_b + delta * delta * self.count * n_b / safe_total
        self.count = total
        if valid.any():
            masked_min = np.where(valid, values, np.inf).min(axis=0)
            masked_max = np.where(valid, values, -np.inf).max(axis=0)
            self.minimum = np.minimum(self.minimum, masked_min)
            self.maximum = np.maximum(self.maximum, masked_max)

    @property
    def std(self) -> np.ndarray:
        """Sample standard deviation (n − 1), as R's ``scale`` and ``princomp(cor=TRUE)``."""
        return np.sqrt(self.m2 / np.maximum(self.count - 1, 1))

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "complete_rows": self.complete_rows,
            "columns": {
                name: {
                    "count": int(self.count[i]),
                    "mean": float(self.mean[i]) if self.count[i] else None,
                    "std": float(self.std[i]) if self.count[i] > 1 else None,
                    "min": float(self.minimum[i]) if self.count[i] else None,
                    "max": float(self.maximum[i]) if self.count[i] else None,
                }
                for i, name in enumerate(self.columns)
            },
        }


def standardize(values: np.ndarray, stats: ColumnStats) -> np.ndarray:
    """z-scores; a constant column becomes 0 instead of dividing by zero."""
    std = stats.std
    safe = np.where(std > 0, std, 1.0)
    return (values - stats.mean) / safe


def compute_stats(
    path: Path,
    columns: Sequence[str] | Variables,
    batch_rows: int,
    on_batch: Callable[[], None] | None = None,
) -> ColumnStats:
    """One streamed pass over the table; ``on_batch`` runs after each batch (progress, stop)."""
    stats = ColumnStats.empty(Variables.of(columns).names)
    for batch in iter_table(path, columns, batch_rows):
        stats.update(batch.values)
        if on_batch is not None:
            on_batch()
    return stats


def sample_rows(
    path: Path,
    columns: Sequence[str] | Variables,
    batch_rows: int,
    size: int,
    seed: int,
    population: int,
    complete_only: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """A uniform sample of ``size`` rows (complete rows only if asked), streamed.

    The ranks are drawn first from ``population`` (the number of eligible rows,
    known from the stats pass), so one pass picks them without a reservoir.
    """
    rng = np.random.default_rng(seed)
    take = min(size, population)
    ranks = np.sort(rng.choice(population, size=take, replace=False)) if take else np.empty(0)
    xy_parts, value_parts, seen = [], [], 0
    for batch in iter_table(path, columns, batch_rows):
        if seen >= population or not len(ranks):
            break
        eligible = (
            np.flatnonzero(np.isfinite(batch.values).all(axis=1))
            if complete_only
            else np.arange(len(batch.values))
        )
        lo, hi = np.searchsorted(ranks, [seen, seen + len(eligible)])
        picked = eligible[ranks[lo:hi].astype(np.int64) - seen]
        xy_parts.append(batch.xy[picked])
        value_parts.append(batch.values[picked])
        seen += len(eligible)
    if not xy_parts:
        return np.empty((0, 2)), np.empty((0, len(Variables.of(columns).names)))
    return np.concatenate(xy_parts), np.concatenate(value_parts)


# --------------------------------------------------------------------------- writing


def fresh_partial(final: Path) -> Path:
    """A temporary name for ``final``, after removing those a killed earlier writer left.

    A SIGKILL between creating a temporary file and renaming it leaves one behind;
    the rerun that publishes ``final`` is the one place that knows it is garbage.
    """
    clean_partials(final)
    return partial_path(final)


def write_bytes_atomic(final: Path, data: bytes) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = fresh_partial(final)
    try:
        partial.write_bytes(data)
    except OSError:
        discard(partial)
        raise
    commit(partial, final)
    return final


def write_json_atomic(final: Path, data: Any) -> Path:
    return write_bytes_atomic(final, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def write_npy_atomic(final: Path, array: np.ndarray) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = fresh_partial(final)
    try:
        with open(partial, "wb") as handle:
            np.save(handle, array)
    except OSError:
        discard(partial)
        raise
    commit(partial, final)
    return final


def write_parquet_atomic(final: Path, table: pa.Table) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = fresh_partial(final)
    try:
        pq.write_table(table, partial, compression="zstd")
    except (OSError, pa.ArrowException):
        discard(partial)
        raise
    commit(partial, final)
    return final


def fingerprint(*parts: Any) -> str:
    """Digest of what a set of part files depends on (config, input file identity)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_identity(path: Path) -> dict[str, Any]:
    """Size and mtime of an input: a rewritten table invalidates earlier parts."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class PartStore:
    """Per-batch part files of one analysis pass, under a manifest naming what they depend on.

    The manifest holds a fingerprint of everything the parts depend on (config,
    input table identity); parts from another config or another table are
    discarded, never mixed in. A part file only ever appears under its final
    name complete (written to a temporary name, fsynced, renamed), so the set
    of part files present *is* the set of finished batches: no per-batch
    manifest rewrite is needed, and a SIGKILL between the two cannot disagree.
    Leftover temporary files of a killed write are removed on open.
    """

    def __init__(self, root: Path, key: str, digest: str) -> None:
        self.root = root / key
        self.digest = digest
        self.root.mkdir(parents=True, exist_ok=True)
        self._manifest = self.root / "manifest.json"
        state = self._read()
        if state.get("fingerprint") == digest and state.get("version") == MANIFEST_VERSION:
            for leftover in self.root.glob(f"*{PARTIAL_MARKER}*"):
                leftover.unlink()
            finished = self.root.glob("part-*.parquet")
            self.done = {int(part.stem.removeprefix("part-")) for part in finished}
        else:
            self.reset()

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self._manifest.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def reset(self) -> None:
        for leftover in self.root.iterdir():
            if leftover.is_file():
                leftover.unlink()
        self.done: set[int] = set()
        write_json_atomic(self._manifest, {"version": MANIFEST_VERSION, "fingerprint": self.digest})

    def part(self, index: int) -> Path:
        return self.root / f"part-{index:06d}.parquet"

    def record(self, index: int, table: pa.Table) -> None:
        write_parquet_atomic(self.part(index), table)
        self.done.add(index)

    def save_array(self, name: str, array: np.ndarray) -> Path:
        return write_npy_atomic(self.root / f"{name}.npy", array)

    def load_array(self, name: str) -> np.ndarray | None:
        path = self.root / f"{name}.npy"
        return np.load(path) if path.exists() else None

    def assemble(self, final: Path, count: int) -> Path:
        """Concatenate parts 0 … count−1, in order, into ``final`` (atomically)."""
        missing = [i for i in range(count) if i not in self.done]
        if missing:
            raise AnalysisError(f"{self.root}: parts {missing[:5]} missing, cannot assemble")
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = fresh_partial(final)
        writer = None
        try:
            for index in range(count):
                table = pq.read_table(self.part(index))
                if writer is None:
                    writer = pq.ParquetWriter(partial, table.schema, compression="zstd")
                writer.write_table(table)
            if writer is not None:
                writer.close()
                writer = None
        except (OSError, pa.ArrowException):
            if writer is not None:
                writer.close()
            discard(partial)
            raise
        commit(partial, final)
        return final

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- GeoTIFFs


@dataclass(frozen=True)
class RasterSpec:
    """One output map: dtype, nodata and one band name per layer."""

    dtype: str
    nodata: float
    bands: Sequence[str]


def write_geotiff(
    final: Path,
    grid: RasterGrid,
    spec: RasterSpec,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    scratch_dir: Path,
    cache_bytes: int,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Scatter ``(xy, values[n, bands])`` batches onto ``grid`` and save a compressed GeoTIFF.

    Cells never written stay nodata (the scratch file is sparse, so an empty
    global map costs no disk). Each batch is sorted into bands of grid rows and
    written window by window, so memory
    is one window (:data:`RASTER_WINDOW_VALUES`) whatever the grid size or the
    order of the batches.
    """
    scratch_dir.mkdir(parents=True, exist_ok=True)
    scratch = scratch_dir / f"{final.stem}.scratch.tif"
    discard(scratch)
    profile = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": len(spec.bands),
        "dtype": spec.dtype,
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": spec.nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "sparse_ok": True,
    }
    partial = fresh_partial(final)
    try:
        with rasterio.Env(GDAL_CACHEMAX=max(cache_bytes, 1 << 24)):
            with rasterio.open(scratch, "w+", **profile) as dst:
                for xy, values in batches:
                    _scatter(dst, grid, spec, xy, values)
                for band, name in enumerate(spec.bands, start=1):
                    dst.set_band_description(band, name)
                if metadata:
                    dst.update_tags(**metadata)
            rasterio.shutil.copy(
                scratch,
                partial,
                driver="GTiff",
                COMPRESS="DEFLATE",
                TILED="YES",
                BIGTIFF="IF_SAFER",
            )
    except (OSError, rasterio.errors.RasterioError):
        discard(partial)
        raise
    finally:
        discard(scratch)
    commit(partial, final)
    return final


def _scatter(
    dst: Any, grid: RasterGrid, spec: RasterSpec, xy: np.ndarray, values: np.ndarray
) -> None:
    rows, cols = grid.cell_index(xy[:, 0], xy[:, 1])
    inside = rows >= 0
    rows, cols, values = rows[inside], cols[inside], values[inside]
    if not len(rows):
        return
    band_rows = max(1, RASTER_WINDOW_VALUES // (grid.width * len(spec.bands)))
    bands = rows // band_rows
    order = np.argsort(bands, kind="stable")
    rows, cols, values, bands = rows[order], cols[order], values[order], bands[order]
    cuts = np.flatnonzero(np.diff(bands)) + 1
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(rows)], strict=True):
        r, c = rows[lo:hi], cols[lo:hi]
        window = Window(
            int(c.min()), int(r.min()), int(c.max() - c.min() + 1), int(r.max() - r.min() + 1)
        )
        block = dst.read(window=window)
        block[:, r - window.row_off, c - window.col_off] = values[lo:hi].T.astype(spec.dtype)
        dst.write(block, window=window)
