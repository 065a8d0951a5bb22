"""Remote inputs: a COG over loopback HTTP with range requests, a 404, a stalled server.

The server is a small range-capable handler written here (Python's
``http.server`` serves whole files only); GDAL reads the COG through
``/vsicurl/`` exactly as it would from an object store.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from pipeline.catalog import CatalogError, inspect
from pipeline.config import CatalogConfig, DatasetConfig, parse_config
from pipeline.grid import TargetGrid
from tests.test_resample import make_config, make_context, read_layer, run_dataset

#: Path on the test server that never answers (the catalog's timeout must fire).
STALL_PATH = "/stall.tif"
#: Long enough to outlast the catalog timeout below; the handler thread is a daemon.
STALL_SECONDS = 60.0
CATALOG_TIMEOUT = 4.0
GRID = {"resolution": 1.0, "bounds": [-20, 30, 20, 60]}


class RangeHandler(BaseHTTPRequestHandler):
    """GET/HEAD of files under ``root`` with single-range ``Range: bytes=a-b`` support."""

    root: Path
    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        return

    def _file(self) -> Path | None:
        if self.path == STALL_PATH:
            time.sleep(STALL_SECONDS)
            return None
        candidate = self.root / self.path.lstrip("/")
        return candidate if candidate.is_file() else None

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        self.requests.append(f"{self.command} {self.headers.get('Range', '-')}")
        path = self._file()
        if path is None:
            self.send_error(404)
            return
        data = path.read_bytes()
        start, end, status = 0, len(data) - 1, 200
        spec = self.headers.get("Range")
        if spec and spec.startswith("bytes="):
            first, _, last = spec[len("bytes=") :].partition("-")
            start = int(first)
            end = min(int(last), len(data) - 1) if last else len(data) - 1
            status = 206
        self.send_response(status)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(data[start : end + 1])


@contextlib.contextmanager
def serve(root: Path) -> Iterator[tuple[str, list[str]]]:
    requests: list[str] = []
    handler = type("Handler", (RangeHandler,), {"root": root, "requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def cog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1200 × 900 float32 COG (0.05°, Europe) with internal overviews and 256 tiles."""
    path = tmp_path_factory.mktemp("www") / "layer.tif"
    rng = np.random.default_rng(7)
    data = rng.random((900, 1200)).astype("float32")
    with rasterio.open(
        path, "w", driver="COG", width=1200, height=900, count=1, dtype="float32",
        crs="EPSG:4326", transform=from_origin(-25, 70, 0.05, 0.05), nodata=-9999.0,
        blocksize=256,
    ) as dst:  # fmt: skip
        dst.write(data, 1)
    return path


@pytest.fixture()
def server(cog: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[str]]]:
    # No directory listing requests, no cached answers from an earlier test.
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
    monkeypatch.setenv("CPL_VSIL_CURL_NON_CACHED", "/vsicurl/http://127.0.0.1")
    with serve(cog.parent) as served:
        yield served


def test_a_url_stays_a_url_in_the_config() -> None:
    config = parse_config({"datasets": [{"name": "r", "path": "https://example.org/a/b.tif"}]})
    assert config.datasets[0].path == "https://example.org/a/b.tif"
    vsi = parse_config({"datasets": [{"name": "r", "path": "/vsizip/data.zip/a.tif"}]})
    assert vsi.datasets[0].path == "/vsizip/data.zip/a.tif"


@pytest.mark.parametrize("prefix", ["", "/vsicurl/"])
def test_a_cog_over_http_resamples_identically_to_the_local_file(
    cog: Path, server: tuple[str, list[str]], tmp_path: Path, prefix: str
) -> None:
    url, requests = server
    remote = f"{prefix}{url}/{cog.name}"
    source = inspect(DatasetConfig(name="r", path=remote), CatalogConfig(timeout=30))
    assert source.name == f"/vsicurl/{url}/{cog.name}" and source.width == 1200
    layers = {}
    for name, path in (("remote", remote), ("local", str(cog))):
        config = make_config(tmp_path / name, [{"name": name, "path": path,
                                                "resampling": "average"}], GRID)  # fmt: skip
        ctx, _ = make_context(config)
        store = run_dataset(
            ctx, tmp_path / name / "layers.zarr", TargetGrid.from_config(config.grid), name
        )
        layers[name] = read_layer(store, name)
    assert np.array_equal(layers["remote"], layers["local"], equal_nan=True)
    assert np.isfinite(layers["remote"]).sum() > 500
    assert any(r.startswith("GET bytes=") for r in requests), "read with range requests"


def test_a_404_is_one_line(server: tuple[str, list[str]]) -> None:
    url, _ = server
    with pytest.raises(CatalogError) as caught:
        inspect(DatasetConfig(name="r", path=f"{url}/missing.tif"), CatalogConfig(timeout=30))
    message = str(caught.value)
    assert "\n" not in message and "cannot open remote input" in message and "404" in message


def test_a_refused_connection_is_one_line() -> None:
    with pytest.raises(CatalogError) as caught:
        inspect(DatasetConfig(name="r", path="http://127.0.0.1:9/a.tif"), CatalogConfig(timeout=30))
    assert "\n" not in str(caught.value) and "cannot open remote input" in str(caught.value)


def test_a_stalled_server_is_cut_off_by_the_catalog_timeout(
    server: tuple[str, list[str]],
) -> None:
    url, _ = server
    started = time.monotonic()
    with pytest.raises(CatalogError, match="timed out after 4 s"):
        inspect(DatasetConfig(name="r", path=f"{url}{STALL_PATH}"),
                CatalogConfig(timeout=CATALOG_TIMEOUT))  # fmt: skip
    assert time.monotonic() - started < CATALOG_TIMEOUT + 10
