"""Zarr and NetCDF exports and ``open_stack``: the merged stack as a CF grid xarray opens.

Real layer stores and GeoTIFF sources (``tests.test_merge.build_run``), the real
export stage writing real files, opened back by xarray with warnings as errors.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import xarray as xr

import pipeline
from pipeline.config import parse_config
from pipeline.control import StopRequested
from pipeline.export import run_merge_export
from pipeline.export.atomic import PARTIAL_MARKER
from pipeline.grid import TargetGrid
from pipeline.merge import region_window
from pipeline.stack import GRID_MAPPING, geod_version, stack_layout
from tests.test_export import context, export, out_dir
from tests.test_merge import CHUNK, LAYERS, build_run


def open_quietly(path: Path) -> xr.Dataset:
    """Open a Zarr or NetCDF export; any warning fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if path.suffix == ".zarr":
            return xr.open_zarr(path)
        return xr.open_dataset(path)


def assert_equals_table(dataset: xr.Dataset, table_path: Path) -> None:
    """At every row of the Parquet table the grid holds the same values (null ↔ masked)."""
    table = pq.read_table(table_path)
    lon = xr.DataArray(table.column("x").to_numpy(), dims="cell")
    lat = xr.DataArray(table.column("y").to_numpy(), dims="cell")
    picked = dataset.sel(lon=lon, lat=lat)
    for layer in LAYERS:
        column = table.column(layer.name)
        expected = column.to_numpy(zero_copy_only=False).astype("float64")
        expected[~column.is_valid().to_numpy(zero_copy_only=False)] = np.nan
        got = picked[layer.name].values.astype("float64")
        assert np.array_equal(got, expected, equal_nan=True), layer.name


@pytest.mark.parametrize(
    "bounds",
    [None, (-100.3, -41.2, 77.7, 66.6)],
    ids=["whole-grid", "merge-bounds"],
)
def test_zarr_and_netcdf_equal_the_parquet_table_with_cf_metadata(
    tmp_path: Path, bounds: tuple[float, float, float, float] | None
) -> None:
    merge = {"chunk_rows": 48} if bounds is None else {"chunk_rows": 48, "bounds": list(bounds)}
    run = build_run(tmp_path, merge=merge, export={"formats": ["parquet", "zarr", "netcdf"]})
    published = export(run)
    out = out_dir(run)
    assert published == [out / "merged.parquet", out / "merged.zarr", out / "merged.nc"]
    rows = pq.read_metadata(out / "merged.parquet").num_rows
    outputs = {e.path: e.detail for e in run.events if getattr(e, "type", "") == "output"}
    for path in published:
        assert outputs[str(path)]["rows"] == rows
        assert outputs[str(path)]["validated_cells"] > 0
    wkt = run.grid.crs.to_wkt()
    for path in published[1:]:
        dataset = open_quietly(path)
        assert set(dataset.data_vars) == {layer.name for layer in LAYERS}
        assert dataset[LAYERS[0].name].dims == ("lat", "lon")
        assert dataset.lon.attrs["units"] == "degrees_east"
        assert dataset.lat.attrs["standard_name"] == "latitude"
        assert dataset[GRID_MAPPING].attrs["crs_wkt"] == wkt
        assert dataset[GRID_MAPPING].attrs["spatial_ref"] == wkt
        assert dataset.attrs["Conventions"].startswith("CF-")
        assert dataset.attrs["geod_version"] == geod_version()
        for layer in LAYERS:
            variable = dataset[layer.name]
            assert variable.encoding["dtype"] == np.dtype(layer.dtype)
            fill = variable.encoding["_FillValue"]
            if layer.nodata is None:
                assert np.isnan(fill)
            else:
                assert fill == layer.nodata
            assert variable.attrs["grid_mapping"] == GRID_MAPPING
            assert variable.attrs["source"] == str(tmp_path / "src" / f"{layer.name}.tif")
            assert variable.attrs["resampling"] == "average"
            chunks = variable.encoding.get("chunks") or variable.encoding.get("chunksizes")
            assert tuple(chunks) == (CHUNK, CHUNK)
        assert_equals_table(dataset, out / "merged.parquet")
        if bounds is not None:
            west, south, east, north = bounds
            assert float(dataset.lon.min()) > west and float(dataset.lon.max()) < east
            assert float(dataset.lat.min()) > south and float(dataset.lat.max()) < north
    assert not list(out.glob(f"*{PARTIAL_MARKER}*"))


def test_open_stack_is_lazy_and_equals_the_zarr_export(tmp_path: Path) -> None:
    run = build_run(tmp_path, export={"formats": ["parquet", "zarr"]})
    (tmp_path / "config.yml").write_text(
        "name: mergetest\n"
        "datasets:\n"
        + "".join(f"  - {{name: {layer.name}, path: src/{layer.name}.tif}}\n" for layer in LAYERS)
        + "grid: {resolution: 1.0}\n"
        "resampling: {window_size: 256}\n"
        f"memory: {{min_window: {CHUNK}, reduced_window: {2 * CHUNK}, budget: 4GiB}}\n"
        "paths: {work_dir: work, output_dir: out}\n"
    )
    export(run)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stack = pipeline.open_stack(tmp_path / "config.yml")
    # Lazy: nothing loaded until asked (xarray keeps a backend array, not numpy).
    assert not isinstance(stack[LAYERS[0].name].variable._data, np.ndarray)
    exported = open_quietly(out_dir(run) / "merged.zarr")
    assert stack[GRID_MAPPING].attrs["crs_wkt"] == run.grid.crs.to_wkt()
    for layer in LAYERS:
        assert stack[layer.name].dtype == exported[layer.name].dtype
        assert np.array_equal(stack[layer.name].values, exported[layer.name].values, equal_nan=True)
        assert np.array_equal(stack.lon.values, exported.lon.values)
        assert np.array_equal(stack.lat.values, exported.lat.values)
    assert_equals_table(stack, out_dir(run) / "merged.parquet")


def test_projected_grid_uses_x_y_in_metres(tmp_path: Path) -> None:
    config = parse_config(
        {
            "datasets": [{"name": "threat", "path": "threat.tif"}],
            "grid": {"crs": "EPSG:6933", "resolution": 10_000, "bounds": [0, 0, 100_000, 50_000]},
        },
        "test",
        tmp_path,
    )
    grid = TargetGrid.from_config(config.grid)
    layout = stack_layout(grid, config, region_window(grid, None), [("threat", "float32", None)])
    assert layout.dims == ("y", "x")
    attrs = layout.coordinate_attrs()
    assert attrs["x"]["standard_name"] == "projection_x_coordinate"
    assert attrs["y"]["units"] == "m"
    coords = layout.coordinates()
    assert coords["x"][0] == 5_000 and coords["y"][0] == 45_000
    mapping = layout.grid_mapping_attrs()
    assert "grid_mapping_name" not in mapping
    assert mapping["crs_wkt"] == grid.crs.to_wkt()
    assert mapping["GeoTransform"].split() == [
        "0.0",
        "10000.0",
        "0.0",
        "50000.0",
        "0.0",
        "-10000.0",
    ]


def test_rerun_replaces_the_zarr_and_removes_leftovers_and_a_stop_publishes_nothing(
    tmp_path: Path,
) -> None:
    run = build_run(
        tmp_path, merge={"chunk_rows": 16}, export={"formats": ["zarr", "netcdf"]}, layers=LAYERS
    )
    out = out_dir(run)
    out.mkdir(parents=True)
    leftover = out / f"merged.zarr{PARTIAL_MARKER}deadbeef"
    (leftover / "richness").mkdir(parents=True)
    (leftover / "richness" / "0.0").write_bytes(b"torn")
    (out / "merged.zarr").mkdir()
    (out / "merged.zarr" / "stale-file").write_text("from an older run")
    export(run)
    assert not leftover.exists()
    assert not (out / "merged.zarr" / "stale-file").exists()
    assert sorted(p.name for p in out.iterdir()) == ["merged.nc", "merged.zarr"]
    open_quietly(out / "merged.zarr")

    shutil.rmtree(out)
    out.mkdir()
    ctx = context(run)
    ctx.control.request_stop()
    with pytest.raises(StopRequested):
        run_merge_export(ctx, run.store, run.grid, ctx.stage("export"))
    assert list(out.iterdir()) == []
