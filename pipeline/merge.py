"""Stream the aligned layers of a run into tables, one bounded chunk at a time.

Merge only merges: it turns the layer store into a sequence of Arrow record
batches (``x``, ``y``, optional ``row``/``col``, one column per dataset in
config order) and knows nothing of files; the exporters consume the batches.

Chunk shape. The merged region (the grid, or the ``merge.bounds`` subset) is cut
into *units*: bands of ``merge.chunk_rows`` grid rows, and, when a band would
hold more than ``merge.max_chunk_cells`` cells, column blocks whose width is a
multiple of the store chunk (a global 1-arcmin band of 512 rows is 11 M cells;
with the defaults it becomes three blocks of at most 8192 columns). Units are
numbered band by band, block by block, so the numbering depends only on the
config and the grid: ``start_chunk`` means the same cells in every run. Under
memory pressure a unit is read in thinner row *parts*
(:meth:`MemoryGovernor.chunk_rows` halves with the governor's window); every
part is a :class:`MergedChunk` with the unit's index and ``last`` set on its
final part. Rows within a part are row-major; the table as a whole is ordered
by band, then column block, then row, then column. At most two parts are in
memory: the one the exporters are writing and the next, read ahead on a helper
thread (Zarr decoding and numpy overlap with the writers on a second core).

Nodata. A layer's nodata value, and NaN in float layers, become Arrow *nulls*
(Parquet nulls, empty CSV fields, SQL NULL): one missing-value convention for
every format and dtype, where a NaN would only exist for floats and a sentinel
would leak the raster's encoding into the table.

Coordinates are cell centres from the grid's integer indices and transform
(:meth:`TargetGrid.cell_centers`), never accumulated float steps, so they are
exact and identical whichever chunk a cell falls in.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from rasterio.windows import Window

from pipeline.config import PipelineConfig
from pipeline.context import RunError
from pipeline.coverage import valid_mask
from pipeline.executor import Executor, ordered
from pipeline.executor.local import LocalExecutor
from pipeline.grid import TargetGrid
from pipeline.memory import MemoryGovernor
from pipeline.store import LayerStore, StoreReader

#: Key of the schema's key-value metadata that carries grid and provenance JSON.
SCHEMA_METADATA_KEY = b"geod"
#: Slack, in pixels, when a ``merge.bounds`` edge falls exactly on a cell centre:
#: bounds typed in degrees (1/60 …) are rarely exact binary fractions.
_EDGE_TOLERANCE_PX = 1e-6
#: Governor stage name for memory readings taken between merge parts.
STAGE = "merge"
#: Parts merged ahead of the one being written, locally (a cluster merges as many as
#: it has threads): one keeps a second core busy and at most two parts in memory.
READ_AHEAD = 1


class MergeError(RunError, ValueError):
    """The layers cannot be merged as configured (missing or incomplete layer, empty bounds)."""


@dataclass(frozen=True)
class LayerSpec:
    """One dataset column: its store layer, numpy dtype and nodata value."""

    name: str
    dtype: np.dtype
    nodata: float | None


@dataclass(frozen=True)
class MergePlan:
    """How the merged region is cut into units (see the module docstring)."""

    region: Window
    band_rows: int
    block_cols: int

    @property
    def bands(self) -> int:
        return math.ceil(self.region.height / self.band_rows)

    @property
    def blocks(self) -> int:
        return math.ceil(self.region.width / self.block_cols)

    @property
    def total(self) -> int:
        """Number of units."""
        return self.bands * self.blocks

    @property
    def cells(self) -> int:
        return int(self.region.width * self.region.height)

    def unit(self, index: int) -> Window:
        """Grid window of unit ``index`` (band-major)."""
        if not 0 <= index < self.total:
            raise IndexError(f"merge unit {index} is outside 0..{self.total - 1}")
        band, block = divmod(index, self.blocks)
        row = band * self.band_rows
        col = block * self.block_cols
        return Window(
            int(self.region.col_off) + col,
            int(self.region.row_off) + row,
            min(self.block_cols, int(self.region.width) - col),
            min(self.band_rows, int(self.region.height) - row),
        )


@dataclass(frozen=True)
class MergedChunk:
    """One part of one unit, as a record batch; ``last`` marks the unit's final part."""

    index: int
    part: int
    last: bool
    window: Window
    batch: pa.RecordBatch
    #: Every layer's raw values in ``window`` (config order): grid outputs write these
    #: instead of reading the store a second time.
    layers: tuple[np.ndarray, ...] = ()

    @property
    def rows(self) -> tuple[int, int]:
        """Grid row range ``[start, stop)`` this chunk covers."""
        return int(self.window.row_off), int(self.window.row_off + self.window.height)

    @property
    def cols(self) -> tuple[int, int]:
        """Grid column range ``[start, stop)`` this chunk covers."""
        return int(self.window.col_off), int(self.window.col_off + self.window.width)


def region_window(grid: TargetGrid, bounds: tuple[float, float, float, float] | None) -> Window:
    """The grid cells whose centres lie inside ``bounds`` (west, south, east, north)."""
    if bounds is None:
        return Window(0, 0, grid.width, grid.height)
    west, south, east, north = bounds
    t = grid.transform
    col_lo, col_hi = sorted(((west - t.c) / t.a - 0.5, (east - t.c) / t.a - 0.5))
    row_lo, row_hi = sorted(((north - t.f) / t.e - 0.5, (south - t.f) / t.e - 0.5))
    col0 = max(0, math.ceil(col_lo - _EDGE_TOLERANCE_PX))
    col1 = min(grid.width, math.floor(col_hi + _EDGE_TOLERANCE_PX) + 1)
    row0 = max(0, math.ceil(row_lo - _EDGE_TOLERANCE_PX))
    row1 = min(grid.height, math.floor(row_hi + _EDGE_TOLERANCE_PX) + 1)
    if col1 <= col0 or row1 <= row0:
        raise MergeError(f"merge.bounds: {list(bounds)} contains no cell centre of the grid")
    return Window(col0, row0, col1 - col0, row1 - row0)


def plan_merge(grid: TargetGrid, config: PipelineConfig, store_chunk: int) -> MergePlan:
    """Cut the merged region into units of at most ``merge.max_chunk_cells`` cells."""
    region = region_window(grid, config.merge.bounds)
    max_cells = config.merge.max_chunk_cells
    band_rows = min(config.merge.chunk_rows, int(region.height))
    fitting = max_cells // band_rows // store_chunk * store_chunk
    block_cols = min(int(region.width), max(store_chunk, fitting))
    band_rows = max(1, min(band_rows, max_cells // block_cols))
    return MergePlan(region, band_rows, block_cols)


def layer_specs(store: LayerStore, config: PipelineConfig) -> list[LayerSpec]:
    """The dataset columns in config order; every dataset must have a layer in the store."""
    present = set(store.layer_names())
    specs = []
    for dataset in config.datasets:
        if dataset.name not in present:
            raise MergeError(
                f"merge: dataset {dataset.name!r} has no layer in the store "
                "(run the resample stage first)"
            )
        dtype, nodata = store.layer_info(dataset.name)
        specs.append(LayerSpec(dataset.name, np.dtype(dtype), nodata))
    return specs


def schema_metadata(
    grid: TargetGrid, config: PipelineConfig, specs: list[LayerSpec], plan: MergePlan
) -> dict[str, object]:
    """Grid, region and per-dataset provenance, stored as JSON in the table schema."""
    region = plan.region
    return {
        "grid": {
            "crs": grid.crs.to_string(),
            "transform": list(grid.transform)[:6],
            "width": grid.width,
            "height": grid.height,
        },
        "region": {
            "row_off": int(region.row_off),
            "col_off": int(region.col_off),
            "height": int(region.height),
            "width": int(region.width),
        },
        "coordinates": "cell centres",
        "nodata": "null",
        "datasets": [
            {
                "name": spec.name,
                "path": str(config.dataset(spec.name).path),
                "band": config.dataset(spec.name).band,
                "resampling": config.dataset(spec.name).resampling.value,
                "dtype": spec.dtype.name,
                "nodata": None if spec.nodata is None or math.isnan(spec.nodata) else spec.nodata,
            }
            for spec in specs
        ],
    }


def read_schema_metadata(schema: pa.Schema) -> dict[str, object]:
    """The :func:`schema_metadata` JSON of a merged table's schema."""
    raw = (schema.metadata or {}).get(SCHEMA_METADATA_KEY)
    if raw is None:
        raise MergeError("table schema has no geod metadata")
    return json.loads(raw)


@dataclass(frozen=True)
class WindowMerger:
    """Turns one grid window of the store into merged rows; picklable for a Dask worker."""

    reader: StoreReader
    grid: TargetGrid
    specs: tuple[LayerSpec, ...]
    required: tuple[int, ...]
    skip_all_nodata: bool
    include_row_col: bool
    schema: pa.Schema

    def merge(self, window: Window) -> tuple[pa.RecordBatch, tuple[np.ndarray, ...]]:
        """The merged rows of ``window`` (after the skip/require rules), and its layers."""
        height, width = int(window.height), int(window.width)
        layers = tuple(self.reader.read_window(spec.name, window) for spec in self.specs)
        valids = [
            valid_mask(data, spec.nodata) for data, spec in zip(layers, self.specs, strict=True)
        ]
        keep = np.logical_or.reduce(valids) if self.skip_all_nodata else None
        for index in self.required:
            keep = valids[index] if keep is None else keep & valids[index]
        if keep is not None and keep.all():
            keep = None

        def pick(values: np.ndarray) -> np.ndarray:
            """Row-major values of the kept cells (boolean indexing: no index arrays)."""
            return values.ravel() if keep is None else values[keep]

        xs, ys = self.grid.cell_centers(window)
        columns: list[pa.Array] = [
            pa.array(pick(np.broadcast_to(xs, (height, width)))),
            pa.array(pick(np.broadcast_to(ys[:, None], (height, width)))),
        ]
        if self.include_row_col:
            rows = np.arange(int(window.row_off), int(window.row_off) + height, dtype=np.int32)
            cols = np.arange(int(window.col_off), int(window.col_off) + width, dtype=np.int32)
            columns += [
                pa.array(pick(np.broadcast_to(rows[:, None], (height, width)))),
                pa.array(pick(np.broadcast_to(cols, (height, width)))),
            ]
        for data, valid in zip(layers, valids, strict=True):
            invalid = ~pick(valid)
            columns.append(pa.array(pick(data), mask=invalid if invalid.any() else None))
        return pa.RecordBatch.from_arrays(columns, schema=self.schema), layers


def merge_window(
    merger: WindowMerger, part: tuple[int, int, bool, Window]
) -> tuple[pa.RecordBatch, tuple[np.ndarray, ...]]:
    """One merge part, as a task: ``(unit, part, last, window)`` → rows and layers."""
    return merger.merge(part[3])


class MergeStream:
    """The merge of one run: its columns, schema and unit plan, and the chunk iterator."""

    def __init__(self, store: LayerStore, grid: TargetGrid, config: PipelineConfig) -> None:
        self.store = store
        self.grid = grid
        self.config = config
        self.specs = layer_specs(store, config)
        self.plan = plan_merge(grid, config, store.chunk)
        self._required = [
            i for i, spec in enumerate(self.specs) if spec.name in set(config.merge.require)
        ]
        fields = [
            pa.field("x", pa.float64(), nullable=False),
            pa.field("y", pa.float64(), nullable=False),
        ]
        if config.merge.include_row_col:
            fields += [
                pa.field("row", pa.int32(), nullable=False),
                pa.field("col", pa.int32(), nullable=False),
            ]
        fields += [pa.field(spec.name, pa.from_numpy_dtype(spec.dtype)) for spec in self.specs]
        metadata = schema_metadata(grid, config, self.specs, self.plan)
        self.schema = pa.schema(fields, metadata={SCHEMA_METADATA_KEY: json.dumps(metadata)})
        self.merger = WindowMerger(
            StoreReader(store.root),
            grid,
            tuple(self.specs),
            tuple(self._required),
            config.merge.skip_all_nodata,
            config.merge.include_row_col,
            self.schema,
        )

    def _check_complete(self, window: Window) -> None:
        for spec in self.specs:
            if not self.store.is_complete(spec.name, window):
                raise MergeError(
                    f"merge: layer {spec.name!r} is incomplete in rows "
                    f"{int(window.row_off)}..{int(window.row_off + window.height)}, cols "
                    f"{int(window.col_off)}..{int(window.col_off + window.width)} "
                    "(resume the resample stage first)"
                )

    def merge_window(self, window: Window) -> tuple[pa.RecordBatch, tuple[np.ndarray, ...]]:
        """The merged rows of one grid window (after the skip/require rules), and its layers."""
        return self.merger.merge(window)

    def _parts(
        self, governor: MemoryGovernor, start_chunk: int
    ) -> Iterator[tuple[int, int, bool, Window]]:
        """(unit, part, last, window) in order; part height follows the governor."""
        for index in range(start_chunk, self.plan.total):
            unit = self.plan.unit(index)
            self._check_complete(unit)
            done = 0
            part = 0
            while done < unit.height:
                rows = min(governor.chunk_rows(self.plan.band_rows), int(unit.height) - done)
                window = Window(unit.col_off, unit.row_off + done, unit.width, rows)
                done += rows
                yield index, part, done >= unit.height, window
                part += 1

    def chunks(
        self,
        governor: MemoryGovernor,
        start_chunk: int = 0,
        executor: Executor | None = None,
    ) -> Iterator[MergedChunk]:
        """Merged chunks of units ``start_chunk..``; parts thin out under memory pressure.

        Parts are merged by ``executor`` (default: local) ahead of the consumer:
        locally the next part on a helper thread while the consumer writes the
        current one (Zarr decoding, numpy and the Arrow writers all release the
        GIL), so at most two parts are in memory at once; on a Dask cluster as
        many parts as it has threads, each read from the shared store by a worker.
        """
        parts = self._parts(governor, start_chunk)
        merged = ordered(executor or LocalExecutor(), merge_window, self.merger, parts, READ_AHEAD)
        with contextlib.closing(merged):
            for part, (batch, layers) in merged:
                yield MergedChunk(*part, batch, layers)
                governor.after_window(STAGE)


def iter_merged(
    store: LayerStore,
    grid: TargetGrid,
    config: PipelineConfig,
    governor: MemoryGovernor,
    start_chunk: int = 0,
) -> Iterator[MergedChunk]:
    """Merged chunks of the run's layers from unit ``start_chunk`` on (see module docstring)."""
    return MergeStream(store, grid, config).chunks(governor, start_chunk)
