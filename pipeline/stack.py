"""The merged stack as a CF-conventions grid: one variable per layer on the run's grid.

The merged *table* (Parquet, CSV, PostgreSQL) is what databases and dataframes
want; analysis code in the xarray world wants the same data as a grid. This
module says what that grid looks like, once, for the Zarr and NetCDF exports
(:mod:`pipeline.export.xarray_stack`) and for :func:`open_stack`, which opens a
run's layer store lazily as the same :class:`xarray.Dataset`:

- dimensions ``lat``/``lon`` for a geographic grid, ``y``/``x`` otherwise,
  with cell-centre coordinates over the merged region (``merge.bounds``);
- one data variable per dataset in config order, with the store's dtype and
  nodata (``_FillValue``; NaN for float layers);
- a scalar ``spatial_ref`` variable carrying the CRS as ``crs_wkt`` and
  ``spatial_ref`` (what GDAL, rioxarray and CF 1.7+ readers look for) and the
  region's ``GeoTransform``, referenced by every layer's ``grid_mapping``;
- provenance: each layer's source path, band and resampling method, the geod
  version and the CF ``Conventions`` in the global attributes.

``open_stack`` adds nothing to disk: it opens the store's arrays where they are.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from pipeline.config import ConfigError, PipelineConfig, load_config
from pipeline.grid import TargetGrid

#: CF conventions version the attributes follow (crs_wkt needs ≥ 1.7).
CONVENTIONS = "CF-1.8"
#: Name of the scalar variable that holds the CRS (rioxarray's and GDAL's default).
GRID_MAPPING = "spatial_ref"
#: In a daemon run directory: the frozen config and the worker's work directory.
RUN_DIR_CONFIG = "config.yml"
RUN_DIR_WORK = "work"


def geod_version() -> str:
    """The installed geod version, for provenance attributes."""
    try:
        return version("geod")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class LayerMeta:
    """One data variable: name, dtype, nodata (None: every value is valid) and attributes."""

    name: str
    dtype: np.dtype
    nodata: float | None
    attrs: dict[str, Any]

    @property
    def fill_value(self) -> float | int | None:
        """The ``_FillValue``: NaN for floats, the nodata value (in the dtype) otherwise."""
        if self.dtype.kind == "f":
            return float("nan") if self.nodata is None else float(self.nodata)
        return None if self.nodata is None else int(self.nodata)


@dataclass(frozen=True)
class StackLayout:
    """Dimensions, coordinates and attributes of the merged stack over ``region``."""

    grid: TargetGrid
    region: Window
    dims: tuple[str, str]
    layers: list[LayerMeta]
    global_attrs: dict[str, Any]

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.region.height), int(self.region.width)

    def coordinates(self) -> dict[str, np.ndarray]:
        """Cell centres of the region: ``{y_dim: ys, x_dim: xs}`` (exact, from indices)."""
        xs, ys = self.grid.cell_centers(self.region)
        return {self.dims[0]: ys, self.dims[1]: xs}

    def coordinate_attrs(self) -> dict[str, dict[str, Any]]:
        """CF attributes of the two coordinate variables."""
        y_dim, x_dim = self.dims
        if self.grid.crs.is_geographic:
            return {
                y_dim: {
                    "standard_name": "latitude",
                    "long_name": "latitude of cell centre",
                    "units": "degrees_north",
                    "axis": "Y",
                },
                x_dim: {
                    "standard_name": "longitude",
                    "long_name": "longitude of cell centre",
                    "units": "degrees_east",
                    "axis": "X",
                },
            }
        units = self.grid.crs.linear_units or "unknown"
        units = "m" if units in ("metre", "meter") else units
        return {
            y_dim: {
                "standard_name": "projection_y_coordinate",
                "long_name": "y of cell centre",
                "units": units,
                "axis": "Y",
            },
            x_dim: {
                "standard_name": "projection_x_coordinate",
                "long_name": "x of cell centre",
                "units": units,
                "axis": "X",
            },
        }

    def grid_mapping_attrs(self) -> dict[str, Any]:
        """The CRS variable's attributes (WKT twice: CF's name and GDAL's)."""
        wkt = self.grid.crs.to_wkt()
        t = self.grid.window_transform(self.region)
        attrs: dict[str, Any] = {
            "crs_wkt": wkt,
            "spatial_ref": wkt,
            "GeoTransform": " ".join(repr(float(v)) for v in (t.c, t.a, t.b, t.f, t.d, t.e)),
        }
        if self.grid.crs.is_geographic:
            attrs["grid_mapping_name"] = "latitude_longitude"
        return attrs


def stack_layout(
    grid: TargetGrid,
    config: PipelineConfig,
    region: Window,
    layers: list[tuple[str, np.dtype, float | None]],
) -> StackLayout:
    """The layout of a run's stack; ``layers`` are (name, dtype, nodata) in config order."""
    dims = ("lat", "lon") if grid.crs.is_geographic else ("y", "x")
    metas = []
    for name, dtype, nodata in layers:
        dataset = config.dataset(name)
        clean_nodata = None if nodata is None or math.isnan(nodata) else nodata
        metas.append(
            LayerMeta(
                name,
                np.dtype(dtype),
                clean_nodata,
                {
                    "long_name": name,
                    "source": str(dataset.path),
                    "source_band": dataset.band or 1,
                    "resampling": dataset.resampling.value,
                    "grid_mapping": GRID_MAPPING,
                    "coordinates": GRID_MAPPING,
                },
            )
        )
    global_attrs = {
        "Conventions": CONVENTIONS,
        "title": f"geod merged stack of run {config.name}",
        "source": f"geod {geod_version()}",
        "geod_version": geod_version(),
        "geod_run": config.name,
        "geod_datasets": [meta.name for meta in metas],
    }
    return StackLayout(grid, region, dims, metas, global_attrs)


def _locate_run(path: Path, work_dir: Path | None) -> tuple[PipelineConfig, Path]:
    """Config and work directory from a config file or a daemon run directory."""
    path = Path(path)
    if path.is_dir():
        config = load_config(path / RUN_DIR_CONFIG)
        return config, work_dir or path / RUN_DIR_WORK
    config = load_config(path)
    return config, work_dir or config.paths.work_dir


def open_stack(path: Path | str, work_dir: Path | str | None = None) -> Any:
    """A run's merged stack as an ``xarray.Dataset``, lazily backed by its layer store.

    ``path`` is the run's ``config.yml`` (a ``geod run``: the store is under its
    ``paths.work_dir``) or a daemon run directory (``config.yml`` + ``work/``).
    Nothing is read until values are used; nodata is masked (NaN) on access, and
    the variables carry the same CF attributes as the Zarr/NetCDF exports.
    """
    import xarray as xr

    from pipeline.merge import MergeStream
    from pipeline.runner import STORE_NAME
    from pipeline.store import LayerStore

    config, work = _locate_run(Path(path), Path(work_dir) if work_dir else None)
    root = Path(work) / STORE_NAME
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no layer store (has the run resampled anything yet?)")
    grid = TargetGrid.from_config(config.grid)
    store = LayerStore(root, grid, config.memory.min_window)
    stream = MergeStream(store, grid, config)
    layout = stack_layout(
        grid, config, stream.plan.region, [(s.name, s.dtype, s.nodata) for s in stream.specs]
    )
    raw = xr.open_zarr(root, consolidated=False, mask_and_scale=False, decode_cf=False)
    region = layout.region
    y_dim, x_dim = layout.dims
    names = [meta.name for meta in layout.layers]
    dataset = (
        raw[names]
        .isel(
            y=slice(int(region.row_off), int(region.row_off + region.height)),
            x=slice(int(region.col_off), int(region.col_off + region.width)),
        )
        .drop_vars(["y", "x"])
        .rename_dims({"y": y_dim, "x": x_dim})
    )
    for meta in layout.layers:
        attrs = dict(meta.attrs)
        if meta.fill_value is not None:
            attrs["_FillValue"] = meta.fill_value
        dataset[meta.name].attrs = attrs
    coords = {
        name: xr.Variable((name,), values, layout.coordinate_attrs()[name])
        for name, values in layout.coordinates().items()
    }
    coords[GRID_MAPPING] = xr.Variable((), np.int32(0), layout.grid_mapping_attrs())
    dataset = dataset.assign_coords(coords)
    dataset.attrs = layout.global_attrs
    return xr.decode_cf(dataset)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.stack CONFIG [--work-dir DIR]``: print the stack (``geod open``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.stack", description=main.__doc__)
    parser.add_argument("config", type=Path)
    parser.add_argument("--work-dir", type=Path)
    args = parser.parse_args(argv)
    try:
        dataset = open_stack(args.config, args.work_dir)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"geod: {exc}", file=sys.stderr)
        return 2
    print(dataset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
