"""Config validation: one clear line with the key path for every kind of mistake."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from pipeline.config import (
    MAX_CONFIG_BYTES,
    MAX_EXCERPT_CHARS,
    ConfigError,
    load_config,
    parse_config,
    parse_size,
)

BASE = {"datasets": [{"name": "a", "path": "a.tif"}]}


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "config.yml")
    message = str(info.value)
    assert "\n" not in message
    return message


def _with(**sections: object) -> dict:
    return {**BASE, **sections}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {
                "datasets": [
                    {"name": "a", "path": "a.tif"},
                    {"name": "b", "path": "b.tif"},
                    {"name": "c", "path": "c.tif", "resampling": "avg"},
                ]
            },
            "config.yml: datasets[2].resampling: 'avg' is not one of average, sum, mode, min, "
            "max, med, q1, q3, nearest, bilinear, cubic",
        ),
        (
            {"datasets": [{"name": "a", "path": "a.tif", "resampleing": "average"}]},
            "datasets[0].resampleing: unknown key (did you mean 'resampling'?)",
        ),
        (_with(memroy={}), "memroy: unknown key (did you mean 'memory'?)"),
        (_with(memory={"warnng": 0.5}), "memory.warnng: unknown key (did you mean 'warning'?)"),
        (_with(resampling={"window_size": "big"}), "resampling.window_size: Input should be"),
        (_with(resampling={"window_size": 1000}), "is not a multiple of memory.min_window"),
        (_with(memory={"budget": "lots"}), "memory.budget: 'lots' is not a size"),
        (_with(memory={"warning": 0.95}), "memory.warning must be below memory.critical"),
        (_with(grid={"bounds": [10, 0, -10, 5]}), "grid.bounds: bounds must be west < east"),
        ({"datasets": []}, "datasets: List should have at least 1 item"),
        ({}, "not a geod config (expected a YAML mapping with datasets:)"),
        (
            {"datasets": [{"name": "a", "path": "a.tif"}, {"name": "a", "path": "b.tif"}]},
            "datasets[1].name: 'a' is used twice",
        ),
        (
            {"datasets": [{"name": "a; rm -rf /", "path": "a.tif"}]},
            "datasets[0].name: 'a; rm -rf /' is not a valid dataset name",
        ),
        (_with(export={"name": "../../etc/passwd"}), "export.name: '../../etc/passwd' is not a"),
        (_with(analysis={"methods": ["pca; ls"]}), "analysis.methods[0]: 'pca; ls' is not one of"),
        (_with(merge={"require": ["zz"]}), "merge.require: 'zz' is not a dataset"),
        (
            _with(export={"postgres": {"table": "t; DROP TABLE x"}}),
            "export.postgres.table: 't; DROP TABLE x' is not a plain lower-case SQL identifier",
        ),
        (
            _with(analysis={"methods": ["som"]}, export={"formats": ["csv"]}),
            "analysis reads the Parquet export",
        ),
    ],
)
def test_config_errors_name_the_key(data: dict, expected: str) -> None:
    assert expected in _error(data)


def test_defaults_are_the_global_one_arcminute_grid() -> None:
    config = parse_config(BASE)
    assert config.grid.crs == "EPSG:4326"
    assert config.grid.resolution == pytest.approx((1 / 60, 1 / 60))
    assert config.grid.bounds == (-180, -90, 180, 90)
    assert config.resampling.window_size == 2048
    assert (config.memory.warning, config.memory.critical, config.memory.min_window) == (
        0.8,
        0.9,
        256,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4GiB", 4 * 1024**3), ("512 MB", 512 * 1024**2), ("50%", 0.5), (1024, 1024)],
)
def test_sizes(text: object, expected: float) -> None:
    assert parse_size(text) == expected


def test_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.tif").write_bytes(b"")
    path = tmp_path / "sub" / "config.yml"
    path.write_text(yaml.safe_dump({"datasets": [{"name": "a", "path": "a.tif"}]}))
    config = load_config(path)
    assert config.datasets[0].path == tmp_path / "sub" / "a.tif"
    assert config.paths.work_dir == tmp_path / "sub" / "runs" / "work"


def test_missing_input_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"datasets": [{"name": "a", "path": "nope.tif"}]}))
    with pytest.raises(ConfigError, match=r"datasets\[0\]\.path: .*nope\.tif does not exist"):
        load_config(path)


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text("datasets:\n  - name: a\n   path: [\n")
    with pytest.raises(ConfigError, match=r"config\.yml: line \d+"):
        load_config(path)


def test_a_file_that_is_not_a_config_is_not_quoted(tmp_path: Path) -> None:
    path = tmp_path / "shadow"
    path.write_text("root:$6$secrethash:20228:0:99999:7:::\nbin:*:20228:0:99999:7:::\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: not a geod config (expected a YAML mapping with datasets:)"
    )


def test_excerpts_of_file_content_are_capped() -> None:
    long_key = "datasetz" + "x" * 5000
    long_name = "a" * 5000 + "; rm"
    message = _error({**BASE, long_key: 1}) + _error(
        {"datasets": [{"name": long_name, "path": "a.tif"}]}
    )
    assert "x" * MAX_EXCERPT_CHARS not in message and "a" * MAX_EXCERPT_CHARS not in message
    assert len(message) < 6 * MAX_EXCERPT_CHARS


@pytest.mark.parametrize("kind", ["device", "fifo", "huge"])
def test_config_must_be_a_small_regular_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "config.yml"
    if kind == "device":
        path = Path("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)  # opening it for reading would block forever without O_NONBLOCK
    else:
        path.write_text(yaml.safe_dump(BASE) + "#" * MAX_CONFIG_BYTES)
    expected = "too large for a config file" if kind == "huge" else "not a regular file"
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


@pytest.mark.parametrize("path", ["/proc/self/fd/0", "/dev/zero", "../../../../../../proc/1/mem"])
def test_dataset_in_a_pseudo_filesystem_refused_before_resolution(path: str) -> None:
    """Resolved in the daemon, /proc/self/fd/N would name the daemon's own open files."""
    message = _error({"datasets": [{"name": "a", "path": path}]})
    assert message == (
        f"config.yml: datasets[0].path: {path} is a device or kernel file, expected a raster file"
    )


def test_root_config_is_valid() -> None:
    config = load_config(Path(__file__).parent.parent / "config.yml", check_files=False)
    assert [d.name for d in config.datasets] == ["richness", "endemism", "landcover", "threat"]


LOCAL_CLUSTER = {"local_cluster": {"n_workers": 2}}


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"executor": "dusk"}, "config.yml: executor: Input should be 'local' or 'dask'"),
        (
            {"executor": "dask"},
            "config.yml: executor: dask needs a dask: section (scheduler_address or local_cluster)",
        ),
        (
            {"executor": "dask", "dask": {}},
            "config.yml: dask: set exactly one of scheduler_address and local_cluster",
        ),
        (
            {"executor": "dask", "dask": {"local_cluster": {"n_workers": 0}}},
            "config.yml: dask.local_cluster.n_workers: Input should be greater than or equal to 1",
        ),
        (
            {"executor": "dask", "dask": {"local_cluster": {"n_wrkers": 2}}},
            "config.yml: dask.local_cluster.n_wrkers: unknown key (did you mean 'n_workers'?)",
        ),
        (
            {"executor": "dask", "dask": {"scheduler_address": "host:8786"}},
            "config.yml: dask.scheduler_address: 'host:8786' is not a scheduler address like "
            "tcp://host:8786",
        ),
        (
            {"executor": "dask", "dask": {**LOCAL_CLUSTER, "connect_timeout": 0}},
            "config.yml: dask.connect_timeout: Input should be greater than 0",
        ),
        (
            {"executor": "dask", "dask": {**LOCAL_CLUSTER, "worker_memory": {"target": 0.85}}},
            "config.yml: dask.worker_memory: target ≤ spill ≤ pause ≤ terminate must hold "
            "(with memory's levels filling unset ones: "
            "{'target': 0.85, 'spill': 0.8, 'pause': 0.9, 'terminate': 0.95})",
        ),
    ],
)
def test_executor_errors_name_the_key(sections: dict, expected: str) -> None:
    assert _error(_with(**sections)) == expected


def test_dask_worker_memory_follows_the_memory_section() -> None:
    config = parse_config(
        _with(
            executor="dask",
            dask={**LOCAL_CLUSTER, "worker_memory": {"terminate": 0.98}},
            memory={"calm": 0.6, "warning": 0.75, "critical": 0.85},
        ),
        "config.yml",
    )
    assert config.dask is not None and config.dask.connect_timeout == 10
    fractions = config.dask.worker_memory.fractions(config.memory)
    assert fractions == {"target": 0.6, "spill": 0.75, "pause": 0.85, "terminate": 0.98}
    assert parse_config(BASE, "config.yml").executor == "local"
