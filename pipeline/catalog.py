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
import selectors
import signal
import stat
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError

from pipeline.config import in_pseudo_filesystem
from pipeline.source import SourceInfo

if TYPE_CHECKING:  # annotations only: the inspection child skips importing pydantic
    from pipeline.config import CatalogConfig, DatasetConfig, PipelineConfig

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

#: The child imports GDAL before it can answer; a cold start is not the input's
#: fault, so it gets its own allowance rather than the per-file timeout.
STARTUP_TIMEOUT = 60.0

#: How long to wait for a killed child to be reaped (it may be stuck in the kernel
#: on a dead mount; then it is left behind rather than hanging the run).
REAP_TIMEOUT = 5.0

#: Signals a worker's process group receives for the worker itself (Ctrl-C, a
#: graceful stop, pause/resume): the child ignores them, or a cooperative stop
#: would kill it mid-inspection and look like a bad input.
PARENT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_ZERO_SIZE_HINTS = ("invalid dataset dimensions", "zero scanline size", "zero width", "zero height")
_READY = "ready"
_REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Problem:
    """One bad dataset: what, where and why."""

    dataset: str
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.dataset} ({self.path}): {self.reason}"


class CatalogError(Exception):
    """One or more inputs failed inspection; ``problems`` lists each, the message is one line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def inspect(dataset: DatasetConfig, config: CatalogConfig) -> SourceInfo:
    """Header facts of one dataset, or :class:`CatalogError` with the reason."""
    with _Prober(config) as prober:
        result = prober.probe(dataset)
    if isinstance(result, Problem):
        raise CatalogError([result])
    return result


def inspect_all(config: PipelineConfig) -> list[SourceInfo]:
    """Inspect every dataset; raises one :class:`CatalogError` naming every bad one."""
    infos: list[SourceInfo] = []
    problems: list[Problem] = []
    with _Prober(config.catalog) as prober:
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


class _Prober:
    """A long-lived inspection child; killed and replaced when a request times out."""

    def __init__(self, config: CatalogConfig) -> None:
        self._config = config
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""

    def __enter__(self) -> _Prober:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop(kill=False)

    def probe(self, dataset: DatasetConfig) -> SourceInfo | Problem:
        def problem(reason: str) -> Problem:
            return Problem(dataset.name, dataset.path, reason)

        if self._proc is None:
            self._start()
        request = {
            "path": str(dataset.path),
            "band": dataset.band,
            "nodata": dataset.nodata,
            "max_cells": self._config.max_cells,
        }
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        try:
            proc.stdin.write((json.dumps(request) + "\n").encode())
            proc.stdin.flush()
            line = self._read_line(self._config.timeout)
        except BrokenPipeError:
            line = None
        if line is None:
            returncode = proc.poll()
            self._stop(kill=True)
            if returncode is None:
                return problem(
                    f"header inspection timed out after {self._config.timeout:g} s "
                    "(GDAL did not answer; the inspecting process was killed)"
                )
            if returncode < 0:
                name = signal.Signals(-returncode).name
                return problem(f"GDAL crashed reading the header (inspecting process got {name})")
            return problem(f"the inspecting process died (exit code {returncode})")
        answer = json.loads(line)
        if "error" in answer:
            return problem(answer["error"])
        return _source_info(dataset, answer["ok"])

    def _start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p
        )
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.catalog", "--serve", "--parent", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self._buffer = b""
        line = self._read_line(max(STARTUP_TIMEOUT, self._config.timeout))
        if line is None or json.loads(line) != _READY:
            self._stop(kill=True)
            raise RuntimeError(
                f"catalog: the inspection process did not start within {STARTUP_TIMEOUT:g} s"
            )

    def _read_line(self, timeout: float) -> str | None:
        """One line from the child, or None on timeout or end of stream."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    return None
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def _stop(self, kill: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if kill:
            proc.kill()
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(REAP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(REAP_TIMEOUT)
        assert proc.stdout is not None
        proc.stdout.close()


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


def _probe(path: str, band: int | None, nodata: float | None, max_cells: int) -> dict[str, Any]:
    """Header facts of one input, or :class:`_Reject` with the reason."""
    head = _check_file(path)
    try:
        src = rasterio.open(path)
    except RasterioIOError as exc:
        raise _open_failure(path, head, exc) from None
    with src:
        if src.width == 0 or src.height == 0:
            raise _Reject(f"zero-size raster ({src.width} × {src.height})")
        cells = src.width * src.height
        if cells > max_cells:
            raise _Reject(
                f"declared size {src.width:,} × {src.height:,} = {cells:,} cells exceeds "
                f"catalog.max_cells ({max_cells:,})"
            )
        chosen = _choose_band(src.count, band)
        dtype = src.dtypes[chosen - 1]
        if dtype not in SUPPORTED_DTYPES:
            raise _Reject(
                f"unsupported data type {dtype} (supported: {', '.join(SUPPORTED_DTYPES)})"
            )
        if src.crs is None:
            raise _Reject("has no CRS (assign one, e.g. gdal_edit.py -a_srs EPSG:4326)")
        if src.transform.is_identity and not src.gcps[0]:
            raise _Reject("has no geotransform (pixel positions are unknown)")
        value = nodata if nodata is not None else src.nodatavals[chosen - 1]
        _check_nodata(value, dtype)
        _check_last_block(src, path, chosen)
        return {
            "band": chosen,
            "crs": src.crs.to_wkt(),
            "transform": list(src.transform)[:6],
            "width": src.width,
            "height": src.height,
            "dtype": dtype,
            "nodata": value,
            "block_shape": list(src.block_shapes[chosen - 1]),
            "count": src.count,
        }


def _serve(requests: IO[str], answers: IO[bytes]) -> None:
    """Answer one JSON request per line until stdin closes."""
    warnings.simplefilter("ignore")  # NotGeoreferencedWarning & co. become reasons, not noise

    def send(message: Any) -> None:
        answers.write((json.dumps(message) + "\n").encode())
        answers.flush()

    send(_READY)
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
