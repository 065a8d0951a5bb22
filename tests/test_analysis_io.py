"""Batch reading, streamed statistics, sampling, part files and map writing of the analysis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.analysis.io import (
    ColumnStats,
    PartStore,
    RasterGrid,
    RasterSpec,
    iter_table,
    sample_rows,
    write_geotiff,
)

ROWS = 537


def write(path: Path, row_group: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(ROWS, 2))
    values[rng.random((ROWS, 2)) < 0.1] = np.nan
    table = pa.table(
        {
            "x": np.arange(ROWS, dtype=float),
            "y": -np.arange(ROWS, dtype=float),
            "a": pa.array(values[:, 0], mask=np.isnan(values[:, 0])),
            "b": pa.array(values[:, 1], mask=np.isnan(values[:, 1])),
        }
    )
    pq.write_table(table, path, row_group_size=row_group)
    return values


@settings(max_examples=40, deadline=None)
@given(
    row_group=st.integers(1, 600),
    batch_rows=st.integers(1, 600),
    start_batch=st.integers(0, 8),
)
def test_batches_are_exact_slices_from_any_start(
    tmp_path_factory: pytest.TempPathFactory, row_group: int, batch_rows: int, start_batch: int
) -> None:
    path = tmp_path_factory.mktemp("t") / "t.parquet"
    values = write(path, row_group)
    batches = list(iter_table(path, ["a", "b"], batch_rows, start_batch))
    first = start_batch * batch_rows
    expected_count = max(0, -(-(ROWS - first) // batch_rows))
    assert len(batches) == expected_count
    for offset, batch in enumerate(batches):
        assert batch.index == start_batch + offset
        assert batch.start == first + offset * batch_rows
        lo, hi = batch.start, min(batch.start + batch_rows, ROWS)
        np.testing.assert_array_equal(batch.xy[:, 0], np.arange(lo, hi))
        np.testing.assert_array_equal(batch.values, values[lo:hi])


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, ROWS - 1), max_size=6, unique=True))
def test_streamed_statistics_equal_numpy_whatever_the_chunking(cuts: list[int]) -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(loc=1e6, scale=3, size=(ROWS, 2))  # large mean: cancellation check
    values[rng.random((ROWS, 2)) < 0.2] = np.nan
    stats = ColumnStats.empty(["a", "b"])
    for part in np.split(values, sorted(cuts)):
        stats.update(part)
    np.testing.assert_allclose(stats.mean, np.nanmean(values, axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, np.nanstd(values, axis=0, ddof=1), rtol=1e-9)
    np.testing.assert_array_equal(stats.minimum, np.nanmin(values, axis=0))
    assert stats.complete_rows == int(np.isfinite(values).all(axis=1).sum())


def test_sample_is_uniform_without_replacement_over_complete_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    values = write(path, 100)
    complete = np.flatnonzero(np.isfinite(values).all(axis=1))
    xy, picked = sample_rows(path, ["a", "b"], 64, 120, 5, len(complete), complete_only=True)
    rows = xy[:, 0].astype(int)
    assert len(set(rows)) == 120 and set(rows) <= set(complete)
    np.testing.assert_array_equal(picked, values[rows])
    again, _ = sample_rows(path, ["a", "b"], 200, 120, 5, len(complete), complete_only=True)
    np.testing.assert_array_equal(again, xy)  # same seed, other batch size: same rows


def test_part_store_discards_parts_of_another_fingerprint(tmp_path: Path) -> None:
    table = pa.table({"v": [1, 2]})
    store = PartStore(tmp_path, "m", "digest-1")
    store.record(0, table)
    store.record(2, table)
    (store.root / "part-000003.parquet.partial-0000abcd").write_bytes(b"half")
    assert PartStore(tmp_path, "m", "digest-1").done == {0, 2}
    assert not list(store.root.glob("*.partial-*"))  # leftovers of a killed write removed
    assert PartStore(tmp_path, "m", "digest-2").done == set()
    assert not list((tmp_path / "m").glob("part-*"))


def test_map_is_the_same_whatever_the_batch_order(tmp_path: Path) -> None:
    grid = RasterGrid("EPSG:4326", Affine(0.5, 0, 10, 0, -0.5, 50), 40, 30)
    rng = np.random.default_rng(2)
    cells = rng.choice(40 * 30, size=500, replace=False)
    rows, cols = np.divmod(cells, 40)
    x, y = grid.transform @ (cols + 0.5, rows + 0.5)
    xy = np.column_stack([x, y])
    values = rng.normal(size=(500, 2))
    spec = RasterSpec("float32", float("nan"), ["p", "q"])
    pieces = [(xy[i : i + 37], values[i : i + 37]) for i in range(0, 500, 37)]
    ordered = write_geotiff(tmp_path / "o.tif", grid, spec, pieces, tmp_path / "s", 1 << 24)
    shuffled = write_geotiff(tmp_path / "s.tif", grid, spec, pieces[::-1], tmp_path / "s", 1 << 24)
    with rasterio.open(ordered) as a, rasterio.open(shuffled) as b:
        first, second = a.read(), b.read()
        assert a.descriptions == ("p", "q")
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first[:, rows, cols], values.T.astype(np.float32))
    assert int(np.isfinite(first[0]).sum()) == 500
