"""Dataset ``glob:`` entries: expansion, names, clashes and empty matches, on real files."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, dump_config, load_config
from tests.rasters import global_geotiff as _raster

REPO = Path(__file__).resolve().parent.parent
GEOD = str(Path(sys.executable).parent / "geod")


def _config(tmp_path: Path, datasets: list[dict]) -> Path:
    path = tmp_path / "config.yml"
    data = {"name": "g", "datasets": datasets, "grid": {"resolution": 10}}
    data["resampling"] = {"window_size": 256}
    path.write_text(yaml.safe_dump(data))
    return path


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_glob_expands_to_one_dataset_per_file_sorted_with_the_entry_keys(tmp_path: Path) -> None:
    for name in ("layers/b one.tif", "layers/a.tif", "layers/2020.tif", "layers/.a.tif.part"):
        _raster(tmp_path / name)
    (tmp_path / "layers" / "notes.txt").write_text("not matched")
    path = _config(
        tmp_path,
        [
            {"name": "fixed", "path": "layers/a.tif"},
            {"glob": "layers/*.tif", "resampling": "bilinear", "crs": "EPSG:4326"},
        ],
    )
    config = load_config(path)
    names = [d.name for d in config.datasets]
    assert names == ["fixed", "_2020", "a", "b_one"]
    for dataset in config.datasets[1:]:
        assert dataset.resampling == "bilinear" and dataset.crs == "EPSG:4326"
    assert config.datasets[3].path == (tmp_path / "layers" / "b one.tif").resolve()
    (expansion,) = config.expansions
    assert expansion.index == 1 and [n for n, _ in expansion.datasets] == names[1:]
    frozen = yaml.safe_load(dump_config(config))
    assert [d["name"] for d in frozen["datasets"]] == names
    assert all("glob" not in d for d in frozen["datasets"])
    # The frozen config loads as it is: no glob is expanded again later.
    (tmp_path / "frozen.yml").write_text(dump_config(config))
    assert [d.name for d in load_config(tmp_path / "frozen.yml").datasets] == names


def test_name_clash_between_two_files_names_both(tmp_path: Path) -> None:
    first = _raster(tmp_path / "x" / "tree cover.tif")
    second = _raster(tmp_path / "y" / "tree_cover.tif")
    message = _error(_config(tmp_path, [{"glob": "*/*.tif"}]))
    assert message == (
        f"{tmp_path / 'config.yml'}: datasets[0].glob: {first} and {second} both become "
        "dataset 'tree_cover'"
    )


def test_name_clash_with_an_explicit_dataset_or_another_glob(tmp_path: Path) -> None:
    _raster(tmp_path / "a" / "elev.tif")
    other = _raster(tmp_path / "b" / "elev.tif")
    message = _error(
        _config(tmp_path, [{"name": "elev", "path": "a/elev.tif"}, {"glob": "b/*.tif"}])
    )
    assert message.endswith(
        f"datasets[1].glob: {other} becomes dataset 'elev', the name of datasets[0]"
    )
    message = _error(_config(tmp_path, [{"glob": "a/*.tif"}, {"glob": "b/*.tif"}]))
    assert "both become dataset 'elev'" in message and str(other) in message


def test_empty_match_and_bad_entries_are_one_line_errors(tmp_path: Path) -> None:
    _raster(tmp_path / "a.tif")
    assert _error(_config(tmp_path, [{"glob": "layers/*.tif"}])).endswith(
        "datasets[0].glob: layers/*.tif matches no file"
    )
    assert "datasets[0].name: a glob: entry names its datasets" in _error(
        _config(tmp_path, [{"glob": "*.tif", "name": "x"}])
    )
    assert "datasets[0].path: a glob: entry takes" in _error(
        _config(tmp_path, [{"glob": "*.tif", "path": "a.tif"}])
    )
    # A mistake in the entry's other keys is reported at the entry the user wrote.
    assert "datasets[1].resampling: 'avg' is not one of" in _error(
        _config(tmp_path, [{"name": "x", "path": "a.tif"}, {"glob": "*.tif", "resampling": "avg"}])
    )


def test_vsi_glob_lists_through_gdal(tmp_path: Path) -> None:
    for name in ("layers/a.tif", "layers/b.tif", "layers/deep/c.tif"):
        _raster(tmp_path / name)
    archive = tmp_path / "layers.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for name in ("layers/a.tif", "layers/b.tif", "layers/deep/c.tif"):
            zipped.write(tmp_path / name, name)
    path = _config(tmp_path, [{"glob": f"/vsizip/{archive}/layers/*.tif"}])
    config = load_config(path)
    assert [(d.name, d.path) for d in config.datasets] == [
        ("a", f"/vsizip/{archive}/layers/a.tif"),
        ("b", f"/vsizip/{archive}/layers/b.tif"),
    ]
    assert _error(_config(tmp_path, [{"glob": f"/vsizip/{archive}/none/*.tif"}])).endswith(
        "matches no file"
    )


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GEOD, "check", str(config)], capture_output=True, text=True, cwd=REPO, timeout=120
    )


def test_geod_check_prints_the_expansion(tmp_path: Path) -> None:
    for name in ("layers/b.tif", "layers/a.tif"):
        _raster(tmp_path / name)
    result = _check(_config(tmp_path, [{"glob": "layers/*.tif"}]))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "  datasets[0] glob layers/*.tif: 2 datasets",
        f"    a ← {tmp_path / 'layers' / 'a.tif'}",
        f"    b ← {tmp_path / 'layers' / 'b.tif'}",
    ]
    result = _check(_config(tmp_path, [{"glob": "layers/*.tif"}, {"glob": "layers/a.tif"}]))
    assert result.returncode == 2
    assert result.stderr.strip().endswith("both become dataset 'a'")
