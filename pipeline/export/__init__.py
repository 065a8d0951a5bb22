"""Export of the merged table: Parquet, CSV and PostgreSQL, atomic and validated."""

from pipeline.export.atomic import ExportError
from pipeline.export.stage import run_merge_export

__all__ = ["ExportError", "run_merge_export"]
