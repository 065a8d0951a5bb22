"""Demo layers: the files config.yml names, with the grids, types and nodata they promise."""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS

from pipeline.config import load_config
from pipeline.demo import PARTIAL_SUFFIX, SIZES, generate, layer_specs

REPO = Path(__file__).resolve().parent.parent
CONFIG = load_config(REPO / "config.yml", check_files=False)


@pytest.fixture(scope="module")
def small(demo_dir: Path) -> list[Path]:
    """The session's demo layers: ``generate(directory, "small", seed=0)``, as its return
    value lists them (tests only read them)."""
    return [demo_dir / spec.filename for spec in layer_specs("small")]


@pytest.fixture(scope="module")
def cli_small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """``python -m pipeline.demo DIR --size small`` (the default seed, 0), run once: its
    output directory and the finished process."""
    directory = tmp_path_factory.mktemp("cli") / "d"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.demo", str(directory), "--size", "small"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    return directory, done


def read_valid(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Values and validity mask (nodata, NaN or not) of band 1."""
    with rasterio.open(path) as src:
        data = src.read(1)
        nodata = src.nodata
    valid = ~np.isnan(data) if nodata is None or math.isnan(nodata) else data != nodata
    if data.dtype.kind == "f":
        valid &= ~np.isnan(data)
    return data, valid


def test_file_names_are_the_ones_config_yml_uses(small: list[Path]) -> None:
    assert [p.name for p in small] == [d.path.name for d in CONFIG.datasets]
    assert all(p.is_file() for p in small)
    assert not [p for p in small[0].parent.iterdir() if p.name.startswith(".")]


def test_each_file_has_the_promised_grid_type_nodata_and_layout(small: list[Path]) -> None:
    for path, spec in zip(small, layer_specs("small"), strict=True):
        with rasterio.open(path) as src:
            assert src.crs == CRS.from_user_input(spec.crs), path.name
            assert src.transform.almost_equals(spec.transform, precision=1e-9), path.name
            assert (src.width, src.height, src.count) == (spec.width, spec.height, 1)
            assert src.dtypes[0] == spec.dtype
            assert src.nodata == spec.nodata or (math.isnan(src.nodata) and math.isnan(spec.nodata))
            assert src.block_shapes[0] == (256, 256)
            assert src.compression.value == "DEFLATE"


def test_small_set_has_the_advertised_resolutions(small: list[Path]) -> None:
    richness, endemism, landcover, threat = (rasterio.open(p) for p in small)
    with richness, endemism, landcover, threat:
        assert richness.res == (0.5, 0.5)
        assert richness.bounds == (-180.0, -90.0, 180.0, 90.0)
        assert endemism.res == pytest.approx((1 / 12, 1 / 12), rel=1e-12)
        assert landcover.res == pytest.approx((1 / 60, 1 / 60), rel=1e-12)
        assert (landcover.dtypes[0], landcover.nodata) == ("int16", -32768)
        assert threat.crs == CRS.from_epsg(6933)
        # EASE-Grid 2.0 global: spans the whole equal-area cylinder, 25 km cells.
        assert threat.bounds.left == pytest.approx(-17_367_530.44)
        assert threat.res[0] == pytest.approx(25_025.26, abs=0.01)


@pytest.mark.parametrize("size", SIZES)
def test_endemism_sits_exactly_on_the_config_grid_at_every_size(size: str) -> None:
    """Same CRS and resolution, whole-pixel offset: the passthrough case."""
    spec = layer_specs(size)[1]
    xres, yres = CONFIG.grid.resolution
    west, _, _, north = CONFIG.grid.bounds
    assert spec.crs == CONFIG.grid.crs
    assert spec.transform.a == xres and -spec.transform.e == yres
    columns = (spec.transform.c - west) / xres
    rows = (north - spec.transform.f) / yres
    assert abs(columns - round(columns)) < 1e-9 and abs(rows - round(rows)) < 1e-9
    assert round(columns) >= 0 and round(columns) + spec.width <= round(360 / xres)
    assert round(rows) >= 0 and round(rows) + spec.height <= round(180 / yres)


def test_every_size_step_is_about_four_times_the_pixels() -> None:
    totals = [sum(s.width * s.height for s in layer_specs(size)) for size in SIZES]
    ratios = [b / a for a, b in itertools.pairwise(totals)]
    assert ratios == [pytest.approx(4.0, abs=0.6), pytest.approx(4.0, abs=1.0)]
    assert [s.filename for s in layer_specs("large")] == [s.filename for s in layer_specs()]


def test_values_are_plausible_with_nodata_oceans(small: list[Path]) -> None:
    richness, endemism, landcover, threat = (read_valid(p) for p in small)
    land = richness[1].mean()
    assert 0.2 < land < 0.45  # Earth is about 29 % land
    values = richness[0][richness[1]]
    assert values.min() >= 0 and np.array_equal(values, np.rint(values))
    for data, valid in (endemism, threat):
        assert 0.2 < valid.mean() < 0.9
        assert data[valid].min() >= 0.0 and data[valid].max() <= 1.0
    classes = set(np.unique(landcover[0][landcover[1]]).tolist())
    assert classes <= set(range(1, 12)) and len(classes) >= 3
    assert 0 < landcover[1].mean() < 1  # the regional subset includes a coast


def test_layers_share_one_land_mask(small: list[Path]) -> None:
    """A 5' endemism cell is land exactly where the 0.5° richness cell around it mostly is."""
    _, rich_valid = read_valid(small[0])
    _, end_valid = read_valid(small[1])
    with rasterio.open(small[1]) as src:
        col0 = round((src.transform.c + 180) / 0.5)
        row0 = round((90 - src.transform.f) / 0.5)
    factor = 6  # 0.5° / 5'
    blocks = end_valid.reshape(end_valid.shape[0] // factor, factor, -1, factor).mean(axis=(1, 3))
    coarse = rich_valid[row0 : row0 + blocks.shape[0], col0 : col0 + blocks.shape[1]]
    agreement = ((blocks > 0.5) == coarse).mean()
    assert agreement > 0.97


def test_same_seed_same_bytes_other_seed_other_world(
    small: list[Path], cli_small: tuple[Path, subprocess.CompletedProcess], tmp_path: Path
) -> None:
    # Seed 0 generated again, by the command line's run of generate().
    directory, done = cli_small
    assert done.returncode == 0, done.stderr
    again = [directory / p.name for p in small]
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in small]
    other = generate(tmp_path / "other", "small", seed=1)
    assert not np.array_equal(read_valid(other[0])[1], read_valid(small[0])[1])


def test_cli_writes_the_set_and_reports_bad_directories(
    cli_small: tuple[Path, subprocess.CompletedProcess], tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    directory, done = cli_small
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 4
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        d.path.name for d in CONFIG.datasets
    )

    (tmp_path / "file").write_text("not a folder")
    bad = subprocess.run(
        [sys.executable, "-m", "pipeline.demo", str(tmp_path / "file" / "d")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1
    assert bad.stderr.startswith(f"demo: cannot write {tmp_path / 'file' / 'd'}")


def test_killed_generation_leaves_no_partial_file_under_a_final_name(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.demo", str(out), "--size", "medium"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    partials: list[Path] = []
    while not partials and time.monotonic() < deadline and proc.poll() is None:
        partials = list(out.glob(f".*{PARTIAL_SUFFIX}")) if out.exists() else []
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partials, "the generator never showed a temporary file"
    finals = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert len(finals) < len(CONFIG.datasets)  # killed mid-way
    for partial in out.glob(f".*{PARTIAL_SUFFIX}"):  # a layer cut short has no final file
        assert partial.name.split(".")[1] + ".tif" not in finals
    for name in finals:  # whatever did land is complete, down to its last block
        with rasterio.open(out / name) as src:
            src.read(1, window=src.block_window(1, *(n - 1 for n in _block_counts(src))))

    generate(out, "small")  # the next run sweeps the dead writer's temporary
    assert not list(out.glob(f".*{PARTIAL_SUFFIX}"))


def _block_counts(src: rasterio.DatasetReader) -> tuple[int, int]:
    rows, cols = src.block_shapes[0]
    return math.ceil(src.height / rows), math.ceil(src.width / cols)
