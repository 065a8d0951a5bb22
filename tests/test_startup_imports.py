"""`geod` verbs and the worker start without libraries they do not use.

A status query runs often (scripts, prompts, watch loops); importing rasterio,
zarr or scipy would cost it most of a second on every call. The check runs in
a fresh interpreter so nothing this test process imported counts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from pipeline.contract import SOCKET_ENV
from supervisor.cli.main import COMMANDS, cli
from tests.conftest import write_demo_config

#: Help widths the command table's short help is checked at (narrow to wide terminals).
SHORT_HELP_LIMITS = (20, 45, 60, 80, 120, 200)

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


_RUN_CLI_PROBE = """
import json, sys
sys.argv = ["geod", "run", "--help"]
from supervisor.cli import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("numpy", *HEAVY))))
"""


def test_geod_run_cli_leaves_the_data_stack_to_its_worker() -> None:
    """``geod run`` only validates and shows progress: numpy and the rest load in the worker.

    Every verb imported numpy through the map command's model (~0.1 s of CPU per
    command, measured with ``python -X importtime``); it now loads when a map is drawn.
    """
    script = f"HEAVY = {HEAVY!r}\n{_RUN_CLI_PROBE}"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


#: What no client-side verb needs: the data path, its columnar/array stack and Dask.
DATA_STACK = (*HEAVY, "pyarrow", "dask", "distributed", "numpy", "minisom", "matplotlib")


def _imported(stderr: str) -> set[str]:
    """Every module a ``python -X importtime`` run imported, from its ``import time:`` lines."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":  # the header line
                names.add(name)
    return names


def _geod(*args: str, env: dict[str, str], columns: int | None = None) -> tuple[int, str, str]:
    """``geod ARGS`` in a fresh interpreter under ``-X importtime``: (exit code, stdout, stderr)."""
    if columns is not None:
        env = {**env, "COLUMNS": str(columns)}
    result = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-c",
            "from supervisor.cli import main; main()",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    return result.returncode, result.stdout, result.stderr


def _roots(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


@pytest.fixture
def no_daemon(tmp_path: Path) -> dict[str, str]:
    """An environment whose socket has no daemon behind it (``geod`` exits 3)."""
    return {
        SOCKET_ENV: str(tmp_path / "absent.sock"),
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }


def test_help_imports_no_verb(no_daemon: dict[str, str]) -> None:
    """``geod --help`` lists the verbs from the table: no verb module, pydantic or rich loads."""
    code, _, stderr = _geod("--help", env=no_daemon)
    assert code == 0, stderr
    imported = _imported(stderr)
    assert _roots(imported) & {*DATA_STACK, "pydantic", "rich", "psycopg2", "yaml"} == set()
    assert {name for name in imported if name.startswith("pipeline")} == set()
    assert {name for name in imported if name.startswith("supervisor.cli.")} == {
        "supervisor.cli.main",
        "supervisor.cli.lazy",
    }


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("status", "some-run"),
        ("runs",),
        ("pause", "some-run"),
        ("resume", "--all"),
        ("kill", "some-run"),
        ("logs", "some-run"),
        ("logs", "-f", "some-run"),
        ("stop",),
    ],
    ids=" ".join,
)
def test_daemon_verbs_import_none_of_the_data_path(
    args: tuple[str, ...], no_daemon: dict[str, str]
) -> None:
    """The verbs that only talk to the daemon fail cleanly (exit 3) without the data stack.

    ``$GEOD_SOCKET`` names the socket, so the settings (yaml, psutil) are not read either,
    except by ``stop``, which also waits the daemon's configured kill grace.
    """
    code, _, stderr = _geod(*args, env=no_daemon)
    assert code == 3, stderr
    imported = _imported(stderr)
    assert _roots(imported) & set(DATA_STACK) == set()
    assert ("supervisor.settings" in imported) == (args[0] == "stop")


def test_start_validates_its_config_without_the_data_path(
    tmp_path: Path, no_daemon: dict[str, str]
) -> None:
    """``geod start`` checks the config client-side (pydantic) before any daemon; no rasterio."""
    config = tmp_path / "bad.yml"
    config.write_text("datasets: []\nno_such_section: 1\n")
    code, _, stderr = _geod("start", str(config), env=no_daemon)
    assert code == 2, stderr
    imported = _imported(stderr)
    assert "pipeline.config" in imported  # it did validate
    assert _roots(imported) & set(DATA_STACK) == set()


def test_help_lists_every_verb_with_its_help(no_daemon: dict[str, str]) -> None:
    """The lazy listing still shows each verb with its one-line help, as click would.

    click caps help at 80 columns, so a long line ends in "..." after a prefix of it.
    """
    code, stdout, stderr = _geod("--help", env=no_daemon)
    assert code == 0, stderr
    listing = stdout.split("Commands:", 1)[1]
    rows = dict(line.strip().split(None, 1) for line in listing.strip().splitlines())
    assert sorted(rows) == sorted(COMMANDS)
    for name, shown in rows.items():
        full = COMMANDS[name].help
        assert shown == full or (shown.endswith("...") and full.startswith(shown[:-3])), name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_table_matches_each_verb(name: str) -> None:
    """Each table entry loads the verb of that name, and its help is the verb's short help.

    ``geod --help`` prints the table's help without importing the verb, so a docstring
    edit that is not copied into ``COMMANDS`` would otherwise go unnoticed.
    """
    command = cli.get_command(click.Context(cli), name)
    assert command is not None and command.name == name
    for limit in SHORT_HELP_LIMITS:
        assert COMMANDS[name].short_help(limit) == command.get_short_help_str(limit)


_STAGE_PROBE = """
import json, sys
from pipeline.worker import main
code = main([CONFIG, "--stages", STAGES])
print(json.dumps({"code": code, "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
"""


@pytest.mark.parametrize(
    ("stages", "absent"),
    [
        ("catalog", ("zarr", "pyarrow", "scipy", "minisom", "matplotlib", "h5py")),
        # scipy's sparse matrices compute separable windows; its analysis modules are absent.
        ("catalog,resample", ("pyarrow", "minisom", "matplotlib", "h5py")),
    ],
)
def test_worker_imports_a_stage_when_it_runs(
    stages: str, absent: tuple[str, ...], tmp_path: Path, demo_dir: Path
) -> None:
    """A worker run imports only the stages it runs: catalog alone loads no zarr nor scipy,
    and catalog+resample none of export's (pyarrow, h5py) or analysis's (minisom)."""
    # No end-of-run report: it draws with matplotlib whatever stages ran.
    config = write_demo_config(tmp_path, demo_dir, report=False)
    script = f"CONFIG = {str(config)!r}\nSTAGES = {stages!r}\n{_STAGE_PROBE}"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == 0, result.stderr
    assert set(report["loaded"]) & set(absent) == set()
