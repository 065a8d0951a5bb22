"""Synthetic but realistic global biodiversity layers for the quick start, tests and benchmarks.

Four GeoTIFFs whose names ``config.yml`` uses, each exercising a different path
through the pipeline onto its 5 arc-minute global grid:

========================  ============================================  ==========
file                      what it is                                    path taken
========================  ============================================  ==========
``richness_05deg.tif``    species richness, global EPSG:4326, float32,  resampled
                          whole counts, nodata -9999 over the oceans     (finer)
``endemism_5min.tif``     endemism index 0–1, a 5 arc-minute float32    passthrough
                          subset exactly on the global 5' grid, NaN
``landcover_1min.tif``    land-cover classes 1–11, int16, a 1 arc-      mode
                          minute regional subset, nodata -32768          (coarser)
``threat_ease.tif``       threat index 0–1, global EASE-Grid 2.0        reprojected
                          (EPSG:6933, equal-area) float32, NaN
========================  ============================================  ==========

Every layer shares one land mask: rough continents placed where Earth's are
(so maps look familiar) with seeded coastline noise and islands, all from
smooth functions on the sphere (von Mises–Fisher bumps and 3-D sinusoids), so
there is no seam at ±180° and nothing is downloaded. A seed gives the same
bytes every time.

``size`` scales pixels about 4× per step (``small`` → ``medium`` → ``large``):
resampled layers get finer native resolutions, the passthrough and 1' layers a
larger extent (their resolution is what makes them what they are). Names never
change, so ``geod demo-data --size large && geod run config.yml`` just works.

Files are tiled (256), deflate-compressed, written by row blocks (the large set
never holds a layer in memory) under a temporary name and renamed into place,
so an interrupted generation never leaves a partial file under a final name.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import psutil
import rasterio
from affine import Affine
from numpy.typing import ArrayLike
from rasterio.warp import transform as transform_points
from rasterio.windows import Window

Size = Literal["small", "medium", "large"]
SIZES: tuple[Size, ...] = ("small", "medium", "large")

#: Tile edge and the height of each row block written: a block completes one row
#: of tiles, so GDAL flushes it and memory stays at one tile row.
BLOCK = 256

#: EASE-Grid 2.0 global half-width in metres (EPSG:6933), as NSIDC defines it.
EASE2_HALF_WIDTH = 17_367_530.44

#: Temporaries are hidden, carry the writer's pid (so stale ones can be told from
#: a concurrent writer's) and end in .tif so GDAL picks the GeoTIFF driver.
PARTIAL_SUFFIX = ".partial.tif"

FLOAT_NODATA = -9999.0
INT16_NODATA = -32768

# Land is where the land field exceeds this; bumps are 1 at their centre and
# this value at their nominal radius.
LAND_THRESHOLD = 0.5

#: Rough continents as (longitude, latitude, radius in degrees) bumps.
CONTINENTS: tuple[tuple[float, float, float], ...] = (
    (-100, 45, 20), (-115, 60, 15), (-85, 35, 12), (-150, 63, 10), (-100, 20, 8),  # N America
    (-42, 72, 10),  # Greenland
    (-60, -10, 18), (-65, -35, 10), (-72, -45, 6),  # S America
    (15, 50, 12), (30, 55, 12), (-4, 40, 6), (-2, 54, 4),  # Europe
    (20, 5, 20), (25, -20, 14), (10, 20, 15), (40, 5, 8), (47, -19, 4),  # Africa, Madagascar
    (90, 50, 25), (75, 25, 12), (105, 30, 15), (130, 60, 15), (45, 30, 10),  # Asia
    (115, -2, 6), (140, -5, 5), (138, 36, 4),  # Indonesia, New Guinea, Japan
    (135, -25, 15), (172, -42, 4),  # Australia, New Zealand
    (0, -90, 22),  # Antarctica
)  # fmt: skip


@dataclass(frozen=True)
class LayerSpec:
    """What one demo file promises: its grid, type and nodata."""

    filename: str
    crs: str
    transform: Affine
    width: int
    height: int
    dtype: str
    nodata: float


# --------------------------------------------------------------------------- fields on the sphere


@dataclass(frozen=True)
class Bumps:
    """Weighted von Mises–Fisher bumps w·exp(κ(cos d − 1)), d the great-circle distance.

    κ is chosen so a bump falls to ``LAND_THRESHOLD`` of its peak at its radius.
    Working with cos d (not d) avoids an arccos per cell and per bump. Bumps
    combine by sum (overlapping hotspots add up) or, for shapes such as
    continents, by maximum: a union of disks whose long tails do not pile up
    into land bridges across oceans.
    """

    lon: np.ndarray
    lat: np.ndarray
    radius: np.ndarray
    weight: np.ndarray
    union: bool = False

    @classmethod
    def of(
        cls,
        lon: ArrayLike,
        lat: ArrayLike,
        radius: ArrayLike,
        weight: ArrayLike | None = None,
        union: bool = False,
    ) -> Bumps:
        lon, lat, radius = (np.asarray(v, dtype=float) for v in (lon, lat, radius))
        weights = np.ones_like(lon) if weight is None else np.asarray(weight, dtype=float)
        return cls(lon, lat, radius, weights, union)

    def __call__(self, grid: SphereBlock) -> np.ndarray:
        kappa = -math.log(LAND_THRESHOLD) / (1.0 - np.cos(np.radians(self.radius)))
        out = np.zeros(grid.shape)
        lon0, lat0 = np.radians(self.lon), np.radians(self.lat)
        for k, w, clon, slon, clat, slat in zip(
            kappa, self.weight, np.cos(lon0), np.sin(lon0), np.cos(lat0), np.sin(lat0), strict=True
        ):
            cos_dlon = grid.cos_lon * clon + grid.sin_lon * slon  # per column
            cos_d = grid.sin_lat[:, None] * slat + (grid.cos_lat * clat)[:, None] * cos_dlon
            bump = w * np.exp(k * (cos_d - 1.0))
            if self.union:
                np.maximum(out, bump, out=out)
            else:
                out += bump
        return out


@dataclass(frozen=True)
class Waves:
    """Isotropic smooth noise Σ a·sin(k·p + φ), random 3-D wave vectors k, p on the unit sphere."""

    vectors: np.ndarray  # (n, 3)
    phases: np.ndarray
    amplitudes: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, count: int, frequency: tuple[float, float]) -> Waves:
        directions = rng.normal(size=(count, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        magnitudes = rng.uniform(*frequency, size=count)
        amplitudes = 1.0 / np.sqrt(count) * np.ones(count)
        return cls(directions * magnitudes[:, None], rng.uniform(0, 2 * np.pi, count), amplitudes)

    def __call__(self, grid: SphereBlock) -> np.ndarray:
        out = np.zeros(grid.shape)
        x_col, y_col = grid.cos_lon, grid.sin_lon
        for (kx, ky, kz), phase, amplitude in zip(
            self.vectors, self.phases, self.amplitudes, strict=True
        ):
            horizontal = kx * x_col + ky * y_col  # per column; scaled by cos(lat) per row
            angle = grid.cos_lat[:, None] * horizontal + (kz * grid.sin_lat + phase)[:, None]
            out += amplitude * np.sin(angle)
        return out


@dataclass(frozen=True)
class SphereBlock:
    """A block of cells given by separable longitudes (columns) and latitudes (rows), degrees."""

    lon: np.ndarray
    lat: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return (self.lat.size, self.lon.size)

    @property
    def cos_lon(self) -> np.ndarray:
        return np.cos(np.radians(self.lon))

    @property
    def sin_lon(self) -> np.ndarray:
        return np.sin(np.radians(self.lon))

    @property
    def cos_lat(self) -> np.ndarray:
        return np.cos(np.radians(self.lat))

    @property
    def sin_lat(self) -> np.ndarray:
        return np.sin(np.radians(self.lat))


class World:
    """Every field of one seeded synthetic world; layers are functions of (lon, lat)."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        lon, lat, radius = np.array(CONTINENTS, dtype=float).T
        islands = 25
        self.continents = Bumps.of(
            np.concatenate([lon, rng.uniform(-180, 180, islands)]),
            np.concatenate([lat, np.degrees(np.arcsin(rng.uniform(-0.9, 0.9, islands)))]),
            np.concatenate([radius, rng.uniform(1.0, 4.0, islands)]),
            union=True,
        )
        self.coast = Waves.random(rng, 12, (4.0, 14.0))  # bays and peninsulas
        self.shore = Waves.random(rng, 12, (25.0, 80.0))  # ragged coastlines
        self.moisture = Waves.random(rng, 8, (1.5, 5.0))
        self.texture = Waves.random(rng, 10, (150.0, 500.0))  # 1' land-cover patchiness
        self.hotspots = Bumps.of(
            rng.uniform(-180, 180, 30),
            rng.uniform(-50, 60, 30),
            rng.uniform(2.0, 6.0, 30),
            rng.uniform(0.3, 1.0, 30),
        )
        self.cities = Bumps.of(
            np.concatenate([[10, 80, 115, -80, -45], rng.uniform(-180, 180, 25)]),
            np.concatenate([[50, 25, 32, 40, -22], rng.uniform(-40, 60, 25)]),
            np.concatenate([[10, 12, 10, 8, 6], rng.uniform(1.0, 5.0, 25)]),
        )

    def land(self, grid: SphereBlock) -> np.ndarray:
        shape = self.continents(grid) + 0.25 * self.coast(grid) + 0.05 * self.shore(grid)
        return shape > LAND_THRESHOLD

    def richness(self, grid: SphereBlock) -> np.ndarray:
        """Species counts: the tropics are richest, wetter places more so."""
        tropics = np.exp(-((grid.lat / 28.0) ** 2))[:, None]
        wet = 0.65 + 0.35 * np.tanh(self.moisture(grid))
        return np.rint(20 + 700 * tropics * wet + 150 * self.hotspots(grid))

    def endemism(self, grid: SphereBlock) -> np.ndarray:
        """0–1 index: a low, varied background with a few sharp hotspots."""
        background = 0.12 + 0.08 * self.moisture(grid) + 0.03 * self.shore(grid)
        return np.clip(background + 0.8 * np.tanh(self.hotspots(grid)), 0.0, 1.0)

    def landcover(self, grid: SphereBlock) -> np.ndarray:
        """Classes from a temperature (latitude) and moisture field plus fine texture.

        1 tropical forest, 2 temperate forest, 3 boreal forest, 4 grassland,
        5 shrubland, 6 desert, 7 tundra, 8 cropland, 9 urban, 10 wetland, 11 ice.
        """
        temperature = (30.0 - 0.55 * np.abs(grid.lat))[:, None] * np.ones(grid.shape)
        moisture = self.moisture(grid) + 0.3 * self.texture(grid)
        classes = np.full(grid.shape, 4, dtype=np.int16)
        warm, mild, cold = temperature > 20, temperature > 8, temperature > -2
        classes[warm & (moisture > 0.3)] = 1
        classes[warm & (moisture < -0.6)] = 6
        classes[warm & (moisture >= -0.6) & (moisture < -0.2)] = 5
        classes[~warm & mild & (moisture > 0.0)] = 2
        classes[~mild & cold & (moisture > -0.3)] = 3
        classes[~cold] = 7
        classes[temperature < -12] = 11
        patch = self.texture(grid)
        classes[mild & (patch > 0.9)] = 8
        classes[(moisture > 0.9) & (patch < -0.9)] = 10
        classes[self.cities(grid) > 0.9] = 9
        return classes

    def threat(self, grid: SphereBlock) -> np.ndarray:
        """0–1 human-pressure index around population centres."""
        return np.clip(0.1 + 0.75 * np.tanh(self.cities(grid)) + 0.1 * self.coast(grid), 0, 1)


# --------------------------------------------------------------------------- layers


def _geographic(
    filename: str, origin: tuple[float, float], res: float, shape: tuple[int, int], dtype: str,
    nodata: float,
) -> LayerSpec:  # fmt: skip
    """A north-up EPSG:4326 layer from its north-west corner, pixel size and (width, height)."""
    west, north = origin
    transform = Affine(res, 0, west, 0, -res, north)
    return LayerSpec(filename, "EPSG:4326", transform, *shape, dtype, nodata)


def layer_specs(size: Size = "small") -> list[LayerSpec]:
    """The four layers of a size, in config order (richness, endemism, landcover, threat)."""
    step = SIZES.index(size)  # 0, 1, 2; every step is ~4× the pixels
    scale = 2**step
    # Global at 0.5° (the name's resolution), then 0.25° and 0.125°.
    richness_res = 0.5 / scale
    richness_shape = (round(360 / richness_res), round(180 / richness_res))
    # 5' subsets (north-west corner, shape): 80°×80° over Africa and Europe,
    # 160°×160°, then the whole globe.
    endemism = [((-20, 40), (960, 960)), ((-100, 80), (1920, 1920)), ((-180, 90), (4320, 2160))]
    # 1' subsets around the Gulf of Guinea and Africa: 20°×15°, 40°×30°, 80°×60°.
    landcover = [((0, 10), (1200, 900)), ((-10, 15), (2400, 1800)), ((-20, 25), (4800, 3600))]
    # EASE-Grid 2.0 global at 25 km, 12.5 km and 6.25 km.
    ease_cols, ease_rows = 1388 * scale, 584 * scale
    ease_res = 2 * EASE2_HALF_WIDTH / ease_cols
    ease = Affine(ease_res, 0, -EASE2_HALF_WIDTH, 0, -ease_res, ease_rows * ease_res / 2)
    return [
        _geographic(
            "richness_05deg.tif", (-180, 90), richness_res, richness_shape, "float32", FLOAT_NODATA
        ),
        _geographic("endemism_5min.tif", endemism[step][0], 1 / 12, endemism[step][1],
                    "float32", math.nan),
        _geographic("landcover_1min.tif", landcover[step][0], 1 / 60, landcover[step][1],
                    "int16", INT16_NODATA),
        LayerSpec("threat_ease.tif", "EPSG:6933", ease, ease_cols, ease_rows, "float32", math.nan),
    ]  # fmt: skip


def _axes(spec: LayerSpec) -> tuple[np.ndarray, np.ndarray]:
    """Longitude of every column and latitude of every row (cell centres).

    Both CRSs here are cylindrical (EPSG:6933 is Lambert cylindrical equal-area),
    so longitude depends only on x and latitude only on y: two 1-D transforms
    give every cell's position exactly.
    """
    xs = spec.transform.c + spec.transform.a * (np.arange(spec.width) + 0.5)
    ys = spec.transform.f + spec.transform.e * (np.arange(spec.height) + 0.5)
    if spec.crs == "EPSG:4326":
        return xs, ys
    lon, _ = transform_points(spec.crs, "EPSG:4326", xs, np.zeros_like(xs))
    _, lat = transform_points(spec.crs, "EPSG:4326", np.zeros_like(ys), ys)
    return np.asarray(lon), np.asarray(lat)


def _partial_name(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.stem}.{pid}{PARTIAL_SUFFIX}")


def _remove_stale_partials(path: Path) -> None:
    """Delete temporaries of ``path`` left by a generator that was killed (its pid is gone)."""
    for partial in path.parent.glob(f".{path.stem}.*{PARTIAL_SUFFIX}"):
        pid = partial.name.removesuffix(PARTIAL_SUFFIX).rsplit(".", 1)[-1]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()


def _write_layer(
    path: Path, spec: LayerSpec, values: Callable[[SphereBlock], np.ndarray], world: World
) -> None:
    """Stream one layer to ``path`` by row blocks, then rename it into place."""
    lon, lat = _axes(spec)
    _remove_stale_partials(path)
    temporary = _partial_name(path, os.getpid())
    profile = dict(
        driver="GTiff",
        width=spec.width,
        height=spec.height,
        count=1,
        dtype=spec.dtype,
        crs=spec.crs,
        transform=spec.transform,
        nodata=spec.nodata,
        tiled=True,
        blockxsize=BLOCK,
        blockysize=BLOCK,
        compress="deflate",
        predictor=3 if spec.dtype.startswith("float") else 2,
    )
    try:
        with rasterio.open(temporary, "w", **profile) as dst:
            for row in range(0, spec.height, BLOCK):
                block = SphereBlock(lon, lat[row : row + BLOCK])
                data = values(block).astype(spec.dtype)
                data[~world.land(block)] = spec.nodata
                dst.write(data, 1, window=Window(0, row, spec.width, data.shape[0]))
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def generate(directory: Path, size: Size = "small", seed: int = 0) -> list[Path]:
    """Write the four demo layers into ``directory`` (created if needed); returns their paths."""
    if size not in SIZES:
        raise ValueError(f"size {size!r} is not one of {', '.join(SIZES)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    world = World(seed)
    fields = [world.richness, world.endemism, world.landcover, world.threat]
    paths = []
    for spec, values in zip(layer_specs(size), fields, strict=True):
        path = directory / spec.filename
        _write_layer(path, spec, values, world)
        paths.append(path)
    return paths


def write_demo_config(template: Path, directory: Path, demo: Path, **sections: object) -> Path:
    """``directory/config.yml``: ``template`` (e.g. the repository's config.yml) reading the
    demo layers from ``demo`` and working under ``directory``.

    Each dataset keeps its file name and is looked up in ``demo``; keyword arguments
    replace whole top-level sections. Tests and benchmarks run the demo through this.
    """
    import yaml

    from pipeline.config import read_yaml

    data = read_yaml(template)
    for dataset in data["datasets"]:
        dataset["path"] = str(demo / Path(dataset["path"]).name)
    data["paths"] = {"work_dir": str(directory / "work"), "output_dir": str(directory / "out")}
    data.update(sections)
    path = directory / "config.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.demo",
        description="Write synthetic global biodiversity layers (the files config.yml uses).",
    )
    parser.add_argument(
        "directory", nargs="?", type=Path, default=Path("demo"), help="output folder (./demo)"
    )
    parser.add_argument("--size", choices=SIZES, default="small", help="pixels ×4 per step")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files")
    args = parser.parse_args(argv)
    try:
        paths = generate(args.directory, args.size, args.seed)
    except OSError as exc:
        where = exc.filename or args.directory
        print(f"demo: cannot write {where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for path in paths:
        with rasterio.open(path) as src:
            kib = path.stat().st_size / 1024
            print(f"{path}  {src.width}×{src.height} {src.dtypes[0]} {src.crs}  {kib:,.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
