"""CSV output through Arrow's C++ CSV writer, with floats rounded to a fixed precision.

``export.csv.float_precision`` is a number of decimal places (like ``round``):
float columns — coordinates included — are rounded with ``pyarrow.compute.round``
and then printed in their shortest round-trip form, so 6 gives ``-179.991667``
rather than ``-179.99166666666667``. Both steps are vectorised C++; a Python
row loop would be ten times slower than the Parquet export it accompanies.
Nulls are empty fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pipeline.config import CsvOptions, ExportFormat
from pipeline.export.base import FileExporter, filter_cells
from pipeline.grid import TargetGrid

#: Bytes per block when the file is read back for validation.
READ_BLOCK_BYTES = 16 * 1024 * 1024


def round_floats(batch: pa.RecordBatch, digits: int) -> pa.RecordBatch:
    """``batch`` with every floating-point column rounded to ``digits`` decimals."""
    columns = [
        pc.round(column, ndigits=digits) if pa.types.is_floating(column.type) else column
        for column in batch.columns
    ]
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema)


class CsvExporter(FileExporter):
    """Streams merged batches into a CSV file (partial file renamed on commit)."""

    format = ExportFormat.csv

    def __init__(self, path: Path, schema: pa.Schema, options: CsvOptions) -> None:
        super().__init__(path)
        self.schema = schema
        self.options = options
        self._writer = self._guard(lambda: pacsv.CSVWriter(self.partial, schema))

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        rounded = round_floats(batch, self.options.float_precision)
        self._guard(lambda: self._writer.write_batch(rounded))
        self.rows += batch.num_rows

    def read_back(self, keys: np.ndarray, grid: TargetGrid) -> dict[int, dict[str, Any]]:
        convert = pacsv.ConvertOptions(
            column_types={field.name: field.type for field in self.schema}
        )
        reader = pacsv.open_csv(
            self.partial,
            read_options=pacsv.ReadOptions(block_size=READ_BLOCK_BYTES),
            convert_options=convert,
        )
        return filter_cells(reader, keys, grid, str(self.path))

    def tolerance(self, expected: float) -> float:
        """Largest difference rounding to ``float_precision`` decimals can explain."""
        return 0.5 * 10.0**-self.options.float_precision + abs(expected) * 2.0**-23

    def details(self) -> dict[str, object]:
        return {"float_precision": self.options.float_precision}
