"""Inputs as users have them: NetCDF variables and time steps, no CRS, packed int16, 0…360°.

The fixture is a real NetCDF file written by xarray (scipy engine, NetCDF-3):
two variables on a 0…360° 1° grid with a CF time axis, no CRS, values packed
as int16 with ``scale_factor``/``add_offset``/``_FillValue``. xarray's own
decoding of that file is the reference for the unpacked values and dates.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
import xarray as xr
import yaml

from pipeline.catalog import CatalogError, inspect
from pipeline.config import CatalogConfig, ConfigError, DatasetConfig, GridConfig, parse_config
from pipeline.grid import TargetGrid
from pipeline.resample import output_nodata, source_nodata, warp_plan
from tests.bad_inputs import error_line, geod
from tests.test_resample import WARP_MEMORY, gdalwarp_reference, warp_in_windows
from tests.test_resample_edges import assert_every_cell, whole_reproject

CATALOG = CatalogConfig(timeout=30.0)
STEP = 1.0
TIMES = pd.date_range("2000-01-01", periods=3, freq="MS")
PACKING = {
    "tas": {"dtype": "int16", "scale_factor": 0.01, "add_offset": 280.0, "_FillValue": -32768},
    "pr": {"dtype": "int16", "scale_factor": 0.0001, "add_offset": 0.0, "_FillValue": -32768},
}
#: A 2° global grid: every target cell averages 2 × 2 source cells.
GRID_2DEG = TargetGrid.from_config(GridConfig(resolution=2.0))


def write_netcdf(path: Path, times: pd.DatetimeIndex, seed: int = 0) -> Path:
    """0…360° × 90…−90° at 1°, cell centres, tas/pr packed int16, Antarctica-like fill."""
    lon = np.arange(STEP / 2, 360, STEP)
    lat = np.arange(90 - STEP / 2, -90, -STEP)
    rng = np.random.default_rng(seed)
    shape = (times.size, lat.size, lon.size)
    # A smooth field with a sharp east/west contrast, so a lost or shifted
    # hemisphere cannot go unnoticed.
    east = np.where(lon < 180, 10.0, -10.0)[np.newaxis, np.newaxis, :]
    tas = 280 + east + rng.normal(0, 3, shape)
    tas[:, -10:, :] = np.nan  # the southernmost rows are _FillValue
    pr = rng.random(shape)
    data = xr.Dataset(
        {"tas": (("time", "lat", "lon"), tas), "pr": (("time", "lat", "lon"), pr)},
        coords={"time": times, "lat": lat, "lon": lon},
    )
    data.lon.attrs.update(units="degrees_east", standard_name="longitude")
    data.lat.attrs.update(units="degrees_north", standard_name="latitude")
    encoding = {**PACKING, "time": {"units": "days since 1850-01-01", "calendar": "standard"}}
    data.to_netcdf(path, engine="scipy", encoding=encoding)
    return path


@pytest.fixture(scope="module")
def climate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_netcdf(tmp_path_factory.mktemp("nc") / "climate.nc", TIMES)


def dataset(path: Path | str, **keys: object) -> DatasetConfig:
    return DatasetConfig(name="tas", path=path, **keys)


def catalog_error(entry: DatasetConfig) -> str:
    with pytest.raises(CatalogError) as caught:
        inspect(entry, CATALOG, wrap_longitudes=True)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- choices


def test_a_multi_variable_file_without_variable_lists_the_variables(climate: Path) -> None:
    assert "has 2 variables: choose one with `variable:` (tas, pr)" in catalog_error(
        dataset(climate)
    )


def test_an_unknown_variable_lists_the_variables(climate: Path) -> None:
    assert "variable 'tsa' is not in the file (variables: tas, pr)" in catalog_error(
        dataset(climate, variable="tsa", crs="EPSG:4326")
    )


def test_no_crs_is_an_error_that_names_the_crs_key(climate: Path) -> None:
    message = catalog_error(dataset(climate, variable="tas", time="2000-01-01"))
    assert "has no CRS: assign one with `crs:`" in message
    assert "gdal_edit" not in message


def test_a_bad_crs_string_is_one_line(climate: Path) -> None:
    message = catalog_error(dataset(climate, variable="tas", time="2000-01-01", crs="EPSG:0"))
    assert "crs 'EPSG:0' is not a CRS GDAL accepts" in message


def test_several_time_steps_need_a_choice(climate: Path) -> None:
    message = catalog_error(dataset(climate, variable="tas", crs="EPSG:4326"))
    assert "has 3 time steps (2000-01-01 … 2000-03-01): choose one with `time:`" in message


def test_an_unknown_time_lists_first_and_last_labels(climate: Path) -> None:
    message = catalog_error(dataset(climate, variable="tas", crs="EPSG:4326", time="1999-12-01"))
    assert "time '1999-12-01' is not in the file (3 time steps: 2000-01-01 … 2000-03-01)" in (
        message
    )


def test_band_and_time_together_are_a_config_error(climate: Path) -> None:
    with pytest.raises(ConfigError, match="either `band:` or `time:`"):
        parse_config({"datasets": [{"name": "t", "path": str(climate), "band": 1,
                                    "time": "2000-01-01"}]})  # fmt: skip


def test_gdal_subdataset_syntax_in_path_keeps_working(climate: Path) -> None:
    config = parse_config(
        {"datasets": [{"name": "t", "path": f'NETCDF:"{climate.name}":pr', "band": 2,
                       "crs": "EPSG:4326"}]},
        base=climate.parent,
    )  # fmt: skip
    source = inspect(config.datasets[0], CATALOG, wrap_longitudes=True)
    assert source.dtype == "float32" and source.width == 360


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("variable", ["tas", "pr"])
def test_time_step_is_chosen_by_label_and_values_are_unpacked(climate: Path, variable: str) -> None:
    """The catalog's source equals xarray's decoding, wrapped to −180…180°."""
    source = inspect(dataset(climate, variable=variable, crs="EPSG:4326", time="2000-02-01"),
                     CATALOG, wrap_longitudes=True)  # fmt: skip
    assert source.dtype == "float32" and math.isnan(source.nodata)
    assert source.transform.c == -180.0 and source.bounds == (-180.0, -90.0, 180.0, 90.0)
    assert any("wrapping longitudes 0…360 → −180…180" in d for d in source.decisions)
    assert any("time 2000-02-01 (band 2)" in d for d in source.decisions)
    with rasterio.open(source.name) as src:
        ours = src.read(source.band)
    with xr.open_dataset(climate, engine="scipy") as data:
        step = data[variable].sel(time="2000-02-01").values
    expected = np.roll(step, -180, axis=1)  # 180…360° first, then 0…180°
    assert np.array_equal(np.isnan(ours), np.isnan(expected))
    valid = ~np.isnan(expected)
    assert np.abs(ours[valid] - expected[valid]).max() <= 1e-6 * np.ptp(expected[valid])
    assert np.isnan(ours).sum() == (10 * 360 if variable == "tas" else 0)


def _unpacked_tif(gdal_translate: Path, climate: Path, out: Path) -> Path:
    """Time step 2 of tas unpacked to Float32 with EPSG:4326, by gdal_translate (GDAL 3.6)."""
    name = f'NETCDF:"{climate}":tas'
    subprocess.run(
        [str(gdal_translate), "-q", "-b", "2", "-unscale", "-ot", "Float32",
         "-a_nodata", "nan", "-a_srs", "EPSG:4326", name, str(out)],
        check=True,
    )  # fmt: skip
    with rasterio.open(out) as src:  # -unscale also scales the fill value: put NaN back
        data = src.read(1)
        profile = src.profile
    with rasterio.open(name) as raw:
        data[raw.read(2) == PACKING["tas"]["_FillValue"]] = np.nan
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data, 1)
    return out


def _shifted_halves_reference(
    gdalwarp: str, climate: Path, tmp_path: Path, method: str, grid: TargetGrid
) -> np.ndarray:
    """What a user would do by hand: unpack, cut at 180°, shift the east half by −360°,
    mosaic the two halves in a VRT, gdalwarp that (GDAL 3.6 binaries throughout)."""
    translate = Path(gdalwarp).with_name("gdal_translate")
    buildvrt = Path(gdalwarp).with_name("gdalbuildvrt")
    full = _unpacked_tif(translate, climate, tmp_path / "full.tif")
    east, west = tmp_path / "east.tif", tmp_path / "west.tif"
    subprocess.run(
        [str(translate), "-q", "-srcwin", "180", "0", "180", "180",
         "-a_ullr", "-180", "90", "0", "-90", str(full), str(east)],
        check=True,
    )  # fmt: skip
    subprocess.run(
        [str(translate), "-q", "-srcwin", "0", "0", "180", "180", str(full), str(west)],
        check=True,
    )
    mosaic = tmp_path / "mosaic.vrt"
    subprocess.run([str(buildvrt), "-q", str(mosaic), str(east), str(west)], check=True)
    return gdalwarp_reference(gdalwarp, mosaic, grid, method, "float32", math.nan,
                              tmp_path / "ref.tif")  # fmt: skip


@pytest.mark.parametrize("method", ["average", "bilinear", "nearest"])
def test_wrapped_source_equals_gdalwarp_of_the_hand_made_mosaic(
    climate: Path, tmp_path: Path, gdalwarp: str, method: str
) -> None:
    entry = dataset(climate, variable="tas", crs="EPSG:4326", time="2000-02-01",
                    resampling=method)  # fmt: skip
    source = inspect(entry, CATALOG, wrap_longitudes=True)
    nodata = output_nodata("float32", source_nodata(entry, source))
    ours = warp_in_windows(source, entry, GRID_2DEG, warp_plan(source, entry, GRID_2DEG,
                                                                WARP_MEMORY))  # fmt: skip
    reference = _shifted_halves_reference(gdalwarp, climate, tmp_path, method, GRID_2DEG)
    assert_every_cell(ours, reference, nodata, 10_000, "vs gdalwarp of the shifted halves")
    whole = whole_reproject(source.name, GRID_2DEG, method, "float32", nodata)
    assert_every_cell(ours, whole, nodata, 10_000, "vs whole-source reproject")
    west, east = ours[:, : GRID_2DEG.width // 2], ours[:, GRID_2DEG.width // 2 :]
    assert np.isfinite(west).mean() > 0.9 and np.isfinite(east).mean() > 0.9
    assert np.nanmean(east) - np.nanmean(west) > 15, "0…180° (warm) lands east of 0°"


# --------------------------------------------------------------------------- end to end


def test_geod_run_of_a_0_360_netcdf_with_only_crs_and_variable_added(
    tmp_path: Path,
) -> None:
    path = write_netcdf(tmp_path / "single.nc", TIMES[:1], seed=1)
    config = {
        "name": "netcdf",
        "datasets": [{"name": "tas", "path": str(path), "crs": "EPSG:4326", "variable": "tas"}],
        "grid": {"resolution": 2.0},
        "resampling": {"window_size": 256, "threads": 1},
        "export": {"formats": ["parquet"], "name": "table"},
        "restart": {"policy": "never"},
        "paths": {"work_dir": str(tmp_path / "work"), "output_dir": str(tmp_path / "out")},
    }
    config_path = tmp_path / "config.yml"
    config_path.write_text(yaml.safe_dump(config))
    check = geod("check", str(config_path))
    assert check.returncode == 0, error_line(check.stderr)
    assert "tas: wrapping longitudes 0…360 → −180…180" in check.stdout
    assert "tas: unpacking values × 0.01 + 280" in check.stdout
    result = geod("run", str(config_path))
    assert result.returncode == 0, error_line(result.stderr)
    table = pq.read_table(tmp_path / "out" / "table.parquet").to_pandas()
    valid = table.dropna(subset=["tas"])
    assert (valid.x < 0).sum() > 5000 and (valid.x > 0).sum() > 5000, "both hemispheres"
    west = valid[valid.x < 0].tas.mean()
    east = valid[valid.x > 0].tas.mean()
    assert 285 < east < 295 and 265 < west < 275, (east, west)
