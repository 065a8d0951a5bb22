"""Dataset ``glob:`` entries: one config entry standing for every matching raster.

A dataset entry may give ``glob: layers/*.tif`` instead of ``path:`` (relative to
the config file, ``**`` for any depth, or a GDAL ``/vsi…`` path). At load time,
so at submission for the daemon, it becomes one ordinary dataset per matching
file, named after the file stem (sanitised into a valid dataset name), sorted
by name, each carrying the entry's other keys (``resampling``, ``crs``,
``variable``…). The frozen run config therefore lists plain datasets: a run
never sees files that arrive after it was submitted. Two files whose names
sanitise to the same dataset name (``a-b.tif`` and ``a_b.tif`` in two folders),
or a file named like an explicit dataset, are an error naming both; so is a
pattern that matches nothing, because a silently empty input set is worse than
a refused run.

Local patterns are expanded with :mod:`glob` (hidden files such as a copy's
``.name.tif.part`` are not matched). ``/vsi…`` patterns are listed through
GDAL's own virtual file system (``VSIReadDirRecursive`` in the libgdal rasterio
loaded), so ``/vsizip/`` archives, ``/vsis3/`` buckets and the rest list as GDAL
sees them; GDAL is imported only when such a pattern is used.
"""

from __future__ import annotations

import ctypes
import fnmatch
import glob as globbing
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.source_names import VSI_PREFIX

#: Characters a dataset name may not hold become this one.
_REPLACEMENT = "_"
_INVALID = re.compile(r"[^A-Za-z0-9_\-]")
#: Longest dataset name (NAME_PATTERN in pipeline.config allows 63 characters).
MAX_NAME_CHARS = 63
_MAGIC = re.compile(r"[*?\[]")


class GlobError(ValueError):
    """A glob entry that cannot be expanded, phrased as one line (without the file prefix)."""


@dataclass(frozen=True)
class Expansion:
    """What one ``glob:`` entry became: its index in the config and its datasets in order."""

    index: int
    pattern: str
    datasets: tuple[tuple[str, str], ...]  # (name, path)


@dataclass
class Expanded:
    """The datasets list with globs replaced, and where each new entry came from."""

    datasets: list[Any]
    expansions: list[Expansion] = field(default_factory=list)
    #: index in the expanded list → index of the entry in the file (for error messages).
    origin: dict[int, int] = field(default_factory=dict)


def dataset_name(file_name: str) -> str:
    """A valid dataset name from a file name: its stem, invalid characters as ``_``.

    ``2020-tree cover.tif`` → ``_2020-tree_cover`` (a name must start with a
    letter or ``_``), ``tas.2020.tif`` → ``tas_2020``; cut to :data:`MAX_NAME_CHARS`.
    """
    stem = PurePosixPath(file_name).stem
    name = _INVALID.sub(_REPLACEMENT, stem) or _REPLACEMENT
    if not (name[0].isalpha() or name[0] == "_"):
        name = _REPLACEMENT + name
    return name[:MAX_NAME_CHARS]


def _local_matches(pattern: str, base: Path) -> list[str]:
    full = pattern if os.path.isabs(pattern) else str(base / pattern)
    return [
        str(Path(p).resolve()) for p in globbing.glob(full, recursive=True) if os.path.isfile(p)
    ]


def _gdal_library() -> ctypes.CDLL:
    """The libgdal rasterio has loaded (a wheel bundles its own copy), for VSI listing."""
    import rasterio._base  # noqa: F401 - loads libgdal into this process

    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if os.path.basename(path).startswith("libgdal"):
                return ctypes.CDLL(path)
    return ctypes.CDLL("libgdal.so")


def vsi_listing(directory: str) -> list[str]:
    """Every file below a GDAL virtual directory, as paths relative to it.

    GDAL marks nothing as a directory in this listing, so entries that are
    prefixes of others are dropped (a zip's folder, an S3 common prefix).
    """
    gdal = _gdal_library()
    gdal.VSIReadDirRecursive.restype = ctypes.POINTER(ctypes.c_char_p)
    gdal.VSIReadDirRecursive.argtypes = [ctypes.c_char_p]
    gdal.CSLDestroy.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
    listing = gdal.VSIReadDirRecursive(directory.encode())
    names: list[str] = []
    if listing:
        index = 0
        while listing[index] is not None:
            names.append(listing[index].decode())
            index += 1
        gdal.CSLDestroy(listing)
    entries = {name.rstrip("/") for name in names}
    return sorted(name for name in entries if not any(o.startswith(name + "/") for o in entries))


def _vsi_matches(pattern: str) -> list[str]:
    """Matches of a ``/vsi…`` pattern, segment by segment (``*`` never crosses a ``/``)."""
    parts = pattern.split("/")
    first_magic = next(i for i, part in enumerate(parts) if _MAGIC.search(part))
    directory = "/".join(parts[:first_magic])
    wanted = parts[first_magic:]
    if "**" in wanted:
        raise GlobError(f"{pattern}: '**' is supported for local paths only, not /vsi paths")
    found = []
    for relative in vsi_listing(directory):
        segments = relative.split("/")
        if len(segments) == len(wanted) and all(
            fnmatch.fnmatchcase(s, w) for s, w in zip(segments, wanted, strict=True)
        ):
            found.append(f"{directory}/{relative}")
    return found


def matches(pattern: str, base: Path) -> list[str]:
    """Files a pattern matches (local: absolute and resolved; VSI: as GDAL names them)."""
    if pattern.startswith(VSI_PREFIX):
        if not _MAGIC.search(pattern):
            return [pattern]
        return _vsi_matches(pattern)
    return _local_matches(pattern, base)


def expand(datasets: Any, base: Path) -> Expanded:
    """Replace each ``glob:`` entry of a raw ``datasets:`` list by its datasets.

    Anything that is not a list of mappings is returned unchanged for the
    model's validation to phrase.
    """
    if not isinstance(datasets, list) or not any(
        isinstance(e, dict) and "glob" in e for e in datasets
    ):
        return Expanded(datasets)
    explicit = {
        e["name"]: i
        for i, e in enumerate(datasets)
        if isinstance(e, dict) and "glob" not in e and isinstance(e.get("name"), str)
    }
    out = Expanded([])
    taken: dict[str, str] = {}  # name → file it came from
    for index, entry in enumerate(datasets):
        if not (isinstance(entry, dict) and "glob" in entry):
            out.origin[len(out.datasets)] = index
            out.datasets.append(entry)
            continue
        out.expansions.append(_expand_entry(index, entry, base, explicit, taken, out))
    return out


def _expand_entry(
    index: int,
    entry: dict[str, Any],
    base: Path,
    explicit: dict[str, int],
    taken: dict[str, str],
    out: Expanded,
) -> Expansion:
    where = f"datasets[{index}]"
    pattern = entry["glob"]
    if not isinstance(pattern, str) or not pattern:
        raise GlobError(f"{where}.glob: expected a file pattern such as layers/*.tif")
    for key in ("path", "name"):
        if key in entry:
            raise GlobError(
                f"{where}.{key}: a glob: entry takes its datasets' paths and names from the "
                "matching files; remove one of glob: and path:"
                if key == "path"
                else f"{where}.name: a glob: entry names its datasets after the matching files"
            )
    files = matches(pattern, base)
    if not files:
        raise GlobError(f"{where}.glob: {pattern} matches no file")
    named = sorted((dataset_name(PurePosixPath(f).name), f) for f in files)
    for name, path in named:
        if name in explicit:
            raise GlobError(
                f"{where}.glob: {path} becomes dataset {name!r}, the name of "
                f"datasets[{explicit[name]}]"
            )
        if name in taken:
            first, second = sorted((taken[name], path))
            raise GlobError(f"{where}.glob: {first} and {second} both become dataset {name!r}")
        taken[name] = path
    rest = {k: v for k, v in entry.items() if k != "glob"}
    for name, path in named:
        out.origin[len(out.datasets)] = index
        out.datasets.append({"name": name, "path": path, **rest})
    return Expansion(index, pattern, tuple(named))
