"""Which variables som and gwpca analyse: categorical datasets left out, or one-hot encoded."""

from __future__ import annotations

import json
import logging
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.analysis import AnalysisError, run_analysis
from pipeline.config import ConfigError, load_config, parse_config
from tests.analysis_support import CLASS_CODES, CLASS_COLUMN, COLUMNS, make_harness
from tests.conftest import write_demo_config

GEOD = str(Path(sysconfig.get_path("scripts")) / "geod")
FAST_SOM = {"iterations": 200, "sample_size": 500, "rows": 3, "cols": 3}


def test_categorical_dataset_is_exported_but_not_analysed_by_default(tmp_path: Path) -> None:
    h = make_harness(
        tmp_path,
        {"methods": ["gwpca", "som"], "som": FAST_SOM, "gwpca": {"bandwidth": 30}},
        classes=True,
    )
    assert CLASS_COLUMN in pq.read_schema(h.table).names
    run_analysis(h.ctx, h.table, h.grid, h.out, h.ctx.stage("analysis"))
    for method in ("gwpca", "som"):
        metrics = json.loads((h.out / f"{method}_metrics.json").read_text())
        assert metrics["columns"] == list(COLUMNS)
    local = pq.read_schema(h.out / "gwpca_local.parquet").names
    assert not [name for name in local if CLASS_COLUMN in name]


def test_listed_categorical_dataset_is_one_hot_encoded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    variables = ["a", "b", CLASS_COLUMN]
    h = make_harness(
        tmp_path,
        {
            "methods": ["gwpca", "som"],
            "variables": variables,
            "som": FAST_SOM,
            "gwpca": {"bandwidth": 30, "subsample": 3},
        },
        classes=True,
    )
    with caplog.at_level(logging.INFO, logger="geod.analysis"):
        run_analysis(h.ctx, h.table, h.grid, h.out, h.ctx.stage("analysis"))
    indicators = [f"{CLASS_COLUMN}_{code}" for code in CLASS_CODES]
    names = ["a", "b", *indicators]
    notes = [r.getMessage() for r in caplog.records if "one-hot" in r.getMessage()]
    assert len(notes) == 1 and f"{CLASS_COLUMN} is categorical" in notes[0]

    table = pq.read_table(h.table)
    raw = np.column_stack(
        [table.column(c).to_numpy(zero_copy_only=False).astype(float) for c in variables]
    )
    raw = raw[np.isfinite(raw).all(axis=1)]
    one_hot = (raw[:, 2:3] == np.array(CLASS_CODES)[None, :]).astype(float)
    x = np.column_stack([raw[:, :2], one_hot])
    z = (x - x.mean(axis=0)) / x.std(axis=0, ddof=1)
    expected = np.linalg.eigvalsh(np.cov(z.T, bias=True))[::-1]

    gwpca = json.loads((h.out / "gwpca_metrics.json").read_text())
    assert gwpca["columns"] == names
    np.testing.assert_allclose(gwpca["column_mean"], x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(gwpca["global_eigenvalues"], expected, rtol=1e-9, atol=1e-12)
    assert min(gwpca["global_eigenvalues"]) < 1e-9  # the indicators sum to one
    local = pq.read_schema(h.out / "gwpca_local.parquet").names
    assert all(f"pc1_{name}" in local for name in indicators)
    som = json.loads((h.out / "som_metrics.json").read_text())
    assert som["columns"] == names


def test_too_many_classes_is_one_clear_error(tmp_path: Path) -> None:
    h = make_harness(
        tmp_path,
        {"methods": ["gwpca"], "variables": ["a", CLASS_COLUMN], "max_categories": 3},
        classes=True,
    )
    with pytest.raises(AnalysisError, match=r"'cls' has more than 3 classes \(analysis\.max"):
        run_analysis(h.ctx, h.table, h.grid, h.out, h.ctx.stage("analysis"))


def _config(datasets: list[dict[str, object]], **analysis: object):
    data = {"datasets": datasets, "analysis": {"methods": ["gwpca"], **analysis}}
    return parse_config(data, "cfg.yml", Path("/tmp"))


def test_config_analysed_variables() -> None:
    datasets = [
        {"name": "richness", "path": "r.tif"},
        {"name": "landcover", "path": "l.tif", "categorical": True},
        {"name": "threat", "path": "t.tif"},
    ]
    config = _config(datasets)
    assert config.analysed_variables() == ["richness", "threat"]
    assert config.one_hot_variables() == []
    listed = _config(datasets, variables=["landcover", "threat"])
    assert listed.analysed_variables() == ["landcover", "threat"]
    assert listed.one_hot_variables() == ["landcover"]
    with pytest.raises(ConfigError, match=r"analysis\.variables: 'nope' is not a dataset"):
        _config(datasets, variables=["nope"])
    with pytest.raises(ConfigError, match=r"analysis\.variables: every dataset is categorical"):
        _config([datasets[1]])


@pytest.mark.parametrize(
    ("analysis", "expected"),
    [
        (
            {},
            "analysed variables: richness, endemism, threat; categorical, not analysed: landcover",
        ),
        (
            {"variables": ["richness", "landcover"]},
            "analysed variables: richness, landcover (categorical, one-hot encoded)",
        ),
    ],
    ids=["default", "listed"],
)
def test_geod_check_prints_the_analysed_variables(
    tmp_path: Path, demo_dir: Path, analysis: dict[str, object], expected: str
) -> None:
    base = load_config(Path(__file__).parent.parent / "config.yml", check_files=False)
    assert base.dataset("landcover").categorical
    sections = {"methods": ["som", "gwpca"], **analysis}
    config = write_demo_config(tmp_path, demo_dir, analysis=sections)
    result = subprocess.run(
        [GEOD, "check", str(config)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert f"  {expected}\n" in result.stdout
