"""The report's figures, drawn with matplotlib and returned as PNG bytes.

Figures are made with :class:`matplotlib.figure.Figure` directly, not pyplot:
no global figure registry, no GUI backend (PNG output is rendered by Agg).

Quick-look maps never read a layer whole: a layer of the store is read with a
stride (``[::step, ::step]``, chunk by chunk, so memory holds the small result
and one decoded chunk) and an analysis GeoTIFF through GDAL's decimated read
(``out_shape``: overviews when the file has them). Drawing costs far more than
reading: matplotlib holds float64 copies, a mask and RGBA per cell drawn, so
the stride comes from what is left of ``memory.budget`` (:func:`quicklook_cells`)
and each figure is released before the next is drawn.
"""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import zarr

from pipeline.coverage import valid_mask
from pipeline.memory import release_freed_memory
from pipeline.report.model import DASK_ORIGIN, Bar, Mark, ReportData

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Longest side of a quick-look map, in cells read (a 1-arcmin global layer is read
#: with a stride of 30: 720 × 360 values, about 1 MiB as float32).
QUICKLOOK_CELLS = 720
#: RSS drawing a quick-look costs per cell read: matplotlib's image pipeline held
#: 76 bytes per cell at its peak (tracemalloc, 720 × 720 float32 map); RSS rose by
#: 120–190 per cell on real layers with nodata; doubled for glibc's fragmentation.
QUICKLOOK_BYTES_PER_CELL = 256
#: RSS a quick-look costs whatever its size (figure, colour bar, PNG encoder, the
#: first figure's fonts): 2–12 MiB measured, rounded up.
QUICKLOOK_BYTES = 16 * 1024**2
#: Fewer cells across than this make no useful map: the map is left out instead.
QUICKLOOK_MIN_CELLS = 64
#: RSS matplotlib's import adds (37 MiB measured), rounded up: imported on the first
#: figure, so a report the budget leaves no room for draws none and loads none of it.
DRAWING_STACK_BYTES = 40 * 1024**2
#: RSS a chart (timeline, memory) may add while drawn (6 MiB measured), rounded up.
CHART_BYTES = 16 * 1024**2
#: Figure resolution: sharp on a laptop screen, ~100 kB per map.
DPI = 100
#: Timeline bar colours by final status.
STATUS_COLOURS = {
    "done": "#4c9a5b",
    "running": "#3b7dd8",
    "paused": "#e0a020",
    "failed": "#d0453a",
    "skipped": "#9a9a9a",
    "interrupted": "#7a3b8f",
}
MARK_COLOURS = {
    "paused": "#e0a020",
    "resumed": "#4c9a5b",
    "stopped": "#d0453a",
    "failed": "#d0453a",
}
GIB = 1024**3


def loaded() -> bool:
    """Has the drawing stack been imported (its memory already counts in RSS)?"""
    return "matplotlib.figure" in sys.modules


def _figure(width: float, height: float) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots()


def to_png(figure: Figure) -> bytes:
    """The figure as PNG bytes; its artists and their arrays are released before returning.

    A Figure and its axes refer to each other, so without the clear and a
    collection each drawn map (values, mask, RGBA) would stay until Python's
    cyclic collector happened to run: maps would pile up instead of one at a time.
    The freed pages go back to the OS, so the room left for the next map is read
    from an RSS that does not still count this one.
    """
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    figure.clear()
    release_freed_memory()  # the next figure is sized from RSS: make it honest
    return buffer.getvalue()


def quicklook_cells(headroom: int) -> int:
    """Longest side a quick-look may be read at with ``headroom`` bytes left; 0: none fits."""
    cells = max(0, headroom - QUICKLOOK_BYTES) // QUICKLOOK_BYTES_PER_CELL
    side = min(QUICKLOOK_CELLS, math.isqrt(cells))
    return side if side >= QUICKLOOK_MIN_CELLS else 0


def timeline(bars: list[Bar], marks: list[Mark], start: float) -> bytes:
    """Gantt chart: one row per stage/dataset node, lifecycle marks as vertical lines."""
    from matplotlib.patches import Rectangle

    labels = list(dict.fromkeys(bar.label for bar in bars))
    figure, axes = _figure(10, 0.45 * max(len(labels), 2) + 1.2)
    for bar in bars:
        row = labels.index(bar.label)
        width = max(bar.end - bar.start, 0.05)
        axes.barh(
            row,
            width,
            left=bar.start - start,
            color=STATUS_COLOURS.get(bar.status, "#777"),
            height=0.6 if bar.kind == "stage" else 0.4,
            edgecolor="black",
            linewidth=0.3,
        )
    for mark in marks:
        if mark.what == "start":
            continue
        colour = MARK_COLOURS.get(mark.what, "#3b7dd8")
        axes.axvline(mark.time - start, color=colour, linestyle="--", linewidth=1)
        axes.annotate(
            mark.what,
            (mark.time - start, len(labels) - 0.4),
            color=colour,
            fontsize=8,
            rotation=90,
            va="top",
            ha="right",
        )
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("seconds since the first event")
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in STATUS_COLOURS.values()]
    axes.legend(handles, STATUS_COLOURS.keys(), fontsize=7, loc="lower right", ncols=6)
    axes.grid(axis="x", alpha=0.3)
    return to_png(figure)


def memory_chart(data: ReportData) -> bytes:
    """RSS over time against budget, warning and critical, with the governor's window size."""
    figure, axes = _figure(10, 3.6)
    for origin, style in (("worker", "-"), ("daemon sample", ":")):
        points = [p for p in data.memory if p.origin == origin]
        if points:
            axes.plot(
                [p.time - data.start for p in points],
                [p.rss / GIB for p in points],
                style,
                color="#3b7dd8",
                label=f"RSS ({origin})",
            )
    for origin in sorted({p.origin for p in data.memory if p.origin.startswith(DASK_ORIGIN)}):
        points = [p for p in data.memory if p.origin == origin]
        axes.plot(
            [p.time - data.start for p in points],
            [p.rss / GIB for p in points],
            "-.",
            linewidth=1,
            label=f"RSS ({origin})",
        )
    if data.budget:
        axes.axhline(data.budget / GIB, color="black", linewidth=1, label="budget")
        for level, colour, name in (
            (data.warning, "#e0a020", "warning"),
            (data.critical, "#d0453a", "critical"),
        ):
            if level:
                axes.axhline(level * data.budget / GIB, color=colour, linestyle="--", label=name)
    for change in data.governor:
        axes.axvline(change.time - data.start, color="#8a5cc2", linestyle=":", linewidth=1)
    axes.set_ylabel("GiB")
    axes.set_xlabel("seconds since the first event")
    axes.set_ylim(bottom=0)
    window_points = [p for p in data.memory if p.window_size is not None]
    if window_points:
        twin = axes.twinx()
        twin.step(
            [p.time - data.start for p in window_points],
            [p.window_size for p in window_points],
            where="post",
            color="#8a5cc2",
            linewidth=1,
            label="window size",
        )
        twin.set_ylabel("window size (px)")
        twin.set_ylim(bottom=0)
        twin.legend(fontsize=7, loc="upper right")
    axes.legend(fontsize=7, loc="upper left")
    axes.grid(alpha=0.3)
    return to_png(figure)


def decimated_store_layer(
    root: Path, name: str, nodata: float | None, cells: int = QUICKLOOK_CELLS
) -> tuple[np.ndarray, int]:
    """A layer of the store read with a stride, ``cells`` across at most; masked, and the stride."""
    array = zarr.open_array(store=str(root / name), mode="r")
    height, width = array.shape
    step = max(1, math.ceil(max(height, width) / cells))
    values = np.asarray(array[::step, ::step])
    return np.ma.masked_array(values, ~valid_mask(values, nodata)), step


def decimated_geotiff(
    path: Path, cells: int = QUICKLOOK_CELLS
) -> tuple[np.ma.MaskedArray, tuple[float, float, float, float]]:
    """Band 1 of a GeoTIFF at quick-look size (``cells`` across at most), masked, and its extent."""
    with rasterio.open(path) as src:
        step = max(1, math.ceil(max(src.height, src.width) / cells))
        shape = (max(1, src.height // step), max(1, src.width // step))
        values = src.read(1, out_shape=shape, masked=True)
        west, south, east, north = src.bounds
    return values, (west, east, south, north)


def quicklook(
    values: np.ma.MaskedArray,
    extent: tuple[float, float, float, float],
    title: str,
    crs_label: str,
) -> bytes:
    """One map: the values over the grid's extent, with a colour bar."""
    figure, axes = _figure(6.4, 3.6)
    image = axes.imshow(values, extent=extent, interpolation="nearest", cmap="viridis")
    figure.colorbar(image, ax=axes, shrink=0.85)
    axes.set_title(title, fontsize=10)
    axes.set_xlabel(crs_label, fontsize=8)
    axes.tick_params(labelsize=7)
    if values.count() == 0:
        axes.text(0.5, 0.5, "no valid cells", transform=axes.transAxes, ha="center")
    return to_png(figure)
