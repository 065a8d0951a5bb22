"""``test``: a fast method that exercises the analysis path end to end.

It streams the table once (batches, progress, pause/stop, memory readings like
every method), writes per-column statistics as JSON and a map of how many
analysed columns are present in each cell, so a smoke test of a run sees a
table read, a report and a GeoTIFF written atomically in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.analysis.io import (
    ColumnStats,
    RasterSpec,
    batch_count,
    iter_table,
    table_rows,
    write_geotiff,
    write_json_atomic,
)
from pipeline.analysis.runtime import MethodRun

#: Completeness-map nodata (uint8): cells not in the table.
COMPLETENESS_NODATA = 255


def run_smoke(run: MethodRun) -> list[Path]:
    batch_rows = run.scaled(run.ctx.config.analysis.read_batch_rows, floor=1_000)
    run.node.set_total(1)
    node = run.phase("scan", total=batch_count(table_rows(run.table), batch_rows))
    stats = ColumnStats.empty(run.columns)

    def batches():
        for batch in iter_table(run.table, run.variables, batch_rows):
            stats.update(batch.values)
            present = np.isfinite(batch.values).sum(axis=1, dtype=np.int64)
            yield batch.xy, present[:, None].astype(np.float64)
            node.advance()
            run.boundary()

    spec = RasterSpec("uint8", COMPLETENESS_NODATA, ["columns_present"])
    map_path = write_geotiff(
        run.output("completeness.tif"),
        run.grid,
        spec,
        batches(),
        run.work_root / run.prefix,
        run.cache_bytes,
    )
    run.phase_done(node)
    summary = write_json_atomic(run.output("summary.json"), stats.as_dict())
    return [
        run.emit_output("report", summary, rows=stats.rows),
        run.emit_output("map", map_path, bands=list(spec.bands)),
    ]
