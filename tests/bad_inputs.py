"""The bad-input table: every input a user can get wrong, and the one line geod answers.

Each :class:`BadInput` builds a real config (and the real broken file it points
at) and names the error it must produce. :func:`check_cli` runs the installed
``geod`` verbs on it; :func:`check_daemon` submits it to a live daemon. Both
insist on what the README promises for bad input: one line naming what and
where, a non-zero exit (or a failed run), nothing under a final output name, and
the daemon still answering. Raster files come from the catalog tests' builders
(real GeoTIFFs written by GDAL, then damaged); config mistakes are real YAML.

Used by tests/test_bad_inputs.py (which bench/faults.py runs for its summary).
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import subprocess
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tests import test_catalog as rasters
from tests.conftest import REPO
from tests.daemon_harness import DaemonHarness

GEOD = str(Path(sysconfig.get_path("scripts")) / "geod")
#: A coarse grid and no analysis: a good run takes seconds, a bad one fails at once.
SECTIONS: dict[str, Any] = {
    "grid": {"crs": "EPSG:4326", "resolution": 0.5, "bounds": [-180, -90, 180, 90]},
    "resampling": {"window_size": 256, "threads": 1},
    "export": {"formats": ["parquet", "csv"], "name": "table"},
    "analysis": {"methods": []},
    "restart": {"policy": "never"},
}
#: Final names an export could have published (none may exist after a bad input).
FINAL_NAMES = ("table.parquet", "table.csv")
#: Small enough that the CSV of one 0.5° layer (~2 MB) cannot fit: the disk fills mid-export.
FULL_DISK_BYTES = 256 * 1024
#: A failed bad-input run and the valid run beside it, on a loaded machine.
RUN_TIMEOUT = 180.0
#: Bound for a geod verb (Python and GDAL start-up on a loaded 2-core machine).
CLI_TIMEOUT = 120.0
DEMO_LAYER = "richness_05deg.tif"


def base_config(tmp: Path, demo: Path) -> dict[str, Any]:
    """A valid one-dataset config writing under ``tmp``."""
    return {
        "name": "bad-input",
        "datasets": [{"name": "richness", "path": str(demo / DEMO_LAYER)}],
        "paths": {"work_dir": str(tmp / "work"), "output_dir": str(tmp / "out")},
        **copy.deepcopy(SECTIONS),
    }


def write(tmp: Path, data: dict[str, Any]) -> Path:
    path = tmp / "config.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def raster_case(builder: Callable[[Path], tuple[Path, dict[str, Any]]]) -> Builder:
    """A config whose second dataset is the broken file ``builder`` makes."""

    def build(tmp: Path, demo: Path) -> Path:
        path, options = builder(tmp)
        data = base_config(tmp, demo)
        data["datasets"].append({"name": "layer", "path": str(path), **options})
        return write(tmp, data)

    build.__name__ = builder.__name__
    return build


def config_case(change: Callable[[dict[str, Any], Path], None]) -> Builder:
    def build(tmp: Path, demo: Path) -> Path:
        data = base_config(tmp, demo)
        change(data, tmp)
        return write(tmp, data)

    return build


Builder = Callable[[Path, Path], Path]


@dataclass(frozen=True)
class BadInput:
    """One row of the table (README, troubleshooting)."""

    name: str
    build: Builder
    #: A substring of the one-line error.
    expected: str
    #: ``geod`` verbs that must reject it (``check`` validates only; ``run`` runs it).
    verbs: tuple[str, ...] = ("check",)
    #: A mount the case needs at ``tmp/out`` ("ro" read-only, "full" a tiny tmpfs).
    mount: str | None = None
    #: Where the line names the problem (defaults to the config file or the raster).
    names: str | None = None


def _typo(data: dict[str, Any], _tmp: Path) -> None:
    data["grdi"] = data.pop("grid")


def _wrong_type(data: dict[str, Any], _tmp: Path) -> None:
    data["resampling"]["window_size"] = "large"


def _unknown_method(data: dict[str, Any], _tmp: Path) -> None:
    data["analysis"]["methods"] = ["kmeans"]


def _traversal(data: dict[str, Any], _tmp: Path) -> None:
    data["export"]["name"] = "../../etc/cron.d/evil"


def _shell_in_name(data: dict[str, Any], _tmp: Path) -> None:
    data["name"] = "demo; rm -rf ~"


def _shell_in_dataset(data: dict[str, Any], _tmp: Path) -> None:
    data["datasets"][0]["name"] = "a$(reboot)"


def _shell_in_path(data: dict[str, Any], tmp: Path) -> None:
    data["datasets"][0]["path"] = str(tmp / "x`touch pwned`;$(id).tif")


def _duplicate(data: dict[str, Any], _tmp: Path) -> None:
    data["datasets"].append(dict(data["datasets"][0]))


def _output_dir(data: dict[str, Any], _tmp: Path) -> None:
    """The output directory is a mount point the case mounts (see BadInput.mount)."""


CASES: tuple[BadInput, ...] = (
    BadInput("missing file", raster_case(rasters.missing), "nowhere.tif does not exist"),
    BadInput(
        "directory instead of file",
        raster_case(rasters.directory),
        "is a directory, expected a raster file",
    ),
    BadInput("empty file", raster_case(rasters.empty), "file is empty (0 bytes)"),
    BadInput(
        "truncated GeoTIFF",
        raster_case(rasters.truncated),
        "truncated GeoTIFF: its last block ends at byte",
        verbs=("check", "run"),
    ),
    BadInput(
        "random bytes named .tif",
        raster_case(rasters.random_bytes),
        "not a raster GDAL can read (unrecognised file format)",
    ),
    BadInput("raster without CRS", raster_case(rasters.no_crs), "has no CRS"),
    BadInput("0×N raster", raster_case(rasters.zero_width_tiff), "zero-size raster"),
    BadInput(
        "unsupported dtype (complex)",
        raster_case(rasters.complex_dtype),
        "unsupported data type complex64",
    ),
    BadInput(
        "huge declared size in header",
        raster_case(rasters.huge_declared_size),
        "1,000,000 × 1,000,000 = 1,000,000,000,000 cells exceeds",
    ),
    BadInput("config key typo", config_case(_typo), "did you mean 'grid'"),
    BadInput("config wrong type", config_case(_wrong_type), "resampling.window_size"),
    BadInput("unknown analysis method", config_case(_unknown_method), "kmeans"),
    BadInput("path traversal in output name", config_case(_traversal), "export.name"),
    BadInput("shell metacharacters in run name", config_case(_shell_in_name), "name"),
    BadInput("shell metacharacters in dataset name", config_case(_shell_in_dataset), "a$(reboot)"),
    BadInput(
        "shell metacharacters in a path",
        config_case(_shell_in_path),
        "x`touch pwned`;$(id).tif",
    ),
    BadInput("same dataset name twice", config_case(_duplicate), "richness"),
    BadInput(
        "output dir not writable",
        config_case(_output_dir),
        "Read-only file system",
        verbs=("run",),
        mount="ro",
    ),
    BadInput(
        "disk full during export",
        config_case(_output_dir),
        "disk full while writing",
        verbs=("run",),
        mount="full",
    ),
)


@contextlib.contextmanager
def prepared(case: BadInput, tmp: Path, demo: Path) -> Iterator[Path]:
    """The case's config in ``tmp``, with its output mount in place while in use."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = case.build(tmp, demo)
    out = tmp / "out"
    if case.mount is None:
        yield config
        return
    out.mkdir(exist_ok=True)
    options = "ro,size=64k" if case.mount == "ro" else f"size={FULL_DISK_BYTES}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(out)], check=True)
    try:
        yield config
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False)


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


def geod(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GEOD, *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        cwd=REPO,
        env={k: v for k, v in (env or os.environ).items() if not k.startswith("GEOD_")},
    )


def error_line(stderr: str) -> str:
    """The last non-empty stderr line (``geod run`` may print progress before it)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def published(tmp: Path) -> list[Path]:
    """Files under a final output name, or any temporary export file, left in ``tmp/out``."""
    out = tmp / "out"
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.name in FINAL_NAMES or ".partial-" in p.name)


def check_cli(case: BadInput, verb: str, config: Path, tmp: Path) -> list[str]:
    """Problems with how ``geod VERB`` rejected the case (empty: rejected cleanly)."""
    result = geod(verb, str(config))
    problems = []
    line = error_line(result.stderr)
    if result.returncode == 0:
        problems.append(f"geod {verb} exited 0")
    if case.expected not in line:
        problems.append(f"geod {verb}: {case.expected!r} not in {line!r}")
    if verb == "check" and len([x for x in result.stderr.splitlines() if x.strip()]) != 1:
        problems.append(f"geod check printed more than one line: {result.stderr!r}")
    if "Traceback" in result.stderr:
        problems.append(f"geod {verb} printed a traceback")
    leftover = published(tmp)
    if leftover:
        problems.append(f"geod {verb} left {leftover}")
    return problems


def daemon_problems(case: BadInput, message: str, tmp: Path) -> list[str]:
    problems = []
    if case.expected not in message:
        problems.append(f"daemon: {case.expected!r} not in {message!r}")
    if "\n" in message:
        problems.append(f"daemon: error is more than one line: {message!r}")
    leftover = published(tmp)
    if leftover:
        problems.append(f"daemon run left {leftover}")
    return problems


def nan_only_table(tmp: Path, demo: Path) -> Path:
    """A config with a NaN-only layer next to a real one (valid: an all-null column)."""
    path = rasters.write_tif(
        tmp / "nan.tif", np.full((64, 64), np.nan, "float32"), nodata=float("nan")
    )
    data = base_config(tmp, demo)
    data["datasets"].append({"name": "empty", "path": str(path)})
    return write(tmp, data)


def through_daemon(daemon: DaemonHarness, config: Path) -> str:
    """``geod start --socket``: the one-line refusal, or the failed run's error."""
    result = geod("start", "--socket", str(daemon.socket_path), str(config))
    if result.returncode != 0:
        assert result.stdout == "", "nothing on stdout when no run was submitted"
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        return error_line(result.stderr)
    run_id = result.stdout.strip()
    run = daemon.wait(run_id, lambda r: r["state"] in ("done", "failed", "killed"), RUN_TIMEOUT)
    assert run["state"] == "failed", run
    assert run["pid"] is None and run["exit_code"] != 0
    return str(run["error"])
