"""Small global GeoTIFFs for tests and benchmarks that need real files, not content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin


def global_geotiff(path: Path, side: int = 8, value: float = 1.0) -> Path:
    """A ``side`` × ``side`` float32 EPSG:4326 raster covering the globe, every cell ``value``.

    Uncompressed, so its size is known from ``side`` (``side=3620`` is 50 MiB).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": side,
        "height": side,
        "count": 1,
        "dtype": "float32",
        "crs": "EPSG:4326",
        "transform": from_origin(-180, 90, 360 / side, 180 / side),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((1, side, side), value, "float32"))
    return path
