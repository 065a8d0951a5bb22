"""What every export format implements, so one merge pass can feed several at once.

An exporter's life: ``write`` each merged batch, ``close`` (all data durable but
not yet visible under its final name), ``read_back`` sampled cells from that
unpublished output for validation, then ``commit`` (atomic publish) — or
``abort`` at any point, which leaves nothing under the final name.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa

from pipeline.config import ExportFormat
from pipeline.export.atomic import (
    ExportError,
    commit,
    describe_os_error,
    discard,
    hold_partial,
    partial_path,
)
from pipeline.grid import TargetGrid

if TYPE_CHECKING:
    from pipeline.merge import MergedChunk

T = TypeVar("T")


class Exporter(ABC):
    """One output of the export stage (a file or a database table)."""

    format: ExportFormat

    def __init__(self) -> None:
        self.rows = 0

    @property
    @abstractmethod
    def target(self) -> str:
        """Where the output ends up (file path or ``schema.table``), for messages and events."""

    @abstractmethod
    def write(self, batch: pa.RecordBatch) -> None:
        """Append one merged batch."""

    def write_chunk(self, chunk: MergedChunk) -> None:
        """Append one merged part; tables take its batch, grids also need its window."""
        self.write(chunk.batch)

    @abstractmethod
    def close(self) -> None:
        """Finish writing; the output is complete but still unpublished."""

    @abstractmethod
    def read_back(self, keys: np.ndarray, grid: TargetGrid) -> dict[int, dict[str, Any]]:
        """Rows of the unpublished output whose cell key (row × grid width + col) is in ``keys``.

        Keyed by cell key; each row maps column name → Python value (None for null).
        """

    def tolerance(self, expected: float) -> float:
        """Largest difference between a stored float and its exported form (0: exact)."""
        return 0.0

    @abstractmethod
    def commit(self) -> dict[str, object]:
        """Publish atomically; returns details for the OutputEvent (rows, bytes…)."""

    @abstractmethod
    def abort(self) -> None:
        """Drop everything written so far; safe to call more than once."""


class PathExporter(Exporter):
    """An exporter that publishes one path (a file or a directory) from a partial name."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.partial = partial_path(path)

    @property
    def target(self) -> str:
        return str(self.path)

    def _guard(self, action: Callable[[], T]) -> T:
        """Run a write action; an OS error aborts and becomes one ExportError line."""
        try:
            return action()
        except OSError as exc:
            self.abort()
            raise ExportError(describe_os_error(self.path, exc)) from None


class FileExporter(PathExporter):
    """An exporter that streams into one file through an Arrow writer, published atomically.

    The writer targets ``NAME.partial-XXXXXXXX`` next to ``path``; any OS error
    (disk full, permissions) discards it and becomes one :class:`ExportError`
    line; :meth:`commit` fsyncs and renames it over ``path``.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._writer: Any = None
        self._hold: int | None = None
        try:
            self._hold = hold_partial(self.partial)
        except OSError as exc:
            raise ExportError(describe_os_error(path, exc)) from None

    def _release(self) -> None:
        hold, self._hold = self._hold, None
        if hold is not None:
            os.close(hold)

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            self._guard(writer.close)

    def details(self) -> dict[str, object]:
        """Format-specific facts for the OutputEvent."""
        return {}

    def commit(self) -> dict[str, object]:
        self.close()
        size = self.partial.stat().st_size
        try:
            commit(self.partial, self.path)
        finally:
            self._release()
        return {"rows": self.rows, "bytes": size, **self.details()}

    def abort(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            # The file is being discarded: a failing footer or flush does not matter.
            with contextlib.suppress(OSError):
                writer.close()
        discard(self.partial)
        self._release()


def locate(batch: pa.RecordBatch | pa.Table, grid: TargetGrid) -> tuple[np.ndarray, np.ndarray]:
    """Grid row and column of each row of a merged batch.

    From the ``row``/``col`` columns when present, else from the cell-centre
    coordinates: ``x``/``y`` sit half a pixel inside their cell, so rounding the
    inverse transform is exact even after CSV rounding to a few decimals.
    """
    names = batch.schema.names
    if "row" in names and "col" in names:
        return (
            batch.column("row").to_numpy().astype(np.int64),
            batch.column("col").to_numpy().astype(np.int64),
        )
    t = grid.transform
    x = batch.column("x").to_numpy()
    y = batch.column("y").to_numpy()
    cols = np.rint((x - t.c) / t.a - 0.5).astype(np.int64)
    rows = np.rint((y - t.f) / t.e - 0.5).astype(np.int64)
    return rows, cols


def filter_cells(
    batches: Iterable[pa.RecordBatch], keys: np.ndarray, grid: TargetGrid, where: str
) -> dict[int, dict[str, Any]]:
    """Stream ``batches`` and keep the rows whose cell key is in ``keys``.

    A sampled cell found twice is a duplicated cell: an export error, named.
    """
    found: dict[int, dict[str, Any]] = {}
    wanted = np.unique(keys)
    if not len(wanted):
        return found
    for batch in batches:
        rows, cols = locate(batch, grid)
        cell_keys = rows * grid.width + cols
        # Membership by binary search in the few sampled keys: cheaper than np.isin here.
        position = np.minimum(np.searchsorted(wanted, cell_keys), len(wanted) - 1)
        hit = wanted[position] == cell_keys
        if not hit.any():
            continue
        records = pa.Table.from_batches([batch]).filter(pa.array(hit)).to_pylist()
        for key, record in zip(cell_keys[hit].tolist(), records, strict=True):
            if key in found:
                row, col = divmod(key, grid.width)
                raise ExportError(f"{where}: cell row {row} col {col} appears twice")
            found[key] = record
    return found
