"""Header-only inspection of every input raster, in a child process under a timeout.

Everything about a run's inputs that can be known without reading their pixels
is checked here, before any heavy work starts, and every problem becomes one
line naming the dataset, its path and the reason. The inspection runs in a
separate process (``python -m pipeline.catalog --serve``) that the parent kills
after ``catalog.timeout`` seconds, because a bad input can hang GDAL itself
(a stale network mount, a FIFO nobody writes, a VRT pointing at one): the
older system once waited seven hours in ``gdal.Open``. The child answers one
request per line, so a whole config is inspected by one process, replaced only
when a dataset times out.

Checks, in order: the path exists, is a regular file (not a directory, FIFO,
socket or device), can be opened for reading, is not empty; GDAL recognises it
(a file with a TIFF signature that GDAL rejects is reported as a truncated or
corrupt GeoTIFF, anything else as not a raster); it has a non-zero size no
larger than ``catalog.max_cells``; a band is chosen when it has several and is
in range; its data type is a real numeric type; it has a CRS and a
geotransform; the nodata value fits its type; and its last block is present
(for GeoTIFF, the block's offset + size lie inside the file, which catches
truncation at header cost) and decodes, when blocks are small enough to read.

A raster whose every pixel is nodata (NaN-only) is *not* a catalog error: it is
a valid, empty layer, and telling it apart would mean reading every pixel. It
resamples to an all-nodata layer and merges as an empty column.

:class:`CatalogError` carries one :class:`Problem` per bad dataset; its message
is those problems joined by ``"; "``, one line in all.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import signal
import stat
import sys
import warnings
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError

from pipeline.config import in_pseudo_filesystem
from pipeline.inspector import READY, Inspector, Problem
from pipeline.source import SourceInfo
from pipeline.source_names import gdal_name, is_remote, local_file
from pipeline.sourcevrt import ANTIMERIDIAN, Unpacking, build_vrt, plan_wrap

if TYPE_CHECKING:  # annotations only: the inspection child skips importing pydantic
    from pipeline.config import CatalogConfig, DatasetConfig, GridConfig, PipelineConfig

#: Band data types the pipeline can resample and store; complex and other
#: exotic GDAL types (CInt16, CFloat64, ...) are rejected up front.
SUPPORTED_DTYPES = (
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "uint64",
    "int64",
    "float32",
    "float64",
)

#: Largest block (in cells) the catalog decodes to prove the data is there.
#: Rasters stored as one huge strip would otherwise be read whole; for those only
#: the GeoTIFF offset check runs. 4 Mi cells is 16 MiB of float32.
MAX_PROBE_BLOCK_CELLS = 4 * 1024 * 1024

#: Signals a worker's process group receives for the worker itself (Ctrl-C, a
#: graceful stop, pause/resume): the child ignores them, or a cooperative stop
#: would kill it mid-inspection and look like a bad input.
PARENT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_ZERO_SIZE_HINTS = ("invalid dataset dimensions", "zero scanline size", "zero width", "zero height")


class CatalogError(Exception):
    """One or more inputs failed inspection; ``problems`` lists each, the message is one line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def inspect(
    dataset: DatasetConfig, config: CatalogConfig, wrap_longitudes: bool = False
) -> SourceInfo:
    """Header facts of one dataset, or :class:`CatalogError` with the reason.

    ``wrap_longitudes``: the target grid is geographic −180…180°, so a
    geographic source reaching east of 180° is rewritten to −180…180°.
    """
    with _Prober(config, wrap_longitudes) as prober:
        result = prober.probe(dataset)
    if isinstance(result, Problem):
        raise CatalogError([result])
    return result


def inspect_all(config: PipelineConfig) -> list[SourceInfo]:
    """Inspect every dataset; raises one :class:`CatalogError` naming every bad one."""
    infos: list[SourceInfo] = []
    problems: list[Problem] = []
    with _Prober(config.catalog, grid_wraps_at_antimeridian(config.grid)) as prober:
        for dataset in config.datasets:
            result = prober.probe(dataset)
            if isinstance(result, Problem):
                problems.append(result)
            else:
                infos.append(result)
    if problems:
        raise CatalogError(problems)
    return infos


# --------------------------------------------------------------------------- parent side


class _Prober(Inspector):
    """The inspection child, answering with :class:`SourceInfo`."""

    def probe(self, dataset: DatasetConfig) -> SourceInfo | Problem:
        facts = self.facts(dataset)
        return facts if isinstance(facts, Problem) else _source_info(dataset, facts)


def grid_wraps_at_antimeridian(grid: GridConfig) -> bool:
    """Is the target grid geographic and bounded by 180°E (so 0…360° sources must wrap)?"""
    return bool(CRS.from_user_input(grid.crs).is_geographic and grid.bounds[2] <= ANTIMERIDIAN)


def _source_info(dataset: DatasetConfig, facts: dict[str, Any]) -> SourceInfo:
    return SourceInfo(
        dataset=dataset.name,
        path=dataset.path,
        band=facts["band"],
        crs=CRS.from_wkt(facts["crs"]),
        transform=Affine(*facts["transform"]),
        width=facts["width"],
        height=facts["height"],
        dtype=facts["dtype"],
        nodata=facts["nodata"],
        block_shape=tuple(facts["block_shape"]),
        count=facts["count"],
        open_name=facts["open_name"],
        decisions=tuple(facts["decisions"]),
    )


# --------------------------------------------------------------------------- child side


class _Reject(Exception):
    """A reason this input cannot be used, phrased for the user."""


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _check_file(path: str) -> bytes:
    """File-system checks; returns the first bytes (to recognise a TIFF)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise _Reject("file does not exist") from None
    except NotADirectoryError:
        raise _Reject("file does not exist (a parent in the path is not a directory)") from None
    except PermissionError:
        raise _Reject("permission denied (cannot reach the file)") from None
    if stat.S_ISDIR(info.st_mode):
        raise _Reject("is a directory, expected a raster file")
    if not stat.S_ISREG(info.st_mode):
        raise _Reject(f"is {_file_kind(info.st_mode)}, expected a regular raster file")
    if in_pseudo_filesystem(os.path.realpath(path)):  # a symlink to /proc/<pid>/environ
        raise _Reject("is a kernel file (/proc, /sys), expected a regular raster file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except PermissionError:
        raise _Reject("permission denied (cannot read the file)") from None
    if info.st_size == 0:
        raise _Reject("file is empty (0 bytes)")
    return head


def _gdal_message(exc: BaseException, path: str) -> str:
    """The most specific GDAL message in an exception chain, on one line, minus the path.

    The problem line already names the file, so GDAL's own ``name.tif:`` prefix goes.
    """
    message = str(exc)
    cause = exc.__cause__
    while cause is not None:
        if str(cause):
            message = str(cause)
        cause = cause.__cause__
    for prefix in (f"{path}: ", f"{os.path.basename(path)}: "):
        message = message.removeprefix(prefix)
    return " ".join(message.split())


def _open_failure(path: str, head: bytes, exc: BaseException) -> _Reject:
    message = _gdal_message(exc, path)
    lowered = message.lower()
    if any(hint in lowered for hint in _ZERO_SIZE_HINTS):
        return _Reject(f"zero-size raster ({message})")
    if head.startswith(_TIFF_SIGNATURES):
        return _Reject(f"truncated or corrupt GeoTIFF: GDAL cannot open it ({message})")
    if "not recognized as being in a supported file format" in lowered:
        return _Reject("not a raster GDAL can read (unrecognised file format)")
    return _Reject(f"not a raster GDAL can read ({message})")


def _choose_band(count: int, band: int | None) -> int:
    if count == 0:
        raise _Reject("has no bands")
    if band is None:
        if count > 1:
            raise _Reject(f"has {count} bands: choose one with `band:` (1–{count})")
        return 1
    if band > count:
        plural = "s" if count > 1 else ""
        raise _Reject(f"band {band} is out of range (the file has {count} band{plural})")
    return band


def _check_nodata(value: float | None, dtype: str) -> None:
    if value is None:
        return
    kind = np.dtype(dtype)
    if kind.kind in "iu":
        limits = np.iinfo(kind)
        if (
            not math.isfinite(value)
            or not value.is_integer()
            or not (limits.min <= value <= limits.max)
        ):
            raise _Reject(f"nodata {value:g} does not fit its data type {dtype}")
    elif math.isfinite(value) and abs(value) > np.finfo(kind).max:
        raise _Reject(f"nodata {value:g} does not fit its data type {dtype}")


def _check_last_block(src: Any, path: str, band: int) -> None:
    """Prove the data is all there by looking at (and if cheap, decoding) the last block."""
    size = os.stat(path).st_size
    block_rows, block_cols = src.block_shapes[band - 1]
    row = math.ceil(src.height / block_rows) - 1
    col = math.ceil(src.width / block_cols) - 1
    if src.driver == "GTiff":
        offset = src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=band)
        length = src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=band)
        if offset and length and int(offset) + int(length) > size:
            raise _Reject(
                f"truncated GeoTIFF: its last block ends at byte {int(offset) + int(length):,} "
                f"but the file has {size:,} bytes"
            )
    if block_rows * block_cols > MAX_PROBE_BLOCK_CELLS:
        return
    try:
        src.read(band, window=src.block_window(band, row, col))
    except RasterioIOError as exc:
        reason = f"truncated or corrupt: its last block cannot be read ({_gdal_message(exc, path)})"
        raise _Reject(reason) from None


def _open(name: str, head: bytes) -> Any:
    try:
        return rasterio.open(name)
    except RasterioIOError as exc:
        if is_remote(name):
            raise _Reject(f"cannot open remote input ({_gdal_message(exc, name)})") from None
        raise _open_failure(name, head, exc) from None


def _variable_name(subdataset: str) -> str:
    """``NETCDF:"f.nc":tas`` → ``tas``; ``HDF5:"f.h5"://grp/tas`` → ``grp/tas``."""
    return subdataset.rsplit(":", 1)[-1].lstrip("/")


def _choose_variable(subdatasets: list[str], variable: str | None) -> str:
    names = [_variable_name(sub) for sub in subdatasets]
    if variable is None:
        raise _Reject(
            f"has {len(names)} variables: choose one with `variable:` ({', '.join(names)})"
        )
    for sub, name in zip(subdatasets, names, strict=True):
        if variable in (name, name.rsplit("/", 1)[-1]):
            return sub
    raise _Reject(f"variable {variable!r} is not in the file (variables: {', '.join(names)})")


def _time_labels(src: Any) -> list[str] | None:
    """ISO labels of each band's CF time (netCDF ``NETCDF_DIM_<time>``), or None.

    Decoded with xarray's CF decoder (standard calendars through pandas; other
    calendars need cftime, and the error says so).
    """
    tags = src.tags()
    extra = tags.get("NETCDF_DIM_EXTRA", "").strip("{}").split(",")
    dims = [d for d in extra if d and " since " in tags.get(f"{d}#units", "")]
    if len(dims) != 1:
        return None
    dim = dims[0]
    raw = [src.tags(b).get(f"NETCDF_DIM_{dim}") for b in range(1, src.count + 1)]
    if any(value is None for value in raw):
        return None
    from xarray.coding.times import decode_cf_datetime  # only files with a time axis pay

    try:
        times = decode_cf_datetime(
            np.asarray(raw, dtype="float64"),
            tags[f"{dim}#units"],
            tags.get(f"{dim}#calendar", "standard"),
        )
    except (ValueError, TypeError, ImportError) as exc:
        raise _Reject(f"cannot decode its time axis {dim!r} ({exc})") from None
    stamps = np.asarray(times, dtype="datetime64[s]")
    midnight = bool((stamps == stamps.astype("datetime64[D]")).all())
    return [str(v) for v in np.datetime_as_string(stamps, unit="D" if midnight else "s")]


def _choose_time(labels: list[str], wanted: str) -> int:
    try:
        target = np.datetime64(wanted)
    except ValueError:
        raise _Reject(f"time {wanted!r} is not an ISO date such as 2000-01-31") from None
    for index, label in enumerate(labels):
        if np.datetime64(label) == target:
            return index + 1
    raise _Reject(
        f"time {wanted!r} is not in the file ({len(labels)} time steps: {labels[0]} … {labels[-1]})"
    )


def _choose_band_or_time(src: Any, band: int | None, time_label: str | None) -> tuple[int, str]:
    """The band to read and how it was chosen (for the log)."""
    labels = _time_labels(src) if (time_label is not None or src.count > 1) else None
    if time_label is not None:
        if labels is None:
            raise _Reject(f"time {time_label!r} given but the file has no CF time axis")
        chosen = _choose_time(labels, time_label)
        return chosen, f"time {labels[chosen - 1]} (band {chosen})"
    if band is None and labels is not None and src.count > 1:
        raise _Reject(
            f"has {src.count} time steps ({labels[0]} … {labels[-1]}): "
            "choose one with `time:` (or `band:`)"
        )
    chosen = _choose_band(src.count, band)
    return chosen, f"band {chosen}"


def _effective_crs(src: Any, crs: str | None) -> CRS:
    if crs is not None:
        try:
            return CRS.from_user_input(crs)
        except Exception as exc:
            raise _Reject(f"crs {crs!r} is not a CRS GDAL accepts ({exc})") from None
    if src.crs is None:
        raise _Reject("has no CRS: assign one with `crs:` in its dataset entry (e.g. EPSG:4326)")
    return src.crs


def _adjusted(
    src: Any, name: str, band: int, crs: CRS, crs_given: bool, nodata: float | None,
    wrap_longitudes: bool,
) -> tuple[str, list[str]]:  # fmt: skip
    """The name every stage opens, and what was adjusted (a VRT document if anything)."""
    decisions = []
    scale, offset = src.scales[band - 1], src.offsets[band - 1]
    unpacking = Unpacking(scale, offset) if (scale, offset) != (1.0, 0.0) else None
    if unpacking is not None:
        decisions.append(f"unpacking values × {scale:g} + {offset:g}")
    if crs_given:
        decisions.append(f"CRS set to {crs.to_string()}")
    t = src.transform
    wrap = None
    north_up = t.b == 0 and t.d == 0 and t.a > 0 and t.e < 0
    if wrap_longitudes and crs.is_geographic and north_up:
        wrap = plan_wrap(t, src.width)
        if wrap is not None:
            decisions.append("wrapping longitudes 0…360 → −180…180")
        elif t.c + src.width * t.a > ANTIMERIDIAN + t.a / 2:
            raise _Reject(
                f"reaches {t.c + src.width * t.a:g}°E but its pixel size {t.a:g}° does not "
                "divide 360°, so it cannot be rewritten to −180…180°"
            )
    if unpacking is None and not crs_given and wrap is None:
        return name, decisions
    document = build_vrt(
        name, band, src.width, src.height, src.dtypes[band - 1], t, crs.to_wkt(), nodata,
        unpacking, wrap,
    )  # fmt: skip
    return document, decisions


def _probe(
    path: str,
    band: int | None,
    nodata: float | None,
    max_cells: int,
    crs: str | None = None,
    variable: str | None = None,
    time: str | None = None,
    wrap_longitudes: bool = False,
) -> dict[str, Any]:
    """Header facts of one input, or :class:`_Reject` with the reason."""
    local = local_file(path)
    head = _check_file(local) if local is not None else b""
    name = gdal_name(path)
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(_open(name, head))
        if src.subdatasets and (variable is not None or src.count == 0):
            name = _choose_variable(src.subdatasets, variable)
            src = stack.enter_context(_open(name, head))
        elif variable is not None:
            raise _Reject(f"variable {variable!r} given but the file has no variables")
        if src.width == 0 or src.height == 0:
            raise _Reject(f"zero-size raster ({src.width} × {src.height})")
        cells = src.width * src.height
        if cells > max_cells:
            raise _Reject(
                f"declared size {src.width:,} × {src.height:,} = {cells:,} cells exceeds "
                f"catalog.max_cells ({max_cells:,})"
            )
        chosen, how = _choose_band_or_time(src, band, time)
        dtype = src.dtypes[chosen - 1]
        if dtype not in SUPPORTED_DTYPES:
            raise _Reject(
                f"unsupported data type {dtype} (supported: {', '.join(SUPPORTED_DTYPES)})"
            )
        effective_crs = _effective_crs(src, crs)
        if src.transform.is_identity and not src.gcps[0]:
            raise _Reject("has no geotransform (pixel positions are unknown)")
        value = nodata if nodata is not None else src.nodatavals[chosen - 1]
        _check_nodata(value, dtype)
        if local is not None and local == path:
            _check_last_block(src, path, chosen)
        open_name, decisions = _adjusted(
            src, name, chosen, effective_crs, crs is not None, value, wrap_longitudes
        )
        if time is not None:
            decisions.insert(0, f"reading {how}")
        if open_name != name:  # the facts of what the stages will actually read
            src = stack.enter_context(rasterio.open(open_name))
            chosen, value = 1, src.nodatavals[0]
        return {
            "band": chosen,
            "crs": effective_crs.to_wkt(),
            "crs_name": effective_crs.to_string(),  # EPSG:4326 where it has a code
            "transform": list(src.transform)[:6],
            "width": src.width,
            "height": src.height,
            "dtype": src.dtypes[chosen - 1],
            "nodata": value,
            "block_shape": list(src.block_shapes[chosen - 1]),
            "count": src.count,
            "open_name": open_name,
            "decisions": decisions,
        }


def _serve(requests: IO[str], answers: IO[bytes]) -> None:
    """Answer one JSON request per line until stdin closes."""
    warnings.simplefilter("ignore")  # NotGeoreferencedWarning & co. become reasons, not noise

    def send(message: Any) -> None:
        answers.write((json.dumps(message) + "\n").encode())
        answers.flush()

    send(READY)
    for line in requests:
        request = json.loads(line)
        try:
            send({"ok": _probe(**request)})
        except _Reject as exc:
            send({"error": str(exc)})
        except Exception as exc:  # an unforeseen GDAL failure is still one line
            detail = _gdal_message(exc, request["path"])
            send({"error": f"inspection failed: {type(exc).__name__}: {detail}"})


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this child when its parent dies, so it is never orphaned.

    The child ignores the signals its parent handles, so without this a child
    stuck in GDAL would outlive a killed worker. Where prctl is unavailable the
    child still exits at end of input once it is free to read again.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        sys.exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.catalog",
        description="Inspection child of the geod catalog (started by pipeline.catalog).",
    )
    parser.add_argument("--serve", action="store_true", required=True)
    parser.add_argument("--parent", type=int, required=True, help="pid of the inspecting process")
    args = parser.parse_args(argv)
    for signum in PARENT_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    _die_with_parent(args.parent)
    # The protocol gets a private copy of stdout; fd 1 then points at stderr so a
    # stray print from C code cannot corrupt an answer.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _serve(sys.stdin, answers)


if __name__ == "__main__":
    main()
