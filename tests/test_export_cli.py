"""``geod export RUN_DIR``: a real ``geod`` process re-exports a run through a real worker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg2
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.config import dump_config
from tests.test_merge import LAYERS, build_run

GEOD = [sys.executable, "-c", "from supervisor.cli import main; main()"]


def geod(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GEOD, *args], capture_output=True, text=True, env=env, timeout=120)


def make_run_dir(tmp_path: Path) -> Path:
    """A finished run's directory: its frozen config.yml and work/ (the layer store)."""
    run = build_run(tmp_path, layers=LAYERS[:2], export={"formats": ["parquet"]})
    (tmp_path / "config.yml").write_text(dump_config(run.config))
    return tmp_path


def test_export_writes_the_requested_formats_from_the_store(
    tmp_path: Path, database_url: str
) -> None:
    run_dir = make_run_dir(tmp_path)
    result = geod(
        "export",
        str(run_dir),
        "--format",
        "csv,parquet",
        "--format",
        "postgres",
        "--database-url",
        database_url,
    )
    assert result.returncode == 0, result.stderr
    out = run_dir / "out"
    assert result.stdout.splitlines() == [
        f"wrote {out / 'merged.csv'}",
        f"wrote {out / 'merged.parquet'}",
        "wrote public.geod_merged",
        f"wrote {out / 'report.html'}",
    ]
    rows = pq.read_table(out / "merged.parquet").num_rows
    assert rows == pacsv.read_csv(out / "merged.csv").num_rows > 0
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM geod_merged")
        assert cur.fetchone()[0] == rows


def test_bad_run_dir_and_bad_format_are_usage_errors(tmp_path: Path) -> None:
    result = geod("export", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"geod: {tmp_path / 'config.yml'}: no such file; is {tmp_path} a run directory?"
    )
    result = geod("export", str(tmp_path), "--format", "xlsx")
    assert result.returncode == 2
    assert "'xlsx' is not one of parquet, csv, postgres" in result.stderr
