"""How a configured ``path:`` maps to what GDAL opens (kept free of GDAL imports).

``pipeline.config`` uses these to validate paths, and it is imported by the
supervisor, which must not load GDAL just to check a config.
"""

from __future__ import annotations

import re
from pathlib import Path

#: URL schemes GDAL reads through ``/vsicurl/`` (range requests, no download).
REMOTE_SCHEMES = ("http://", "https://")
#: GDAL virtual file systems (``/vsicurl/``, ``/vsis3/``, ``/vsizip/`` ...).
VSI_PREFIX = "/vsi"
#: ``DRIVER:"file":variable`` (GDAL's subdataset syntax, e.g. ``NETCDF:"x.nc":tas``).
SUBDATASET_SYNTAX = re.compile(r'^(?P<driver>[A-Za-z0-9_]+):"(?P<file>[^"]+)":(?P<rest>.*)$')


def is_remote(path: str | Path) -> bool:
    """Is ``path`` a URL or a GDAL virtual file system path (no local file to check)?"""
    text = str(path)
    return text.startswith(REMOTE_SCHEMES) or text.startswith(VSI_PREFIX)


def gdal_name(path: str | Path) -> str:
    """The name GDAL opens for a configured path: URLs go through ``/vsicurl/``."""
    text = str(path)
    return f"/vsicurl/{text}" if text.startswith(REMOTE_SCHEMES) else text


def local_file(path: str | Path) -> str | None:
    """The local file behind a path (the file of ``NETCDF:"file":var``), or None if remote."""
    text = str(path)
    match = SUBDATASET_SYNTAX.match(text)
    if match:
        text = match.group("file")
    return None if is_remote(text) else text


def resolve_path(path: str | Path, base: Path) -> str | Path:
    """A configured path made absolute against the config's folder (URLs stay as they are)."""
    if is_remote(path):
        return str(path)
    match = SUBDATASET_SYNTAX.match(str(path))
    if match:
        inner = match.group("file")
        if not is_remote(inner):
            inner = str((base / inner).resolve())
        return f'{match.group("driver")}:"{inner}":{match.group("rest")}'
    return (base / path).resolve()
