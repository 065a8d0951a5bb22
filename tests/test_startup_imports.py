"""`geod status` starts without the data path's heavy libraries.

A status query runs often (scripts, prompts, watch loops); importing rasterio,
zarr or scipy would cost it most of a second on every call. The check runs in
a fresh interpreter so nothing this test process imported counts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline.contract import SOCKET_ENV

#: Libraries only the data path needs.
HEAVY = ("rasterio", "zarr", "scipy", "xarray", "numcodecs")

_PROBE = """
import json, sys
sys.argv = ["geod", "status"]
from supervisor.cli import main
# What `status` renders with once a daemon answers (imported on that path).
import supervisor.cli.render, supervisor.client
try:
    main()
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "loaded": sorted(m for m in sys.modules if m in HEAVY)}))
"""


def test_status_imports_none_of_the_data_path(tmp_path: Path) -> None:
    env = {
        SOCKET_ENV: str(tmp_path / "absent.sock"),
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    script = f"HEAVY = {HEAVY!r}\n{_PROBE}"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == 3, result.stderr  # no daemon on that socket: exit 3
    assert report["loaded"] == []


_LOCAL_PROBE = """
import json, sys
from pipeline.config import parse_config
from pipeline.events import EventSink
from pipeline.executor import open_executor
import pipeline.worker, pipeline.runner, pipeline.export, pipeline.analysis.gwpca
config = parse_config({"datasets": [{"name": "a", "path": "a.tif"}]}, "config.yml")
executor = open_executor(config, EventSink())
print(json.dumps({"executor": executor.name,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in DASK)}))
"""


def test_local_executor_imports_no_dask() -> None:
    """``executor: local`` (the default) runs the whole data path without importing Dask."""
    script = f"DASK = {('dask', 'distributed')!r}\n{_LOCAL_PROBE}"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"executor": "local", "loaded": []}, result.stderr


#: Libraries only the export, analysis and report stages need.
LATER_STAGES = ("matplotlib", "pyarrow", "h5py", "h5netcdf", "psycopg2", "sklearn", "scipy")

_WORKER_PROBE = """
import json, sys
import pipeline.worker
from pipeline.runner import run_pipeline
print(json.dumps(sorted(m for m in sys.modules if m in LATER_STAGES)))
"""


def test_worker_imports_no_later_stage_before_it_runs() -> None:
    """A catalog+resample run's memory carries none of the export/analysis/report stack.

    Measured with ``python -X importtime`` and RSS: those imports were ~110 MiB of
    a worker's ~190 MiB before the first window, and the memory budget pays for them.
    """
    script = f"LATER_STAGES = {LATER_STAGES!r}\n{_WORKER_PROBE}"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
