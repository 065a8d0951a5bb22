"""What the catalog learns about one input raster from its header alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from affine import Affine
from rasterio.crs import CRS

from pipeline.source_names import gdal_name


@dataclass(frozen=True)
class SourceInfo:
    """Header facts of one dataset's band, enough to plan its placement and windows.

    ``open_name`` is what every stage opens: the path itself, a subdataset, a
    ``/vsicurl/`` URL, or a VRT document adjusting CRS, packing and longitudes
    (:mod:`pipeline.sourcevrt`); ``band`` is a band of it. ``decisions`` are the
    catalog's one-line notes on what it adjusted, logged once per dataset.
    """

    dataset: str
    path: Path | str
    band: int
    crs: CRS
    transform: Affine
    width: int
    height: int
    dtype: str
    nodata: float | None
    block_shape: tuple[int, int]
    count: int
    open_name: str = ""
    decisions: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The GDAL dataset name to open."""
        return self.open_name or gdal_name(self.path)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """west, south, east, north of the raster (north-up rasters)."""
        west, north = self.transform @ (0, 0)
        east, south = self.transform @ (self.width, self.height)
        return (min(west, east), min(south, north), max(west, east), max(south, north))
