"""What the catalog learns about one input raster from its header alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from affine import Affine
from rasterio.crs import CRS


@dataclass(frozen=True)
class SourceInfo:
    """Header facts of one dataset's band, enough to plan its placement and windows."""

    dataset: str
    path: Path
    band: int
    crs: CRS
    transform: Affine
    width: int
    height: int
    dtype: str
    nodata: float | None
    block_shape: tuple[int, int]
    count: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """west, south, east, north of the raster (north-up rasters)."""
        west, north = self.transform @ (0, 0)
        east, south = self.transform @ (self.width, self.height)
        return (min(west, east), min(south, north), max(west, east), max(south, north))
