"""Layer store: durable chunk writes, the completion manifest, resets, verification, xarray."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from rasterio.windows import Window

from pipeline.config import GridConfig
from pipeline.grid import TargetGrid
from pipeline.store import MANIFEST_NAME, LayerStore

CHUNK = 64
GRID = TargetGrid.from_config(GridConfig(resolution=1.0, bounds=(-100, -50, 100, 50)))


def _window_data(window: Window, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(int(window.height), int(window.width))).astype("float32")
    data[:3, :5] = np.nan
    return data


def _fill(store: LayerStore, name: str, windows: list[Window]) -> None:
    for index, window in enumerate(windows):
        store.write_window(name, window, _window_data(window, index))


def test_written_windows_read_back_and_persist_across_reopen(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "s.zarr", GRID, CHUNK)
    store.ensure_layer("bio1", "float32", None, "fp-1")
    windows = GRID.windows(128)
    assert store.total_chunks() == 8
    _fill(store, "bio1", windows[:1])
    assert store.completed("bio1") == 4, "a 128 window covers four 64-chunks"
    assert store.is_complete("bio1", windows[0])
    assert not store.is_complete("bio1", windows[1])

    leftover = tmp_path / "s.zarr" / "bio1" / "c" / "0" / "0.3f2a.partial"
    leftover.write_bytes(b"half a chunk from a killed writer")
    reopened = LayerStore(tmp_path / "s.zarr", GRID, CHUNK)
    reopened.ensure_layer("bio1", "float32", None, "fp-1")
    assert reopened.completed("bio1") == 4
    assert not leftover.exists()
    np.testing.assert_array_equal(
        reopened.read_window("bio1", windows[0]), _window_data(windows[0], 0)
    )
    untouched = reopened.read_window("bio1", windows[1])
    assert np.isnan(untouched).all(), "never-written chunks read as nodata"
    assert reopened.layer_names() == ["bio1"]
    dtype, nodata = reopened.layer_info("bio1")
    assert dtype == "float32" and math.isnan(nodata)


def test_all_nodata_chunks_count_as_complete_without_a_file(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "s.zarr", GRID, CHUNK)
    store.ensure_layer("ocean", "int16", -32768, "fp")
    window = GRID.windows(64)[0]
    store.write_window("ocean", window, np.full((64, 64), -32768, "int16"))
    assert store.is_complete("ocean", window)
    assert not (tmp_path / "s.zarr" / "ocean" / "c" / "0" / "0").exists()
    assert store.verify("ocean") == 1
    assert store.layer_info("ocean") == ("int16", -32768.0)


def test_unaligned_or_misshapen_windows_are_refused(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "s.zarr", GRID, CHUNK)
    store.ensure_layer("a", "float32", None, "fp")
    with pytest.raises(ValueError, match="not aligned"):
        store.write_window("a", Window(32, 0, 64, 64), np.zeros((64, 64), "float32"))
    with pytest.raises(ValueError, match="does not fit"):
        store.write_window("a", Window(0, 0, 64, 64), np.zeros((10, 64), "float32"))
    assert store.completed("a") == 0
    with pytest.raises(ValueError, match="reserved"):
        store.ensure_layer("x", "float32", None, "fp")


def test_new_fingerprint_resets_the_layer(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "s.zarr", GRID, CHUNK)
    store.ensure_layer("a", "float32", None, "old")
    _fill(store, "a", GRID.windows(64))
    assert store.completed("a") == 8
    again = LayerStore(tmp_path / "s.zarr", GRID, CHUNK)
    again.ensure_layer("a", "float32", None, "new")
    assert again.completed("a") == 0
    assert np.isnan(again.read_window("a", GRID.windows(64)[0])).all(), "old data is gone"


def test_torn_manifest_line_is_detected_and_good_chunks_kept(tmp_path: Path) -> None:
    root = tmp_path / "s.zarr"
    store = LayerStore(root, GRID, CHUNK)
    store.ensure_layer("a", "float32", None, "fp")
    windows = GRID.windows(64)
    _fill(store, "a", windows)
    manifest = root / "a" / MANIFEST_NAME
    text = manifest.read_text()
    manifest.write_text(text[: len(text) - 20])  # the last append was torn mid-line

    reopened = LayerStore(root, GRID, CHUNK)
    reopened.ensure_layer("a", "float32", None, "fp")
    assert reopened.completed("a") == 7
    assert not reopened.is_complete("a", windows[-1])
    assert manifest.read_text().endswith("\n"), "manifest rewritten with whole lines only"
    np.testing.assert_array_equal(
        reopened.read_window("a", windows[0]), _window_data(windows[0], 0)
    )


def test_garbage_manifest_and_corrupt_chunk_are_dropped_by_verify(tmp_path: Path) -> None:
    root = tmp_path / "s.zarr"
    store = LayerStore(root, GRID, CHUNK)
    store.ensure_layer("a", "float32", None, "fp")
    windows = GRID.windows(64)
    _fill(store, "a", windows)
    chunk = root / "a" / "c" / "1" / "2"
    damaged = bytearray(chunk.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    chunk.write_bytes(bytes(damaged))
    assert store.verify("a") == 7
    assert not store.is_complete("a", Window(128, 64, 64, 36))

    manifest = root / "a" / MANIFEST_NAME
    manifest.write_bytes(b"\x00\xff garbage\n3 1\n" + manifest.read_bytes())
    reopened = LayerStore(root, GRID, CHUNK)
    reopened.ensure_layer("a", "float32", None, "fp")
    assert reopened.completed("a") == 7, "garbage lines dropped, verified chunks kept"


def test_xarray_opens_the_store_with_grid_coordinates(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "s.zarr", GRID, CHUNK)
    store.ensure_layer("bio1", "float32", None, "fp")
    _fill(store, "bio1", GRID.windows(64))
    dataset = xr.open_zarr(tmp_path / "s.zarr", consolidated=False)
    layer = dataset["bio1"]
    assert layer.dims == ("y", "x")
    assert layer.shape == (GRID.height, GRID.width)
    xs, ys = GRID.cell_centers(Window(0, 0, GRID.width, GRID.height))
    np.testing.assert_array_equal(dataset["x"].values, xs)
    np.testing.assert_array_equal(dataset["y"].values, ys)
    window = GRID.windows(64)[5]
    np.testing.assert_array_equal(
        layer.isel(y=window.toslices()[0], x=window.toslices()[1]).values,
        _window_data(window, 5),
    )
