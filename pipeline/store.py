"""Resampled layers in one chunked Zarr v3 store, with a completion manifest as checkpoint.

Layout (``root`` is e.g. ``runs/work/layers.zarr``)::

    zarr.json                  group: grid CRS (WKT), geotransform, size, chunk
    x/, y/                     1-D cell-centre coordinates (xarray opens the store as is)
    <layer>/zarr.json          one 2-D array per dataset, dims (y, x), chunk × chunk
    <layer>/c/<row>/<col>      chunk files (zstd), absent where all nodata
    <layer>/geod-manifest.tsv  "row col checksum" per completed chunk, append-only

Why a manifest rather than "the chunk file exists": zarr writes each chunk to a
temporary name and renames it (atomic against a crash of this process), but it
does not fsync, and an all-nodata chunk has no file at all. A chunk counts as
complete only once its file (or its absence) has been fsynced and *then* its
line, with a checksum of the file's bytes, has been appended and fsynced. A
chunk whose line is missing is recomputed; a crash can therefore cost at most
the window in flight, never publish a partial one.

A manifest line that does not parse (a torn append, a damaged disk) makes the
store re-verify that layer (:meth:`LayerStore.verify`): every listed chunk is
re-read, its checksum compared and its data decoded, and the manifest is
rewritten atomically with only the good chunks.

Each layer records the fingerprint of what produced it (dataset config, source
header, grid, chunk). A different fingerprint means the checkpoint describes
other data, so the layer is reset rather than trusted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr
from rasterio.windows import Window
from zarr.storage import LocalStore

from pipeline.durable import fsync_path, write_atomic
from pipeline.grid import TargetGrid

log = logging.getLogger("geod.store")

MANIFEST_NAME = "geod-manifest.tsv"
#: Attribute keys on each layer array.
FINGERPRINT_ATTR = "geod_fingerprint"
NODATA_ATTR = "geod_nodata"
#: Coordinate arrays in the group; no layer may take these names.
COORDINATE_NAMES = ("x", "y")
#: Checksum recorded for a chunk zarr did not write because it is all fill value.
EMPTY_CHUNK = "-"
#: Suffix of zarr's temporary chunk files (zarr.storage LocalStore writes, then renames).
PARTIAL_SUFFIX = ".partial"
#: Chunk files fsynced concurrently: independent fsyncs overlap in the journal
#: (64 chunk files here: 0.32 s one after another, 0.03 s with 8 threads).
FSYNC_THREADS = 8
#: Chunks zarr's codec pipeline encodes per batch (its default, 1, runs each chunk of
#: a window through its own round of asyncio tasks). The bytes written are the same;
#: a window's 32–64 chunks in one batch cost ~10 % less CPU in the store's writes.
CODEC_BATCH_CHUNKS = 64
#: blake2b digest size: 16 bytes is ample to catch torn or foreign chunk files.
DIGEST_BYTES = 16


zarr.config.set({"codec_pipeline.batch_size": CODEC_BATCH_CHUNKS})


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).hexdigest()


def _durable_checksum(path: Path) -> str:
    """Checksum of a chunk file after fsyncing it; :data:`EMPTY_CHUNK` if zarr wrote none."""
    try:
        with open(path, "rb") as handle:
            checksum = _digest(handle.read())
            os.fsync(handle.fileno())
    except FileNotFoundError:
        return EMPTY_CHUNK
    return checksum


#: A window's chunks as written: (chunk row, chunk column) and the checksum of its bytes.
ChunkLines = list[tuple[tuple[int, int], str]]

_fsync_lock = threading.Lock()
_fsync_threads: ThreadPoolExecutor | None = None


def _fsync_pool() -> ThreadPoolExecutor:
    """This process's threads that fsync chunk files, started on the first write and kept
    (a pool per window started and joined 8 threads each time: ~0.1 s of CPU in 24)."""
    global _fsync_threads
    with _fsync_lock:
        if _fsync_threads is None:
            _fsync_threads = ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="geod-fsync")
        return _fsync_threads


def chunks_of(window: Window, chunk: int) -> list[tuple[int, int]]:
    """Keys of the store chunks a window covers."""
    row0, col0 = int(window.row_off), int(window.col_off)
    row1, col1 = row0 + int(window.height), col0 + int(window.width)
    return [
        (r, k)
        for r in range(row0 // chunk, -(-row1 // chunk))
        for k in range(col0 // chunk, -(-col1 // chunk))
    ]


def chunk_path(root: Path, name: str, key: tuple[int, int]) -> Path:
    """Where zarr keeps a layer's chunk."""
    return root / name / "c" / str(key[0]) / str(key[1])


class ChunkWriter:
    """Writes a window into its layer's chunk files, durably, and returns their checksums.

    The write half of :meth:`LayerStore.write_window`, apart so it can run where
    the window was computed: a Dask task writes its window's chunks itself (the
    store's directory on a filesystem the workers share) and hands the run's
    worker only the checksums, which it records in grid order, so one writer
    no longer bounds a cluster. Chunks written but not yet recorded are
    rewritten on resume, like any chunk the manifest does not list. Pickles as
    its path and chunk size; the store is opened on first use in each process.
    """

    def __init__(self, root: Path, chunk: int, group: zarr.Group | None = None) -> None:
        self.root, self.chunk = Path(root), chunk
        self._group = group

    def __getstate__(self) -> dict[str, object]:
        return {"root": self.root, "chunk": self.chunk}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.root, self.chunk = Path(str(state["root"])), int(str(state["chunk"]))
        self._group = None

    def write(self, name: str, window: Window, data: np.ndarray) -> ChunkLines:
        """Write the window's values and fsync its chunk files and their directories."""
        shape = (int(window.height), int(window.width))
        if data.shape != shape:
            raise ValueError(f"data of shape {data.shape} does not fit window {window}")
        if self._group is None:
            self._group = zarr.open_group(store=LocalStore(self.root), mode="r+")
        row0, col0 = int(window.row_off), int(window.col_off)
        self._group[name][row0 : row0 + shape[0], col0 : col0 + shape[1]] = data  # type: ignore[index]
        keys = chunks_of(window, self.chunk)
        paths = [chunk_path(self.root, name, key) for key in keys]
        pool = _fsync_pool()
        lines = list(zip(keys, pool.map(_durable_checksum, paths), strict=True))
        directories = {self.root / name, self.root / name / "c"} | {p.parent for p in paths}
        list(pool.map(fsync_path, [d for d in directories if d.exists()]))
        return lines


class LayerStore:
    """Chunked layers on a :class:`TargetGrid`; ``chunk`` is ``memory.min_window``."""

    def __init__(self, root: Path, grid: TargetGrid, chunk: int) -> None:
        self.root = Path(root)
        self.grid = grid
        self.chunk = chunk
        self.root.mkdir(parents=True, exist_ok=True)
        self._group = zarr.open_group(store=LocalStore(self.root), mode="a", zarr_format=3)
        self._done: dict[str, dict[tuple[int, int], str]] = {}
        self.writer = ChunkWriter(self.root, chunk, self._group)
        self._ensure_grid()

    # -- grid metadata --------------------------------------------------------------

    def _grid_attrs(self) -> dict[str, object]:
        t = self.grid.transform
        return {
            "crs_wkt": self.grid.crs.to_wkt(),
            "geotransform": [t.c, t.a, t.b, t.f, t.d, t.e],
            "width": self.grid.width,
            "height": self.grid.height,
            "chunk": self.chunk,
        }

    def _ensure_grid(self) -> None:
        """Record the grid and write x/y coordinates once (again if the grid changed)."""
        attrs = self._grid_attrs()
        if dict(self._group.attrs).get("geod_grid") == attrs:
            return
        full = Window(0, 0, self.grid.width, self.grid.height)
        xs, ys = self.grid.cell_centers(full)
        for name, values in (("x", xs), ("y", ys)):
            array = self._group.create_array(
                name,
                shape=values.shape,
                dtype="float64",
                chunks=values.shape,
                dimension_names=(name,),
                overwrite=True,
            )
            array[:] = values
        self._group.attrs["geod_grid"] = attrs

    # -- layers ---------------------------------------------------------------------

    def _array(self, name: str) -> zarr.Array:
        return self._group[name]  # type: ignore[return-value]

    def _manifest(self, name: str) -> Path:
        return self.root / name / MANIFEST_NAME

    def ensure_layer(self, name: str, dtype: str, nodata: float | None, fingerprint: str) -> None:
        """Open a layer, creating or resetting it when its fingerprint differs."""
        if name in COORDINATE_NAMES:
            raise ValueError(f"layer name {name!r} is reserved for grid coordinates")
        if name in self._group:
            array = self._array(name)
            if (
                array.attrs.get(FINGERPRINT_ATTR) == fingerprint
                and np.dtype(array.dtype) == np.dtype(dtype)
                and array.shape == (self.grid.height, self.grid.width)
            ):
                self._remove_partials(name)
                self._load_manifest(name)
                return
            log.warning(
                "layer %s was produced from other inputs or settings; discarding its %d chunks",
                name,
                len(self._read_manifest(name)[0]),
                extra={"dataset": name},
            )
        # Drop the old completion record before the data, so a crash in between
        # can never leave old checksums next to a new array.
        self._manifest(name).unlink(missing_ok=True)
        fill = float("nan") if np.dtype(dtype).kind == "f" else nodata
        self._group.create_array(
            name,
            shape=(self.grid.height, self.grid.width),
            chunks=(self.chunk, self.chunk),
            dtype=dtype,
            fill_value=fill if fill is not None else 0,
            dimension_names=("y", "x"),
            attributes={FINGERPRINT_ATTR: fingerprint, NODATA_ATTR: fill},
            overwrite=True,
        )
        write_atomic(self._manifest(name), "")
        self._done[name] = {}

    def _remove_partials(self, name: str) -> None:
        """Delete chunk temp files a killed writer left (zarr renames them into place)."""
        for leftover in (self.root / name / "c").rglob(f"*{PARTIAL_SUFFIX}"):
            leftover.unlink(missing_ok=True)

    def layer_names(self) -> list[str]:
        """Layers in this store (arrays written by :meth:`ensure_layer`), sorted."""
        return sorted(
            key
            for key, member in self._group.members()
            if isinstance(member, zarr.Array) and FINGERPRINT_ATTR in member.attrs
        )

    def layer_info(self, name: str) -> tuple[str, float | None]:
        """dtype and nodata of a layer (NaN for float layers)."""
        array = self._array(name)
        nodata = array.attrs.get(NODATA_ATTR)
        return str(np.dtype(array.dtype)), None if nodata is None else float(nodata)

    # -- chunks ---------------------------------------------------------------------

    def _chunks_of(self, window: Window) -> list[tuple[int, int]]:
        return chunks_of(window, self.chunk)

    def _check_window(self, window: Window) -> None:
        """Windows written must cover whole chunks (clipped only at the grid edge)."""
        c = self.chunk
        row0, col0 = int(window.row_off), int(window.col_off)
        row1, col1 = row0 + int(window.height), col0 + int(window.width)
        ok = (
            row0 % c == 0
            and col0 % c == 0
            and (row1 % c == 0 or row1 == self.grid.height)
            and (col1 % c == 0 or col1 == self.grid.width)
            and 0 <= row0 < row1 <= self.grid.height
            and 0 <= col0 < col1 <= self.grid.width
        )
        if not ok:
            raise ValueError(f"window {window} is not aligned to {c}-pixel store chunks")

    def _chunk_path(self, name: str, key: tuple[int, int]) -> Path:
        return chunk_path(self.root, name, key)

    def _entries(self, name: str) -> dict[tuple[int, int], str]:
        """The layer's completed chunks, reading its manifest on first use.

        ``ensure_layer`` loads it for the resample stage; a store opened by a
        later stage alone (export, validation) loads it here, checked the same way.
        """
        if name not in self._done:
            self._load_manifest(name)
        return self._done[name]

    def is_complete(self, name: str, window: Window) -> bool:
        done = self._entries(name)
        return all(key in done for key in self._chunks_of(window))

    def write_window(self, name: str, window: Window, data: np.ndarray) -> None:
        """Write a window, make its chunks durable, then mark them complete."""
        self._check_window(window)
        self.record(name, self.writer.write(name, window, data))

    def record(self, name: str, lines: ChunkLines) -> None:
        """Mark a window's durable chunks complete (written here, or by a Dask task)."""
        with open(self._manifest(name), "a") as handle:
            handle.write("".join(f"{r} {k} {checksum}\n" for (r, k), checksum in lines))
            handle.flush()
            os.fsync(handle.fileno())
        self._entries(name).update(lines)

    def read_window(self, name: str, window: Window) -> np.ndarray:
        """The window's values (nodata where never written); reads only its chunks."""
        row0, col0 = int(window.row_off), int(window.col_off)
        return np.asarray(
            self._array(name)[row0 : row0 + int(window.height), col0 : col0 + int(window.width)]
        )

    def completed(self, name: str) -> int:
        return len(self._entries(name))

    def total_chunks(self) -> int:
        rows, cols = self.grid.chunk_grid(self.chunk)
        return rows * cols

    # -- manifest -------------------------------------------------------------------

    def _read_manifest(self, name: str) -> tuple[dict[tuple[int, int], str], int]:
        """Parsed entries and the number of lines that did not parse."""
        path = self._manifest(name)
        if not path.exists():
            return {}, 0
        rows, cols = self.grid.chunk_grid(self.chunk)
        entries: dict[tuple[int, int], str] = {}
        bad = 0
        text = path.read_bytes().decode("utf-8", errors="replace")
        lines = text.split("\n")
        # Everything after the last newline is a torn append (or empty).
        complete, tail = lines[:-1], lines[-1]
        bad += 1 if tail else 0
        for line in complete:
            parts = line.split(" ")
            try:
                row, col, checksum = int(parts[0]), int(parts[1]), parts[2]
                valid = (
                    len(parts) == 3
                    and 0 <= row < rows
                    and 0 <= col < cols
                    and (checksum == EMPTY_CHUNK or len(checksum) == 2 * DIGEST_BYTES)
                )
                if checksum != EMPTY_CHUNK:
                    int(checksum, 16)
            except (ValueError, IndexError):
                valid = False
            if valid:
                entries[(row, col)] = checksum
            else:
                bad += 1
        return entries, bad

    def _load_manifest(self, name: str) -> None:
        entries, bad = self._read_manifest(name)
        if bad:
            log.warning(
                "layer %s: %d damaged line(s) in the chunk manifest; re-verifying chunks",
                name,
                bad,
                extra={"dataset": name},
            )
            self._done[name] = entries
            self.verify(name)
            return
        # A listed chunk whose file no longer has its recorded checksum (a damaged
        # disk, a truncated copy) would fail or corrupt the merge much later: check
        # the bytes now (hashing only, no decoding) and re-verify the layer if any differ.
        mismatched = sum(
            1 for key, checksum in entries.items() if not self._bytes_match(name, key, checksum)
        )
        if mismatched:
            log.warning(
                "layer %s: %d chunk file(s) differ from their manifest checksum; "
                "re-verifying chunks",
                name,
                mismatched,
                extra={"dataset": name},
            )
            self._done[name] = entries
            self.verify(name)
            return
        self._done[name] = entries

    def _bytes_match(self, name: str, key: tuple[int, int], checksum: str) -> bool:
        path = self._chunk_path(name, key)
        if checksum == EMPTY_CHUNK:
            return not path.exists()
        try:
            return _digest(path.read_bytes()) == checksum
        except OSError:
            return False

    def _chunk_ok(self, name: str, key: tuple[int, int], checksum: str) -> bool:
        path = self._chunk_path(name, key)
        if checksum == EMPTY_CHUNK:
            return not path.exists()
        try:
            if _digest(path.read_bytes()) != checksum:
                return False
            c = self.chunk
            self._array(name)[key[0] * c : (key[0] + 1) * c, key[1] * c : (key[1] + 1) * c]
        except Exception:  # any read or decode failure means the chunk is not usable
            return False
        return True

    def verify(self, name: str) -> int:
        """Re-check every chunk the manifest lists; keep the good ones; return their count."""
        entries, bad = self._read_manifest(name)
        good = {key: value for key, value in entries.items() if self._chunk_ok(name, key, value)}
        dropped = len(entries) - len(good)
        if bad or dropped:
            log.warning(
                "layer %s: kept %d verified chunks, dropped %d bad chunk(s) and %d bad line(s)",
                name,
                len(good),
                dropped,
                bad,
                extra={"dataset": name},
            )
        text = "".join(f"{r} {k} {checksum}\n" for (r, k), checksum in sorted(good.items()))
        write_atomic(self._manifest(name), text)
        self._done[name] = good
        return len(good)


class StoreReader:
    """A read-only view of a layer store by its path: picklable, opened lazily per process.

    Merge blocks computed on a Dask worker read the layers through this (the
    store's directory must be on a filesystem the workers share); it never
    writes, never reads the manifest (the run's worker checks completeness
    before it hands out a block) and pickles as its path alone.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._group: zarr.Group | None = None

    def __getstate__(self) -> dict[str, object]:
        return {"root": self.root}

    def __setstate__(self, state: dict[str, Path]) -> None:
        self.root = state["root"]
        self._group = None

    def read_window(self, name: str, window: Window) -> np.ndarray:
        """The window's values (nodata where never written), as LayerStore.read_window."""
        if self._group is None:
            self._group = zarr.open_group(store=LocalStore(self.root, read_only=True), mode="r")
        row0, col0 = int(window.row_off), int(window.col_off)
        array = self._group[name]
        return np.asarray(
            array[row0 : row0 + int(window.height), col0 : col0 + int(window.width)]  # type: ignore[index]
        )
