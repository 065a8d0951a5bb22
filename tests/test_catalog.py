"""Catalog: header-only inspection of real rasters, every bad input as one clear line.

Each bad-input case builds a real file (through rasterio/GDAL, or by damaging
one) and expects a one-line :class:`CatalogError` naming the dataset, the path
and the reason.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import rasterio
import yaml
from rasterio.crs import CRS
from rasterio.transform import from_origin

from pipeline.catalog import PARENT_SIGNALS, CatalogError, inspect, inspect_all
from pipeline.config import CatalogConfig, DatasetConfig, PipelineConfig
from pipeline.events import EVENTS_FD_ENV
from pipeline.report.history import HISTORY_NAME

#: Short enough to keep the hanging cases quick, long enough for a loaded CI box.
TIMEOUT = 3.0
CATALOG = CatalogConfig(timeout=TIMEOUT)
TRANSFORM = from_origin(-10.0, 50.0, 0.5, 0.5)


def write_tif(path: Path, data: np.ndarray, **profile: Any) -> Path:
    """A real GeoTIFF: tiled 256, deflate, EPSG:4326 unless overridden."""
    if data.ndim == 2:
        data = data[np.newaxis]
    options: dict[str, Any] = dict(
        driver="GTiff",
        count=data.shape[0],
        height=data.shape[1],
        width=data.shape[2],
        dtype=data.dtype.name,
        crs="EPSG:4326",
        transform=TRANSFORM,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )
    options.update(profile)
    with rasterio.open(path, "w", **options) as dst:
        dst.write(data)
    return path


def noise(shape: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    """Incompressible data, so the file's blocks are large and damage lands in data."""
    return np.random.default_rng(0).random(shape).astype(dtype)


def vrt(path: Path, width: int, height: int, body: str = "") -> Path:
    path.write_text(
        textwrap.dedent(f"""\
        <VRTDataset rasterXSize="{width}" rasterYSize="{height}">
          <SRS>EPSG:4326</SRS>
          <GeoTransform>-180, 0.1, 0, 90, 0, -0.1</GeoTransform>
          <VRTRasterBand dataType="Float32" band="1">{body}</VRTRasterBand>
        </VRTDataset>
        """)
    )
    return path


def set_tiff_tag(path: Path, tag: int, value: int) -> None:
    """Rewrite one SHORT/LONG tag of a little-endian classic TIFF's first IFD in place."""
    data = bytearray(path.read_bytes())
    assert data[:4] == b"II*\x00"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for index in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * index
        found, kind = struct.unpack_from("<HH", data, entry)
        if found == tag:
            struct.pack_into("<H" if kind == 3 else "<I", data, entry + 8, value)
            path.write_bytes(bytes(data))
            return
    raise AssertionError(f"tag {tag} not in {path}")


# --------------------------------------------------------------------------- builders
# Each takes a temporary directory and returns (path, extra dataset options).

Built = tuple[Path, dict[str, Any]]


def missing(tmp: Path) -> Built:
    return tmp / "nowhere.tif", {}


def parent_is_a_file(tmp: Path) -> Built:
    (tmp / "plain").write_text("x")
    return tmp / "plain" / "layer.tif", {}


def directory(tmp: Path) -> Built:
    (tmp / "layer.tif").mkdir()
    return tmp / "layer.tif", {}


def fifo(tmp: Path) -> Built:
    os.mkfifo(tmp / "pipe.tif")
    return tmp / "pipe.tif", {}


def empty(tmp: Path) -> Built:
    (tmp / "empty.tif").touch()
    return tmp / "empty.tif", {}


def random_bytes(tmp: Path) -> Built:
    (tmp / "random.tif").write_bytes(np.random.default_rng(1).bytes(20_000))
    return tmp / "random.tif", {}


def truncated(tmp: Path) -> Built:
    path = write_tif(tmp / "cut.tif", noise((1024, 1024)))
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    return path, {}


def corrupt_last_block(tmp: Path) -> Built:
    """Same length, but the last compressed block is garbage: only decoding finds it."""
    path = write_tif(tmp / "garbled.tif", noise((512, 512)))
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
        length = int(src.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * length)
    return path, {}


def corrupt_header(tmp: Path) -> Built:
    path = write_tif(tmp / "header.tif", noise((64, 64)))
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<I", len(data) + 10_000)  # first IFD beyond the end
    path.write_bytes(bytes(data))
    return path, {}


def no_crs(tmp: Path) -> Built:
    return write_tif(tmp / "nocrs.tif", noise((32, 32)), crs=None), {}


def no_geotransform(tmp: Path) -> Built:
    path = tmp / "nogt.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=8, height=8, count=1, dtype="float32", crs="EPSG:4326"
    ) as dst:
        dst.write(noise((1, 8, 8)))
    return path, {}


def zero_width_tiff(tmp: Path) -> Built:
    path = write_tif(tmp / "zero.tif", noise((10, 4)), tiled=False, compress=None)
    set_tiff_tag(path, 256, 0)  # ImageWidth
    return path, {}


def zero_width_vrt(tmp: Path) -> Built:
    return vrt(tmp / "zero.vrt", 0, 10), {}


def complex_dtype(tmp: Path) -> Built:
    return write_tif(tmp / "complex.tif", noise((16, 16)).astype("complex64")), {}


def huge_declared_size(tmp: Path) -> Built:
    return vrt(tmp / "huge.vrt", 1_000_000, 1_000_000), {}


def multiband_without_band(tmp: Path) -> Built:
    return write_tif(tmp / "bands.tif", noise((3, 16, 16))), {}


def band_out_of_range(tmp: Path) -> Built:
    return write_tif(tmp / "bands.tif", noise((3, 16, 16))), {"band": 4}


def nodata_outside_dtype(tmp: Path) -> Built:
    return write_tif(tmp / "bytes.tif", noise((16, 16), "uint8")), {"nodata": -9999}


def vrt_over_a_fifo(tmp: Path) -> Built:
    """A regular file whose reading hangs GDAL: the timeout must end it."""
    os.mkfifo(tmp / "source.tif")
    body = (
        '<SimpleSource><SourceFilename relativeToVRT="1">source.tif</SourceFilename>'
        "<SourceBand>1</SourceBand></SimpleSource>"
    )
    return vrt(tmp / "hang.vrt", 10, 10, body), {}


def character_device(tmp: Path) -> Built:
    return Path("/dev/zero"), {}


def link_into_proc(tmp: Path) -> Built:
    """A symlink to another process's environment: a regular file to stat(), never a raster."""
    (tmp / "env.tif").symlink_to("/proc/self/environ")
    return tmp / "env.tif", {}


BAD_INPUTS: list[tuple[Callable[[Path], Built], str]] = [
    (missing, "file does not exist"),
    (parent_is_a_file, "a parent in the path is not a directory"),
    (directory, "is a directory, expected a raster file"),
    (fifo, "is a FIFO, expected a regular raster file"),
    (character_device, "is a character device, expected a regular raster file"),
    (link_into_proc, "is a kernel file (/proc, /sys), expected a regular raster file"),
    (empty, "file is empty (0 bytes)"),
    (random_bytes, "not a raster GDAL can read (unrecognised file format)"),
    (truncated, "truncated GeoTIFF: its last block ends at byte"),
    (corrupt_last_block, "truncated or corrupt: its last block cannot be read"),
    (corrupt_header, "truncated or corrupt GeoTIFF: GDAL cannot open it"),
    (no_crs, "has no CRS"),
    (no_geotransform, "has no geotransform"),
    (zero_width_tiff, "zero-size raster"),
    (zero_width_vrt, "zero-size raster"),
    (complex_dtype, "unsupported data type complex64"),
    (huge_declared_size, "1,000,000 × 1,000,000 = 1,000,000,000,000 cells exceeds"),
    (multiband_without_band, "has 3 bands: choose one with `band:` (1–3)"),
    (band_out_of_range, "band 4 is out of range (the file has 3 bands)"),
    (nodata_outside_dtype, "nodata -9999 does not fit its data type uint8"),
    (vrt_over_a_fifo, f"header inspection timed out after {TIMEOUT:g} s"),
]


@pytest.mark.parametrize(
    ("build", "expected"), BAD_INPUTS, ids=[build.__name__ for build, _ in BAD_INPUTS]
)
def test_bad_input_is_one_line_naming_dataset_path_and_reason(
    tmp_path: Path, build: Callable[[Path], Built], expected: str
) -> None:
    path, options = build(tmp_path)
    dataset = DatasetConfig(name="layer", path=path, **options)

    with pytest.raises(CatalogError) as caught:
        inspect(dataset, CATALOG)

    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"layer ({path}): ")
    assert expected in message
    assert [p.dataset for p in caught.value.problems] == ["layer"]


def test_hanging_input_is_killed_within_the_timeout(tmp_path: Path) -> None:
    path, _ = vrt_over_a_fifo(tmp_path)
    started = time.monotonic()
    with pytest.raises(CatalogError, match="timed out"):
        inspect(DatasetConfig(name="hang", path=path), CatalogConfig(timeout=1.0))
    # Startup (importing GDAL) plus the 1 s timeout, far from "forever".
    assert time.monotonic() - started < 1.0 + 10.0


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) not installed")
def test_permission_denied(tmp_path: Path) -> None:
    """chmod 000 does not stop root, so as root the check runs without CAP_DAC_OVERRIDE."""
    path = write_tif(tmp_path / "secret.tif", noise((16, 16)))
    path.chmod(0)
    script = (
        "import sys; from pathlib import Path\n"
        "from pipeline.catalog import CatalogError, inspect\n"
        "from pipeline.config import CatalogConfig, DatasetConfig\n"
        "try:\n"
        "    inspect(DatasetConfig(name='secret', path=Path(sys.argv[1])), CatalogConfig())\n"
        "except CatalogError as exc:\n"
        "    print(exc)\n"
    )
    command = [sys.executable, "-c", script, str(path)]
    if os.geteuid() == 0:
        caps = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", *command]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent
    )
    assert result.stdout.strip() == f"secret ({path}): permission denied (cannot read the file)"


# --------------------------------------------------------------------------- good inputs


def test_header_facts_of_a_good_raster(tmp_path: Path) -> None:
    data = noise((300, 600))
    path = write_tif(tmp_path / "good.tif", data, nodata=-9999.0)

    info = inspect(DatasetConfig(name="good", path=path), CATALOG)

    assert info.dataset == "good" and info.path == path
    assert info.crs == CRS.from_epsg(4326)
    assert info.transform == TRANSFORM
    assert (info.width, info.height, info.count, info.band) == (600, 300, 1, 1)
    assert info.dtype == "float32"
    assert info.nodata == -9999.0
    assert info.block_shape == (256, 256)
    assert info.bounds == pytest.approx((-10.0, -100.0, 290.0, 50.0))


def test_chosen_band_and_nodata_override(tmp_path: Path) -> None:
    data = np.stack([noise((16, 16)), noise((16, 16)) * 100]).astype("int16")
    path = write_tif(tmp_path / "bands.tif", data)

    info = inspect(DatasetConfig(name="b", path=path, band=2, nodata=-32768), CATALOG)

    assert (info.band, info.count, info.dtype, info.nodata) == (2, 2, "int16", -32768)


def test_nan_only_raster_is_valid_just_empty(tmp_path: Path) -> None:
    """All-nodata is a legitimate (empty) layer, not a catalog error."""
    path = write_tif(tmp_path / "nan.tif", np.full((64, 64), np.nan, "float32"), nodata=np.nan)

    info = inspect(DatasetConfig(name="nan", path=path), CATALOG)

    assert info.nodata is not None and math.isnan(info.nodata)


def test_a_real_tiff_shipped_with_python_is_read_but_has_no_crs() -> None:
    """CPython ships a plain (non-geo) RGBA TIFF in its test data: GDAL reads it, we reject it."""
    path = Path(sysconfig.get_paths()["stdlib"]) / "test" / "imghdrdata" / "python.tiff"
    if not path.exists():
        pytest.skip(f"{path} is not installed with this Python")

    with pytest.raises(CatalogError) as caught:
        inspect(DatasetConfig(name="python", path=path, band=1), CATALOG)

    assert str(caught.value).startswith(f"python ({path}): has no CRS")


_FORKED_INSPECT_ALL = (
    "import json, sys\n"
    "from pipeline import catalog\n"
    "from pipeline.config import PipelineConfig\n"
    "catalog.prefork()  # as the worker does, in a process that has started no thread\n"
    "assert catalog._spare is not None, 'nothing forked'\n"
    "try:\n"
    "    catalog.inspect_all(PipelineConfig(**json.loads(sys.argv[1])))\n"
    "except catalog.CatalogError as exc:\n"
    "    print(json.dumps([[p.dataset, p.reason, str(p)] for p in exc.problems] + [str(exc)]))\n"
)


@pytest.mark.parametrize("forked", [False, True], ids=["spawned", "forked"])
def test_inspect_all_reports_every_bad_dataset_and_survives_a_hang(
    tmp_path: Path, forked: bool
) -> None:
    """Also with the first child forked by ``prefork`` as the worker does (in a fresh
    interpreter: this one may run threads by now): killed on the timeout alike."""
    good = write_tif(tmp_path / "good.tif", noise((32, 32)))
    (tmp_path / "hang").mkdir()
    hang, _ = vrt_over_a_fifo(tmp_path / "hang")
    settings = {
        "datasets": [
            {"name": "hangs", "path": str(hang)},
            {"name": "good", "path": str(good)},
            {"name": "gone", "path": str(tmp_path / "gone.tif")},
        ],
        "catalog": {"timeout": TIMEOUT},
    }

    if forked:
        result = subprocess.run(
            [sys.executable, "-c", _FORKED_INSPECT_ALL, json.dumps(settings)],
            capture_output=True, text=True, timeout=120, check=True,
            cwd=Path(__file__).parent.parent,
        )  # fmt: skip
        *found, message = json.loads(result.stdout.strip().splitlines()[-1])
    else:
        with pytest.raises(CatalogError) as caught:
            inspect_all(PipelineConfig(**settings))
        found = [[p.dataset, p.reason, str(p)] for p in caught.value.problems]
        message = str(caught.value)

    assert [dataset for dataset, _, _ in found] == ["hangs", "gone"]
    assert "timed out" in found[0][1]
    assert found[1][1] == "file does not exist"  # answered by a fresh child
    assert message == "; ".join(text for _, _, text in found)


def test_inspect_all_returns_every_source_in_config_order(tmp_path: Path) -> None:
    paths = [
        write_tif(tmp_path / f"{n}.tif", noise((16 * (i + 1), 16))) for i, n in enumerate("abc")
    ]
    config = PipelineConfig(datasets=[{"name": p.stem, "path": p} for p in paths])

    infos = inspect_all(config)

    assert [(i.dataset, i.height) for i in infos] == [("a", 16), ("b", 32), ("c", 48)]


_STUCK_INSPECTION = (
    "import signal, sys; from pathlib import Path\n"
    "from pipeline.catalog import CatalogError, inspect, prefork\n"
    "if sys.argv[2] == 'forked':\n"
    "    prefork()  # as the worker does before its threads start\n"
    "signal.signal(signal.SIGINT, lambda *_: None)  # as the worker's Controller does\n"
    "from pipeline.config import CatalogConfig, DatasetConfig\n"
    "try:\n"
    "    inspect(DatasetConfig(name='slow', path=Path(sys.argv[1])), CatalogConfig())\n"
    "    print('inspected')\n"
    "except CatalogError as exc:\n"
    "    print(exc)\n"
)


def _open_writer(fifo: Path, deadline: float) -> int | None:
    """A write end of ``fifo`` once a reader (GDAL in the child) has it open."""
    while time.monotonic() < deadline:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            assert exc.errno == errno.ENXIO
            time.sleep(0.02)
    return None


@contextlib.contextmanager
def stuck_inspection(tmp_path: Path, child: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A process inspecting a VRT over a FIFO, its child (``spawned`` or ``forked``) blocked
    inside GDAL; yields the process (leader of its own group) and a held write end of the FIFO."""
    path, _ = vrt_over_a_fifo(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", _STUCK_INSPECTION, str(path), child],
        cwd=Path(__file__).parent.parent,
        start_new_session=True, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        writer = _open_writer(tmp_path / "source.tif", time.monotonic() + 60)
        assert writer is not None, "the inspection never reached the FIFO"
        yield proc, writer
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


@pytest.mark.parametrize("child", ["spawned", "forked"])
def test_inspection_child_survives_ctrl_c_to_its_process_group(tmp_path: Path, child: str) -> None:
    """Ctrl-C reaches the whole foreground group while the worker stops cooperatively:
    the child must finish its inspection, or a stop would read as a bad input."""
    with stuck_inspection(tmp_path, child) as (proc, writer):
        (child,) = psutil.Process(proc.pid).children()
        status = Path(f"/proc/{child.pid}/status").read_text()
        ignored = int(next(v for k, v in _fields(status) if k == "SigIgn"), 16)
        for signum in PARENT_SIGNALS:  # what a group-wide stop, pause or Ctrl-C sends
            assert ignored & (1 << (signum - 1)), signal.Signals(signum).name
        os.killpg(proc.pid, signal.SIGINT)
        os.close(writer)
        # Hand GDAL end-of-file each time it (re)opens the FIFO, until it gives up
        # and control returns to Python, where a default SIGINT would now fire.
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            again = _open_writer(tmp_path / "source.tif", time.monotonic() + 0.2)
            if again is not None:
                os.close(again)
        out, _ = proc.communicate(timeout=10)

    assert out.startswith("slow (") or out.strip() == "inspected", out
    assert "died" not in out and "crashed" not in out and "timed out" not in out


def _fields(status: str) -> Iterator[tuple[str, str]]:
    for line in status.splitlines():
        key, _, value = line.partition(":")
        yield key, value.strip()


@pytest.mark.parametrize("child", ["spawned", "forked"])
def test_inspection_child_never_outlives_its_parent(tmp_path: Path, child: str) -> None:
    """SIGKILL of the worker alone (not its group) still ends a child stuck in GDAL."""
    with stuck_inspection(tmp_path, child) as (proc, writer):
        (child,) = psutil.Process(proc.pid).children()
        proc.kill()
        proc.wait()
        child.wait(timeout=10)  # gone with its parent, not orphaned
        os.close(writer)


def test_worker_rejects_bad_inputs_with_one_line_and_exit_code_2(tmp_path: Path) -> None:
    """End to end: the worker stops before any heavy work, naming every bad dataset."""
    good = write_tif(tmp_path / "good.tif", noise((32, 32)))
    empty_path, _ = empty(tmp_path)
    no_crs_path, _ = no_crs(tmp_path)
    config = {
        "datasets": [
            {"name": "good", "path": str(good)},
            {"name": "hollow", "path": str(empty_path)},
            {"name": "adrift", "path": str(no_crs_path)},
        ],
        "paths": {"work_dir": str(tmp_path / "work"), "output_dir": str(tmp_path / "out")},
    }
    config_path = tmp_path / "config.yml"
    config_path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != EVENTS_FD_ENV}

    done = subprocess.run(
        [sys.executable, "-m", "pipeline.worker", str(config_path), "--stages", "catalog,resample"],
        capture_output=True, text=True, timeout=120, env=env, cwd=Path(__file__).parent.parent,
    )  # fmt: skip

    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert f"hollow ({empty_path}): file is empty (0 bytes)" in line
    assert f"adrift ({no_crs_path}): has no CRS" in line
    assert "good (" not in line
    # Nothing resampled, nothing partial: only the run's event history (read by its report).
    assert [p.name for p in (tmp_path / "work").rglob("*")] in ([], [HISTORY_NAME])
