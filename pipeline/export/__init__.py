"""Export of the merged table: Parquet, CSV and PostgreSQL, atomic and validated.

:func:`run_merge_export` is loaded on first use: the report and the analysis
import :mod:`pipeline.export.atomic` for its helpers, and that must not pull in
every exporter's library (pyarrow, h5py, psycopg) with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.export.atomic import ExportError

if TYPE_CHECKING:
    from pipeline.export.stage import run_merge_export

__all__ = ["ExportError", "run_merge_export"]


def __getattr__(name: str) -> Any:
    if name == "run_merge_export":
        from pipeline.export.stage import run_merge_export

        return run_merge_export
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
