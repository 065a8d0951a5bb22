"""Typed model of ``config.yml``: the one place every threshold and default lives.

Every knob the pipeline has is a field here with its documented default, so the
code never carries magic numbers. Loading turns every pydantic error into one
line naming the key path (``datasets[2].resampling: 'avg' is not one of ...``)
with a "did you mean" hint for misspelt keys, because users fix configs from the
terminal, not from a traceback.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import psutil
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.globs import Expansion, GlobError, expand
from pipeline.source_names import is_remote, local_file, resolve_path

#: Names users pick (datasets, run names, output names, table names) must be
#: plain identifiers: they become file names, column names and SQL identifiers,
#: so nothing that could traverse a path or reach a shell is accepted.
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,62}$")
#: A config (or settings) file larger than this is refused before parsing.
MAX_CONFIG_BYTES = 1024 * 1024
#: Longest piece of a file's content (a key, a value) quoted in an error message.
MAX_EXCERPT_CHARS = 80
#: The answer for a file that is not a geod config, whatever it holds.
NOT_A_CONFIG = "not a geod config (expected a YAML mapping with datasets:)"
#: Top-level directories of the kernel's pseudo file systems: never an input raster.
PSEUDO_FILESYSTEMS = frozenset({"proc", "sys", "dev"})
SQL_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

#: GDAL refuses warp memory limits below this many bytes ("unreasonably small").
WARP_MEMORY_MIN = 100_000

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}


def _excerpt(text: str) -> str:
    """At most ``MAX_EXCERPT_CHARS`` of something taken from a file, for an error line."""
    if len(text) <= MAX_EXCERPT_CHARS:
        return text
    return text[: MAX_EXCERPT_CHARS - 1] + "…"


class ConfigError(ValueError):
    """A config problem, already phrased as one line for the user."""


class Resampling(StrEnum):
    """Resampling methods, named as gdalwarp names them (``-r``)."""

    average = "average"
    sum = "sum"
    mode = "mode"
    min = "min"
    max = "max"
    med = "med"
    q1 = "q1"
    q3 = "q3"
    nearest = "nearest"
    bilinear = "bilinear"
    cubic = "cubic"


class AnalysisMethod(StrEnum):
    """Analysis methods: a closed set, never interpolated into code or a shell."""

    som = "som"
    gwpca = "gwpca"
    combined = "combined"
    test = "test"


class ExportFormat(StrEnum):
    parquet = "parquet"
    csv = "csv"
    postgres = "postgres"
    #: The merged stack as a grid (one variable per layer, CF attributes): pipeline.stack.
    zarr = "zarr"
    netcdf = "netcdf"


def parse_size(value: Any) -> int | float:
    """Parse ``4GiB``/``512 MB``/``50%``/bytes. A fraction of RAM stays a float < 1."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 4GiB or 50%")
    if isinstance(value, int | float):
        return value
    text = str(value).strip().lower().replace(" ", "")
    if text.endswith("%"):
        percent = float(text[:-1])
        if not 0 < percent <= 100:
            raise ValueError(f"{_excerpt(repr(value))} is not a percentage in (0, 100]")
        return percent / 100.0
    match = re.fullmatch(r"([0-9]*\.?[0-9]+)([a-z]*)", text)
    if not match or match.group(2) not in _SIZE_UNITS:
        raise ValueError(f"{_excerpt(repr(value))} is not a size such as 4GiB, 512MB or 50%")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


Size = Annotated[int | float, BeforeValidator(parse_size)]


class StrictModel(BaseModel):
    """Unknown keys are errors: a misspelt key silently ignored costs hours."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=False)


def _check_name(value: str, what: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"{_excerpt(repr(value))} is not a valid {what}: use letters, digits, '_' or '-', "
            "starting with a letter or '_' (at most 63 characters)"
        )
    return value


class DatasetConfig(StrictModel):
    """One input raster and how it reaches the target grid."""

    name: str = Field(description="Column name in the merged table; a plain identifier.")
    path: Path | str = Field(
        description="Raster file (any GDAL format), relative to the config file; or an "
        "http(s):// URL (read with range requests) or a GDAL /vsi... path."
    )
    resampling: Resampling = Field(
        default=Resampling.average, description="gdalwarp -r method for this dataset."
    )
    band: int | None = Field(
        default=None, ge=1, description="Band to read; required for multi-band inputs."
    )
    nodata: float | None = Field(
        default=None, description="Overrides the file's nodata value when set."
    )
    crs: str | None = Field(
        default=None,
        description="Assigns a CRS to a source without one, or overrides a wrong one "
        "(any string GDAL accepts: EPSG:4326, a WKT, a PROJ string).",
    )
    variable: str | None = Field(
        default=None, description="NetCDF/HDF5 variable (subdataset) to read, by name."
    )
    time: str | None = Field(
        default=None,
        description="Time step to read, by its ISO label (2000-01-01), where the file has a "
        "CF time axis; instead of band.",
    )
    categorical: bool = Field(
        default=False,
        description="Class codes (land cover…), not quantities: exported as usual, left out "
        "of SOM and GWPCA unless analysis.variables lists it (then one-hot encoded).",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value, "dataset name")

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, value: Any) -> Any:
        """URLs and GDAL virtual paths stay strings; anything else is a local path."""
        if isinstance(value, str) and is_remote(value):
            return value
        return Path(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _band_or_time(self) -> DatasetConfig:
        if self.band is not None and self.time is not None:
            raise ValueError("choose a time step with either `band:` or `time:`, not both")
        return self

    @property
    def remote(self) -> bool:
        return is_remote(self.path)


class GridConfig(StrictModel):
    """The target grid every dataset is resampled onto (snapped like gdalwarp -tap)."""

    crs: str = Field(default="EPSG:4326", description="Target CRS, any string GDAL accepts.")
    resolution: tuple[float, float] = Field(
        default=(1 / 60, 1 / 60),
        description="Pixel size (x, y) in CRS units; default 1 arc-minute.",
    )
    bounds: tuple[float, float, float, float] = Field(
        default=(-180.0, -90.0, 180.0, 90.0),
        description="west, south, east, north; snapped outwards to the resolution.",
    )

    @field_validator("resolution", mode="before")
    @classmethod
    def _scalar_resolution(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (value, value)
        return value

    @field_validator("resolution")
    @classmethod
    def _positive(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] <= 0 or value[1] <= 0:
            raise ValueError("resolution must be positive")
        return value

    @field_validator("bounds")
    @classmethod
    def _ordered(cls, value: tuple[float, float, float, float]) -> tuple[float, ...]:
        west, south, east, north = value
        if west >= east or south >= north:
            raise ValueError("bounds must be west < east and south < north")
        return value


class CatalogConfig(StrictModel):
    timeout: float = Field(
        default=30.0, gt=0, description="Seconds one header inspection may take before it fails."
    )
    max_cells: int = Field(
        default=2**36, ge=1, description="Largest width × height accepted (rejects bogus headers)."
    )


class ResamplingConfig(StrictModel):
    window_size: int = Field(
        default=2048,
        ge=64,
        description="Output window edge in pixels; a multiple of memory.min_window (store chunk).",
    )
    threads: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Windows warped at once per worker, each on its own thread, while the "
        "previous window is written (1: one warp thread overlapping the writes).",
    )
    read_threads: int = Field(
        default=1,
        ge=0,
        le=64,
        description="Threads reading and decoding source windows ahead of the warp threads, "
        "so decompression overlaps warping (0: each warp thread reads its own window). Local "
        "executor only: a Dask task reads and warps on its worker.",
    )
    queue_fraction: float = Field(
        default=0.0625,
        gt=0,
        le=1,
        description="Share of memory.budget the windows read and warped ahead of the writer may "
        "hold (their decoded source pixels and outputs): windows are made smaller until "
        "threads + 1 of them fit, so peak RSS stays flat as inputs get finer.",
    )
    margin: int = Field(
        default=2, ge=0, le=64, description="Extra source pixels read around each window."
    )
    coverage_warning: float = Field(
        default=0.75,
        ge=0,
        le=1,
        description="Warn when fewer than this share of the rows or columns a source's "
        "footprint spans on the grid hold any valid cell after resampling (a lost hemisphere).",
    )
    warp_memory: Size = Field(
        default=64 * 1024**2,
        description="GDAL's warp memory limit, as gdalwarp -wm (default 64 MiB, gdalwarp's). "
        "GDAL splits a warp into chunks by it and each chunk has its own kernel scale; geod "
        "replays that chunking so every cell equals a whole-raster warp with the same limit.",
    )

    @field_validator("warp_memory")
    @classmethod
    def _warp_memory(cls, value: int | float) -> int:
        if value < WARP_MEMORY_MIN:
            raise ValueError(f"must be at least {WARP_MEMORY_MIN} bytes (GDAL's own minimum)")
        return int(value)


class MemoryConfig(StrictModel):
    budget: Size = Field(
        default=0.5, description="Worker memory budget: bytes, '4GiB', or '50%' of total RAM."
    )
    warning: float = Field(default=0.80, gt=0, lt=1, description="Fraction of budget: halve.")
    critical: float = Field(default=0.90, gt=0, le=1, description="Fraction: drop to minimum.")
    min_window: int = Field(default=256, ge=64, description="Smallest window under pressure.")
    reduced_window: int = Field(
        default=512, ge=64, description="Floor for halving at the warning level."
    )
    calm: float = Field(
        default=0.70,
        gt=0,
        lt=1,
        description="Fraction of budget below which a window counts as calm (growth allowed).",
    )
    calm_windows: int = Field(
        default=4, ge=1, description="Calm windows in a row before the window size doubles back."
    )
    gdal_cache_fraction: float = Field(
        default=0.10, gt=0, lt=1, description="Share of the budget given to GDAL's block cache."
    )

    @model_validator(mode="after")
    def _levels(self) -> MemoryConfig:
        if self.warning >= self.critical:
            raise ValueError("memory.warning must be below memory.critical")
        if self.calm >= self.warning:
            raise ValueError("memory.calm must be below memory.warning")
        if self.min_window > self.reduced_window:
            raise ValueError("memory.min_window must not exceed memory.reduced_window")
        return self

    def budget_bytes(self) -> int:
        """The budget in bytes; a fraction is taken of total physical memory."""
        if isinstance(self.budget, float) and self.budget <= 1.0:
            return int(psutil.virtual_memory().total * self.budget)
        return int(self.budget)


class PathsConfig(StrictModel):
    work_dir: Path = Field(
        default=Path("runs/work"), description="Layer store and checkpoints (relative to config)."
    )
    output_dir: Path = Field(default=Path("output"), description="Exported tables and maps.")


class MergeConfig(StrictModel):
    skip_all_nodata: bool = Field(
        default=True, description="Drop rows where every layer is nodata."
    )
    require: list[str] = Field(
        default_factory=list, description="Datasets that must be valid for a row to be kept."
    )
    bounds: tuple[float, float, float, float] | None = Field(
        default=None, description="Optional west, south, east, north subset of the grid."
    )
    include_row_col: bool = Field(default=False, description="Add grid row/col columns.")
    chunk_rows: int = Field(
        default=512, ge=16, description="Grid rows per merge chunk (halved under pressure)."
    )
    max_chunk_cells: int = Field(
        default=4_194_304,
        ge=65_536,
        description="Cells per merge chunk at most: wider bands are split into column blocks "
        "(a 512-row global 1-arcmin band is 11 M cells, ~0.5 GiB of columns).",
    )

    @field_validator("bounds")
    @classmethod
    def _ordered(
        cls, value: tuple[float, float, float, float] | None
    ) -> tuple[float, float, float, float] | None:
        if value is not None and (value[0] >= value[2] or value[1] >= value[3]):
            raise ValueError("bounds must be west < east and south < north")
        return value


class ParquetOptions(StrictModel):
    compression: Literal["zstd", "snappy", "gzip", "lz4", "none"] = "zstd"
    row_group_size: int = Field(default=100_000, ge=1_000)
    geoparquet: bool = Field(default=False, description="Add a WKB point geometry + 'geo' key.")


class CsvOptions(StrictModel):
    float_precision: int = Field(default=6, ge=1, le=17)


class PostgresExportOptions(StrictModel):
    table: str = Field(default="geod_merged", description="Target table (plain identifier).")
    schema_name: str = Field(default="public", alias="schema")
    url: str | None = Field(default=None, description="Defaults to the telemetry database.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("table", "schema_name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not SQL_IDENTIFIER.fullmatch(value):
            raise ValueError(f"{_excerpt(repr(value))} is not a plain lower-case SQL identifier")
        return value


class ExportConfig(StrictModel):
    formats: list[ExportFormat] = Field(default_factory=lambda: [ExportFormat.parquet])
    name: str = Field(default="merged", description="Base name of the exported files.")
    parquet: ParquetOptions = Field(default_factory=ParquetOptions)
    csv: CsvOptions = Field(default_factory=CsvOptions)
    postgres: PostgresExportOptions = Field(default_factory=PostgresExportOptions)
    validate_samples: int = Field(
        default=200, ge=0, description="Random cells spot-checked after export."
    )
    seed: int = Field(default=0, description="Seed for choosing the spot-checked cells.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value, "export name")


class SomConfig(StrictModel):
    rows: int = Field(default=6, ge=1)
    cols: int = Field(default=6, ge=1)
    sigma: float = Field(default=1.0, gt=0)
    learning_rate: float = Field(default=0.5, gt=0)
    iterations: int = Field(default=5_000, ge=1)
    sample_size: int = Field(default=100_000, ge=10, description="Rows sampled for training.")
    batch_rows: int = Field(default=200_000, ge=1_000, description="Rows per BMU batch.")
    seed: int = 0
    missing: Literal["drop", "mean"] = Field(
        default="drop", description="Rows with missing values: drop them or fill with the mean."
    )


#: Bandwidths out to which the gaussian kernel weights observations (see gwpca).
DEFAULT_GAUSSIAN_REACH = 8.0


class GwpcaConfig(StrictModel):
    kernel: Literal["bisquare", "gaussian", "gaussian_knn"] = Field(
        default="bisquare",
        description="GWmodel's bisquare or gaussian; gaussian_knn weights only the observations "
        "within h (the k nearest), not GWmodel's definition.",
    )
    gaussian_reach: float = Field(
        default=DEFAULT_GAUSSIAN_REACH,
        ge=3,
        description="The gaussian weights every observation within this many bandwidths; the "
        "rest weigh < exp(-reach²/2) each (8: 1.3e-14), below the results' precision.",
    )
    adaptive: bool = Field(default=True, description="Bandwidth as k nearest neighbours.")
    bandwidth: float = Field(default=200, gt=0, description="k (adaptive) or a distance (km).")
    components: int = Field(default=2, ge=1)
    subsample: int = Field(default=1, ge=1, description="Evaluate every n-th cell (grid stride).")
    max_points: int | None = Field(default=None, ge=1, description="Cap on evaluation points.")
    batch_points: int = Field(default=2_000, ge=1)
    select_bandwidth: bool = Field(default=False, description="Cross-validate the bandwidth.")
    workers: int = Field(default=1, ge=1, description="Threads computing batches of points.")
    standardize: bool = Field(
        default=True, description="z-score every column first (PCA on the correlation matrix)."
    )
    max_neighbours: int = Field(
        default=5_000,
        ge=8,
        description="Neighbours per point held at once (more are added in blocks of this "
        "size; the result does not change) and the adaptive CV search's upper bound.",
    )
    cv_score: Literal["gwmodel", "squares"] = Field(
        default="gwmodel",
        description="CV residual score: GWmodel's (sum of residuals)² or the sum of squares.",
    )


class AnalysisConfig(StrictModel):
    methods: list[AnalysisMethod] = Field(default_factory=list)
    variables: list[str] | None = Field(
        default=None,
        description="Datasets analysed by som and gwpca (default: every non-categorical one); "
        "a categorical dataset listed here is one-hot encoded.",
    )
    max_categories: int = Field(
        default=64,
        ge=2,
        description="Most classes a one-hot encoded categorical variable may have.",
    )
    som: SomConfig = Field(default_factory=SomConfig)
    gwpca: GwpcaConfig = Field(default_factory=GwpcaConfig)
    read_batch_rows: int = Field(
        default=100_000, ge=1_000, description="Rows per Parquet read batch (stats, loading)."
    )


class TelemetryConfig(StrictModel):
    enabled: bool = True
    memory_interval: float = Field(default=1.0, gt=0, description="Seconds between samples.")
    flush_interval: float = Field(default=1.0, gt=0, description="Seconds between DB flushes.")
    batch_size: int = Field(default=5_000, ge=1)
    retention_days: int = Field(default=30, ge=1)


class RestartConfig(StrictModel):
    policy: Literal["never", "on-failure"] = "on-failure"
    max_retries: int = Field(default=3, ge=0)
    backoff: float = Field(default=2.0, gt=0, description="First retry delay; doubles each try.")
    max_backoff: float = Field(default=300.0, gt=0)


#: Dask's own default for ``distributed.worker.memory.terminate`` (the nanny restarts
#: a worker at this fraction of its limit); geod's memory section has no such level.
DASK_TERMINATE = 0.95
#: Scheduler address schemes Dask's comms speak.
DASK_ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc|ws|wss)://\S+$")


class LocalClusterConfig(StrictModel):
    """A Dask LocalCluster the run's worker starts and closes (tests, one big machine)."""

    n_workers: int = Field(default=2, ge=1, le=256, description="Dask worker processes.")
    threads_per_worker: int = Field(default=1, ge=1, le=256, description="Threads per process.")
    memory_limit: Size | None = Field(
        default=None,
        description="Memory limit of each Dask worker (bytes, '2GiB' or '25%' of RAM); "
        "default memory.budget split evenly over n_workers.",
    )


class DaskWorkerMemory(StrictModel):
    """Dask's ``distributed.worker.memory.*`` fractions (of each worker's memory limit).

    Unset fractions come from geod's ``memory:`` section, so one set of levels
    governs both executors: ``target`` (start spilling the oldest results to
    disk) = ``memory.calm``, ``spill`` (spill by process memory) = ``memory.warning``,
    ``pause`` (the worker stops starting tasks; geod logs it) = ``memory.critical``,
    ``terminate`` (the nanny restarts the worker; its tasks are retried) = 0.95.
    They apply to a LocalCluster; the workers of an existing cluster keep the
    settings they were started with.
    """

    target: float | None = Field(default=None, gt=0, le=1, description="Default memory.calm.")
    spill: float | None = Field(default=None, gt=0, le=1, description="Default memory.warning.")
    pause: float | None = Field(default=None, gt=0, le=1, description="Default memory.critical.")
    terminate: float = Field(default=DASK_TERMINATE, gt=0, le=1)

    def fractions(self, memory: MemoryConfig) -> dict[str, float]:
        """The four fractions, geod's levels filling the unset ones."""
        return {
            "target": self.target if self.target is not None else memory.calm,
            "spill": self.spill if self.spill is not None else memory.warning,
            "pause": self.pause if self.pause is not None else memory.critical,
            "terminate": self.terminate,
        }


class DaskConfig(StrictModel):
    """Where ``executor: dask`` runs its tasks: an existing scheduler or a LocalCluster."""

    scheduler_address: str | None = Field(
        default=None, description="An existing cluster's scheduler, e.g. tcp://host:8786."
    )
    local_cluster: LocalClusterConfig | None = Field(
        default=None, description="Start (and close) a LocalCluster instead of connecting."
    )
    connect_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to reach the scheduler before the run fails."
    )
    worker_memory: DaskWorkerMemory = Field(default_factory=DaskWorkerMemory)
    retries: int = Field(
        default=2,
        ge=0,
        description="Times a task that raised is resubmitted (a task lost with its worker is "
        "retried by the scheduler regardless, up to distributed.scheduler.allowed-failures).",
    )
    task_items: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="Most items (windows, merge parts, GWPCA batches) one Dask task computes. "
        "Consecutive items are batched so the scheduler's per-task cost (~10 ms: scheduling, "
        "pickling both ways) is paid once per batch, not once per ~1 ms window; 1 is one "
        "task per item. Also sizes how many items a stage hands the cluster ahead: each "
        "worker thread's batch (dask.task_items × the cluster's threads).",
    )
    task_seconds: float = Field(
        default=0.2,
        gt=0,
        description="Work one batched task aims at, in seconds on its worker: the batch size "
        "is this over the per-item time measured from finished tasks (starting at 1 item, at "
        "most task_items). Long enough to bury the per-task cost, short enough that a pause "
        "or a lost worker costs little and results arrive steadily for the writer.",
    )

    @field_validator("scheduler_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not DASK_ADDRESS.fullmatch(value):
            raise ValueError(
                f"{_excerpt(repr(value))} is not a scheduler address like tcp://host:8786"
            )
        return value

    @model_validator(mode="after")
    def _one_cluster(self) -> DaskConfig:
        if (self.scheduler_address is None) == (self.local_cluster is None):
            raise ValueError("dask: set exactly one of scheduler_address and local_cluster")
        return self


class PipelineConfig(StrictModel):
    """The whole ``config.yml``."""

    name: str = Field(default="run", description="Human name of the run.")
    datasets: list[DatasetConfig] = Field(min_length=1)
    grid: GridConfig = Field(default_factory=GridConfig)
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    resampling: ResamplingConfig = Field(default_factory=ResamplingConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    paths: PathsConfig = Field(default_factory=PathsConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    restart: RestartConfig = Field(default_factory=RestartConfig)
    executor: Literal["local", "dask"] = Field(
        default="local",
        description="Where resampling windows, merge blocks and GWPCA batches run: this "
        "process's threads, or the Dask cluster of the dask: section (see pipeline.executor).",
    )
    dask: DaskConfig | None = Field(default=None, description="Required with executor: dask.")
    report: bool = Field(
        default=True,
        description="Write a self-contained HTML report (report.html) into paths.output_dir "
        "at the end of every run, finished or failed (see pipeline.report).",
    )
    #: What each ``glob:`` entry of the file became (pipeline.globs), for ``geod check``.
    _expansions: list[Expansion] = PrivateAttr(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value, "run name")

    @model_validator(mode="after")
    def _cross_checks(self) -> PipelineConfig:
        names = [d.name for d in self.datasets]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise ValueError(f"datasets[{index}].name: {name!r} is used twice")
        for key, listed in (
            ("merge.require", self.merge.require),
            ("analysis.variables", self.analysis.variables or []),
        ):
            for item in listed:
                if item not in names:
                    raise ValueError(
                        f"{key}: {_excerpt(repr(item))} is not a dataset ({', '.join(names)})"
                    )
        if self.resampling.window_size % self.memory.min_window:
            raise ValueError(
                f"resampling.window_size: {self.resampling.window_size} is not a multiple of "
                f"memory.min_window ({self.memory.min_window})"
            )
        if self.executor == "dask" and self.dask is None:
            raise ValueError(
                "executor: dask needs a dask: section (scheduler_address or local_cluster)"
            )
        if self.dask is not None:
            fractions = self.dask.worker_memory.fractions(self.memory)
            if list(fractions.values()) != sorted(fractions.values()):
                raise ValueError(
                    "dask.worker_memory: target ≤ spill ≤ pause ≤ terminate must hold "
                    f"(with memory's levels filling unset ones: {fractions})"
                )
        if self.analysis.methods and not self.analysed_variables():
            raise ValueError(
                "analysis.variables: every dataset is categorical; list the ones to analyse "
                "(categorical ones are one-hot encoded)"
            )
        if self.analysis.methods and ExportFormat.parquet not in self.export.formats:
            raise ValueError(
                "analysis.methods: analysis reads the Parquet export; add parquet to export.formats"
            )
        return self

    @property
    def expansions(self) -> list[Expansion]:
        """The ``glob:`` entries of the file and the datasets each became (in order)."""
        return self._expansions

    def dataset(self, name: str) -> DatasetConfig:
        return next(d for d in self.datasets if d.name == name)

    def analysed_variables(self) -> list[str]:
        """Datasets som and gwpca analyse: ``analysis.variables``, else every non-categorical."""
        if self.analysis.variables:
            return list(self.analysis.variables)
        return [d.name for d in self.datasets if not d.categorical]

    def one_hot_variables(self) -> list[str]:
        """Analysed datasets that are categorical: one-hot encoded, never used as numbers."""
        return [name for name in self.analysed_variables() if self.dataset(name).categorical]


# --------------------------------------------------------------------------- loading


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the last key of ``loc`` (for did-you-mean hints)."""
    model: Any = PipelineConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", None)
        candidates = [annotation, *(args or ())]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if model is None:
            return None
    return model


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    path = _loc_to_path(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        owner = _model_at(loc)
        known = []
        if owner is not None:
            for name, field in owner.model_fields.items():
                known.append(field.alias or name)
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"{_excerpt(path)}: unknown key{suffix}"
    if kind == "enum":
        expected = error.get("ctx", {}).get("expected", "")
        expected = expected.replace("'", "").replace(" or ", ", ")
        return f"{_excerpt(path)}: {_excerpt(repr(error['input']))} is not one of {expected}"
    if kind == "missing":
        return f"{path}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    path = _excerpt(path)
    if message.startswith(
        tuple(
            f"{p}" for p in ("datasets[", "merge.", "analysis.", "resampling.", "dask", "executor")
        )
    ):
        return message
    return f"{path}: {message}" if path else message


def format_validation_error(
    exc: ValidationError, source: str, origin: dict[int, int] | None = None
) -> str:
    """One line per problem, prefixed by the config file; the first line leads.

    ``origin`` maps a dataset's index after glob expansion to its entry in the
    file, so a mistake in a ``glob:`` entry is reported where the user wrote it.
    """
    errors = exc.errors()
    if origin:
        for error in errors:
            loc = error["loc"]
            if len(loc) > 1 and loc[0] == "datasets" and isinstance(loc[1], int):
                error["loc"] = (loc[0], origin.get(loc[1], loc[1]), *loc[2:])
    return "; ".join(f"{source}: {_describe(e)}" for e in errors)


def in_pseudo_filesystem(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (taken literally, not resolved) lies under /proc, /sys or /dev.

    ``/proc/self/fd/N`` resolved by the daemon would name the daemon's own open
    files, and the kernel's files are never rasters; such paths are refused
    before anything follows them.
    """
    parts = Path(os.path.normpath(os.path.abspath(path))).parts
    return len(parts) > 1 and parts[1] in PSEUDO_FILESYSTEMS


def _resolve_paths(config: PipelineConfig, base: Path, source: str) -> PipelineConfig:
    for index, dataset in enumerate(config.datasets):
        local = local_file(dataset.path)
        if local is not None and in_pseudo_filesystem(base / local):
            raise ConfigError(
                f"{source}: datasets[{index}].path: {_excerpt(str(dataset.path))} is a device or "
                "kernel file, expected a raster file"
            )
        dataset.path = resolve_path(dataset.path, base)
    config.paths.work_dir = (base / config.paths.work_dir).resolve()
    config.paths.output_dir = (base / config.paths.output_dir).resolve()
    return config


def _looks_like_config(data: Any) -> bool:
    """A mapping with at least one top-level key that is, or nearly is, a config section.

    Near misses (``datasetz:``) still get the did-you-mean answer; a file none of
    whose keys resemble a section is not a config, and is not quoted back.
    """
    if not isinstance(data, dict):
        return False
    sections = [field.alias or name for name, field in PipelineConfig.model_fields.items()]
    return any(
        isinstance(key, str) and difflib.get_close_matches(key, sections, n=1) for key in data
    )


def parse_config(data: Any, source: str = "config", base: Path | None = None) -> PipelineConfig:
    """Validate a mapping; relative paths resolve against ``base`` (the config's folder)."""
    if not _looks_like_config(data):
        # Whatever else the file is (a password file, a log), its content stays out of the error.
        raise ConfigError(f"{source}: {NOT_A_CONFIG}")
    base = base or Path.cwd()
    try:
        expanded = expand(data.get("datasets"), base)
    except GlobError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if expanded.expansions:
        data = {**data, "datasets": expanded.datasets}
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, expanded.origin)) from None
    config._expansions = expanded.expansions
    return _resolve_paths(config, base, source)


def read_capped(path: Path, error: type[ValueError] = ConfigError) -> bytes:
    """The bytes of a regular file no larger than ``MAX_CONFIG_BYTES``.

    Opened non-blocking and checked with ``fstat`` on the open descriptor, so a
    FIFO, ``/dev/zero`` or a file swapped in after a check is refused at once
    instead of hanging or filling memory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except ValueError:  # an embedded NUL byte
        raise error(f"{_excerpt(repr(str(path)))}: a path cannot contain a NUL byte") from None
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except PermissionError:
        raise error(f"{path}: permission denied") from None
    except OSError as exc:
        raise error(f"{path}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise error(f"{path}: is a directory, expected a YAML file")
        if not stat.S_ISREG(mode):
            raise error(f"{path}: not a regular file, expected a YAML file")
        data = b""
        while len(data) <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise error(f"{path}: too large for a config file (limit {MAX_CONFIG_BYTES} bytes)")
    return data


def read_yaml(path: Path, error: type[ValueError] = ConfigError) -> Any:
    """Parse a YAML file; unreadable files and syntax errors become one ``error`` line."""
    return parse_yaml(read_capped(path, error), path, error)


def parse_yaml(data: bytes, path: Path, error: type[ValueError] = ConfigError) -> Any:
    """Parse YAML bytes read from ``path``; syntax errors become one ``error`` line."""
    try:
        return yaml.safe_load(data.decode())
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise error(f"{path}:{where}: {_excerpt(problem)}") from None


def expand_globs_in(content: bytes, path: Path) -> bytes:
    """The config text with its ``glob:`` entries expanded (unchanged if it has none).

    A root daemon has a member's config read by a child running as that member;
    the child expands the globs too, so the files a member's run gets are the
    ones the member can list, never the daemon's view of a folder.
    """
    try:
        data = parse_yaml(content, path)
    except ConfigError:
        return content  # the daemon phrases it as it would any unreadable config
    if not isinstance(data, dict):
        return content
    try:
        expanded = expand(data.get("datasets"), path.resolve().parent)
    except GlobError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not expanded.expansions:
        return content
    return yaml.safe_dump({**data, "datasets": expanded.datasets}, sort_keys=False).encode()


def load_config(
    path: str | os.PathLike[str], check_files: bool = True, content: bytes | None = None
) -> PipelineConfig:
    """Read and validate ``config.yml``; with ``check_files``, every input must exist.

    ``content`` is the file's bytes when someone else read it (the daemon has a
    client's configs read with that client's permissions).
    """
    path = Path(path)
    data = read_yaml(path) if content is None else parse_yaml(content, path)
    config = parse_config(data, str(path), path.resolve().parent)
    if check_files:
        for index, dataset in enumerate(config.datasets):
            local = local_file(dataset.path)
            if local is not None and not Path(local).exists():
                raise ConfigError(f"{path}: datasets[{index}].path: {dataset.path} does not exist")
    return config


def dump_config(config: PipelineConfig) -> str:
    """YAML of a resolved config (absolute paths), as frozen into a run directory."""
    data = config.model_dump(mode="json", by_alias=True)
    return yaml.safe_dump(data, sort_keys=False)
