"""A whole ``geod run`` of eight layers vs the gdalwarp loop a user would type instead.

    .venv/bin/python bench/pipeline_vs_gdalwarp.py [--size small|large|tiny] [--repeat N]
                                                   [--threads N] [--dir DIR]

Eight synthetic layers of mixed sizes, CRSs, dtypes and methods (average,
bilinear, mode, max; one aligned with the grid at an integer factor, which geod
reduces by blocks) onto one grid (180°W–180°E, 60°S–80°N; 5′ at ``large``,
inputs and grid coarser together at smaller sizes, so every ratio and the
alignment hold). One side is
``geod run CONFIG --stages catalog,resample`` in a subprocess (CLI start,
imports, catalog, resample, the run's report off); the other a shell loop running
``gdalwarp -multi -wo NUM_THREADS=2`` on each layer with geod's output type and
nodata. Both are timed as whole processes and their peak RSS read from
``wait4`` (the loop's is its largest gdalwarp).

With ``--repeat N`` the sides alternate N times and the fastest run of each
counts. Printed: the wall-time ratio geod / gdalwarp loop (target ≤ 0.55), geod's
peak RSS against ``memory.budget`` (target: within it), and for every layer
whether it is identical to its gdalwarp output (nodata masks equal and max abs
diff ≤ 1e-6 of the data range; "bit-identical" when every cell is). The load
average is printed before and after: on a shared machine rerun on a quiet one.
``--size tiny`` is the quick mode (a few seconds per side); ``small`` (default)
keeps one run of the whole bench under about three minutes.
"""

from __future__ import annotations

import argparse
import math
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import yaml
from rasterio.transform import from_origin
from rasterio.windows import Window
from resample_child import Measured, load_average, run_measured

from pipeline.config import Resampling
from pipeline.memory import format_bytes
from pipeline.resample import output_dtype, output_nodata

#: The grid at ``large``: 5 arc-minutes, off the poles (where gdalwarp 3.6's footprint methods
#: fill rows past the EASE-Grid world, see pipeline.resample).
RESOLUTION = 5 / 60
BOUNDS = (-180.0, -60.0, 180.0, 80.0)
BUDGET = 1024**3
#: Issue targets.
WALL_TARGET = 0.55
PARITY = 1e-6
#: Rows generated per step.
GENERATE_ROWS = 512
EASE_X, EASE_Y = 17367530.445161499, 7314540.8306386
MERCATOR = 20037508.342789244
EASE_WORLD = (-EASE_X, -EASE_Y, EASE_X, EASE_Y)
MERCATOR_WORLD = (-MERCATOR, -MERCATOR, MERCATOR, MERCATOR)
#: Per-axis scale of every layer (and of the grid's cell count) by --size.
SIZES = {"tiny": 0.25, "small": 0.5, "large": 1.0}
GDAL_TYPES = {"float32": "Float32", "int16": "Int16", "uint8": "Byte"}
_MIB = 1024**2


@dataclass(frozen=True)
class Layer:
    """One input: CRS, extent and size at ``large``, dtype, nodata, method."""

    name: str
    crs: str
    bounds: tuple[float, float, float, float]
    width: int
    height: int
    dtype: str
    nodata: float
    method: str


LAYERS = [
    # 3′ → 5′: a non-integer ratio, every kernel straddles source pixels.
    Layer("temp", "EPSG:4326", (-180, -90, 180, 90), 7200, 3600, "float32", -9999, "average"),
    # 2.5′ → 5′ with edges on cell edges: block reduction, not a warp.
    Layer("prec", "EPSG:4326", (-180, -90, 180, 90), 8640, 4320, "float32", -9999, "average"),
    Layer("elev", "EPSG:4326", (-180, -90, 180, 90), 10800, 5400, "int16", -32768, "bilinear"),
    Layer("cover", "EPSG:4326", (-180, -90, 180, 90), 10800, 5400, "uint8", 255, "mode"),
    Layer("threat", "EPSG:6933", EASE_WORLD, 3856, 1624, "float32", -9999, "average"),
    Layer("ndvi", "EPSG:3857", MERCATOR_WORLD, 4096, 4096, "int16", -32768, "max"),
    # Coarser than the grid: upsampled.
    Layer("soil", "EPSG:4326", (-180, -90, 180, 90), 2160, 1080, "float32", -9999, "bilinear"),
    Layer("wind", "EPSG:4326", (-180, -90, 180, 90), 3600, 1800, "float32", -9999, "max"),
]


def generate(layer: Layer, scale: float, folder: Path, seed: int) -> Path:
    """Smooth field + noise + nodata patches (classes 0–9 for uint8), tiled deflate."""
    path = folder / f"{layer.name}_{scale:g}.tif"
    if path.exists():
        return path
    width, height = round(layer.width * scale), round(layer.height * scale)
    west, south, east, north = layer.bounds
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": layer.dtype,
        "crs": layer.crs, "nodata": layer.nodata, "tiled": True, "blockxsize": 256,
        "blockysize": 256, "compress": "deflate",
        "transform": from_origin(west, north, (east - west) / width, (north - south) / height),
    }  # fmt: skip
    rng = np.random.default_rng(seed)
    cols = np.arange(width)[None, :] / width
    partial = path.with_suffix(".partial.tif")
    with rasterio.open(partial, "w", **profile) as dst:
        for row0 in range(0, height, GENERATE_ROWS):
            rows = np.arange(row0, min(height, row0 + GENERATE_ROWS))[:, None] / height
            field = 40 * np.sin(cols * 6 * math.pi) * np.cos(rows * 4 * math.pi) + 60 * rows
            field = field + rng.integers(0, 4, field.shape) * 0.25
            if layer.dtype == "uint8":
                field = np.floor(field / 12) % 10  # land-cover classes
            elif layer.dtype == "int16":
                field = np.round(field * 10)
            field[np.sin(cols * 4 * math.pi) * np.cos(rows * 6 * math.pi) > 0.7] = layer.nodata
            dst.write(field.astype(layer.dtype), 1, window=Window(0, row0, width, field.shape[0]))
    partial.rename(path)
    return path


def gdalwarp_command(
    layer: Layer, source: Path, out: Path, threads: int, resolution: float
) -> list[str]:
    """gdalwarp onto the grid with geod's output dtype and nodata for this layer."""
    dtype = output_dtype(Resampling(layer.method), layer.dtype)
    nodata = output_nodata(dtype, layer.nodata)
    west, south, east, north = BOUNDS
    argv = [
        "gdalwarp", "-q", "-overwrite", "-r", layer.method, "-t_srs", "EPSG:4326",
        "-te", *(repr(v) for v in (west, south, east, north)),
        "-tr", repr(resolution), repr(resolution), "-ot", GDAL_TYPES[dtype],
        "-dstnodata", "nan" if math.isnan(nodata) else repr(nodata),
    ]  # fmt: skip
    if threads > 1:
        argv += ["-multi", "-wo", f"NUM_THREADS={threads}"]
    return [*argv, str(source), str(out)]


def write_config(folder: Path, sources: dict[str, Path], threads: int, resolution: float) -> Path:
    config = {
        "name": "pipeline-bench",
        "datasets": [
            {"name": layer.name, "path": str(sources[layer.name]), "resampling": layer.method}
            for layer in LAYERS
        ],
        "grid": {"crs": "EPSG:4326", "resolution": resolution, "bounds": list(BOUNDS)},
        "resampling": {"threads": threads},
        "memory": {"budget": BUDGET},
        "paths": {"work_dir": str(folder / "work"), "output_dir": str(folder / "out")},
        "report": False,
    }
    path = folder / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def compare(store: Path, reference: Path, nodata: float) -> str:
    """Bit-identical, identical within the parity bound (with the diff), or what differs."""
    import zarr

    ours = np.asarray(zarr.open_array(store, mode="r")[:])
    with rasterio.open(reference) as src:
        ref = src.read(1)
    missing_ref = np.isnan(ref) if math.isnan(nodata) else ref == nodata
    missing_ours = np.isnan(ours) if math.isnan(nodata) else ours == nodata
    masks = int((missing_ref != missing_ours).sum())
    if masks:
        return f"DIFFERENT: {masks} cells differ in the nodata mask"
    valid = ~missing_ref
    if np.array_equal(ours[valid], ref[valid]):
        return "bit-identical"
    values = ref[valid].astype("float64")
    spread = float(values.max() - values.min()) or 1.0
    diff = float(np.abs(ours[valid].astype("float64") - values).max()) / spread
    verdict = "identical" if diff <= PARITY else "DIFFERENT"
    return f"{verdict} (max abs diff {diff:.1e} of range)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs; fastest counts")
    parser.add_argument("--threads", type=int, default=2, help="resampling.threads and gdalwarp's")
    parser.add_argument("--dir", type=Path, default=None, help="keep inputs here between runs")
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="geod-pipeline-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    scale = SIZES[args.size]
    resolution = RESOLUTION / scale
    try:
        sources = {
            layer.name: generate(layer, scale, folder, seed) for seed, layer in enumerate(LAYERS)
        }
        config = write_config(folder, sources, args.threads, resolution)
        refs = folder / "gdalwarp"
        refs.mkdir(exist_ok=True)
        commands = [
            gdalwarp_command(
                layer, sources[layer.name], refs / f"{layer.name}.tif", args.threads, resolution
            )
            for layer in LAYERS
        ]
        loop = " && ".join(shlex.join(command) for command in commands)
        geod = [str(Path(sys.executable).with_name("geod")), "run", str(config),
                "--stages", "catalog,resample"]  # fmt: skip
        for layer in LAYERS:
            with rasterio.open(sources[layer.name]) as src:
                print(f"  {layer.name:7} {layer.crs:10} {src.width:6}×{src.height:<6} "
                      f"{layer.dtype:8} {layer.method}")  # fmt: skip
        print(f"grid {resolution * 60:g}′ {BOUNDS}, budget {format_bytes(BUDGET)}, "
              f"threads {args.threads}, size {args.size}")  # fmt: skip
        print(load_average("before"), flush=True)
        theirs: Measured | None = None
        ours: Measured | None = None
        for _ in range(args.repeat):
            run, _ = run_measured(["sh", "-c", loop])
            theirs = run if theirs is None or run.seconds < theirs.seconds else theirs
            shutil.rmtree(folder / "work", ignore_errors=True)
            run, _ = run_measured(geod)
            ours = run if ours is None or run.seconds < ours.seconds else ours
        assert theirs is not None and ours is not None
        print(
            f"gdalwarp loop {theirs.seconds:.2f} s (CPU {theirs.cpu_seconds:.2f}), "
            f"geod run {ours.seconds:.2f} s (CPU {ours.cpu_seconds:.2f})\n"
            f"    geod / gdalwarp wall = {ours.seconds / theirs.seconds:.2f} "
            f"(target ≤ {WALL_TARGET}), CPU {ours.cpu_seconds / theirs.cpu_seconds:.2f}\n"
            f"    peak RSS: geod {ours.peak_rss / _MIB:.0f} MiB = "
            f"{ours.peak_rss / BUDGET:.2f} of the {format_bytes(BUDGET)} budget "
            f"({'within' if ours.peak_rss < BUDGET else 'OVER'}); "
            f"largest gdalwarp {theirs.peak_rss / _MIB:.0f} MiB",
            flush=True,
        )
        for layer in LAYERS:
            dtype = output_dtype(Resampling(layer.method), layer.dtype)
            verdict = compare(
                folder / "work" / "layers.zarr" / layer.name,
                refs / f"{layer.name}.tif",
                output_nodata(dtype, layer.nodata),
            )
            print(f"    {layer.name:7} {layer.method:9} {verdict}")
        print(load_average("after"))
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
