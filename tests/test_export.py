"""Export: one merge pass into Parquet, CSV and PostgreSQL; atomic, validated, clean errors.

Real store and GeoTIFF sources (built by ``tests.test_merge.build_run``), real
files, a real PostgreSQL database, a real tmpfs for disk-full, a real SIGKILL.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psycopg2
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import rasterio
from rasterio.windows import Window

from pipeline.config import ConfigError, ExportFormat
from pipeline.context import RunContext
from pipeline.control import Controller, StopRequested
from pipeline.events import EventSink, OutputEvent, StageEvent
from pipeline.export import ExportError, run_merge_export
from pipeline.export.atomic import PARTIAL_MARKER
from pipeline.export.parquet import ParquetExporter
from pipeline.export.validate import validate_exports
from pipeline.merge import MergeStream, iter_merged, read_schema_metadata
from tests.test_merge import LAYERS, Layer, Run, build_run

REPO = Path(__file__).resolve().parent.parent


def context(run: Run) -> RunContext:
    sink = EventSink(callback=run.events.append)
    return RunContext(run.config, sink, Controller(sink), run.governor())


def export(run: Run, formats: list[str] | None = None, url: str | None = None) -> list[Path]:
    ctx = context(run)
    wanted = [ExportFormat(f) for f in formats] if formats else None
    return run_merge_export(ctx, run.store, run.grid, ctx.stage("export"), wanted, url)


def merged_table(run: Run) -> pa.Table:
    chunks = [c.batch for c in iter_merged(run.store, run.grid, run.config, run.governor())]
    return pa.Table.from_batches(chunks)


def out_dir(run: Run) -> Path:
    return run.config.paths.output_dir


def test_one_pass_writes_parquet_csv_and_postgres_with_identical_rows(
    tmp_path: Path, database_url: str
) -> None:
    run = build_run(
        tmp_path,
        export={
            "formats": ["parquet", "csv", "postgres"],
            "parquet": {"row_group_size": 5000},
            "validate_samples": 100,
        },
    )
    paths = export(run, url=database_url)
    out = out_dir(run)
    assert paths == [out / "merged.parquet", out / "merged.csv"]
    assert sorted(p.name for p in out.iterdir()) == ["merged.csv", "merged.parquet"]
    expected = merged_table(run)

    parquet = pq.ParquetFile(out / "merged.parquet")
    table = parquet.read()
    assert table.num_rows == expected.num_rows > 0
    for name in expected.schema.names:
        assert table.column(name).equals(expected.column(name)), name
    groups = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    assert all(size == 5000 for size in groups[:-1]) and 0 < groups[-1] <= 5000
    assert parquet.metadata.row_group(0).column(2).compression == "ZSTD"
    meta = read_schema_metadata(table.schema)
    assert meta["grid"]["crs"] == "EPSG:4326"
    assert meta["grid"]["transform"] == [1.0, 0.0, -180.0, 0.0, -1.0, 90.0]
    assert [d["name"] for d in meta["datasets"]] == [layer.name for layer in LAYERS]
    assert meta["datasets"][2] == {
        "name": "landcover",
        "path": str(tmp_path / "src" / "landcover.tif"),
        "band": None,
        "resampling": "average",
        "dtype": "int16",
        "nodata": -1.0,
    }

    types = {f.name: f.type for f in expected.schema}
    csv = pacsv.read_csv(
        out / "merged.csv", convert_options=pacsv.ConvertOptions(column_types=types)
    )
    assert csv.num_rows == expected.num_rows
    for name in ("landcover", "threat"):
        assert csv.column(name).equals(expected.column(name))
    richness = expected.column("richness").to_numpy(zero_copy_only=False)
    assert np.allclose(
        csv.column("richness").to_numpy(zero_copy_only=False),
        richness,
        rtol=0,
        atol=1e-6,
        equal_nan=True,
    )

    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*), count(landcover), sum(threat), sum(richness::float8) "
            "FROM public.geod_merged"
        )
        count, landcover, threat, richness_sum = cur.fetchone()
        assert count == expected.num_rows
        assert landcover == expected.num_rows - expected.column("landcover").null_count
        assert threat == pa.compute.sum(expected.column("threat")).as_py()
        assert richness_sum == pytest.approx(float(np.nansum(richness.astype("f8"))))
        cur.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'geod_merged' ORDER BY ordinal_position"
        )
        assert cur.fetchall() == [
            ("x", "double precision"),
            ("y", "double precision"),
            ("richness", "real"),
            ("endemism", "double precision"),
            ("landcover", "smallint"),
            ("threat", "smallint"),
        ]
        cur.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'geod_partial_%'")
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT obj_description('public.geod_merged'::regclass)")
        assert json.loads(cur.fetchone()[0])["geod"]["grid"]["width"] == 360

    outputs = [e for e in run.events if isinstance(e, OutputEvent)]
    assert [(e.kind, e.path) for e in outputs] == [
        ("parquet", str(out / "merged.parquet")),
        ("csv", str(out / "merged.csv")),
        ("postgres", "public.geod_merged"),
    ]
    assert all(e.detail["rows"] == expected.num_rows for e in outputs)
    assert all(e.detail["validated_cells"] >= 100 for e in outputs)
    stage = [e for e in run.events if isinstance(e, StageEvent) and e.id == "export"]
    assert stage[-1].done == stage[-1].total == 1


def test_geoparquet_points_are_the_cell_centres_with_the_grid_crs(tmp_path: Path) -> None:
    run = build_run(
        tmp_path, export={"parquet": {"geoparquet": True}}, layers=LAYERS[:1], bounds=(0, 0, 40, 20)
    )
    (path,) = export(run)
    table = pq.read_table(path)
    geo = json.loads(table.schema.metadata[b"geo"])
    column = geo["columns"]["geometry"]
    assert geo["primary_column"] == "geometry" and column["encoding"] == "WKB"
    assert column["crs"]["id"] == {"authority": "EPSG", "code": 4326}
    assert read_schema_metadata(table.schema)["region"]["width"] == 40  # geod key kept
    x, y = table.column("x").to_numpy(), table.column("y").to_numpy()
    wkb = table.column("geometry").to_pylist()
    decoded = np.frombuffer(
        b"".join(wkb), dtype=[("o", "u1"), ("k", "<u4"), ("x", "<f8"), ("y", "<f8")]
    )
    assert (decoded["o"] == 1).all() and (decoded["k"] == 1).all()
    assert np.array_equal(decoded["x"], x) and np.array_equal(decoded["y"], y)


def test_csv_float_precision_is_decimal_places(tmp_path: Path) -> None:
    run = build_run(
        tmp_path,
        resolution=1 / 3,
        bounds=(0, 0, 1, 1),
        export={"formats": ["csv"], "csv": {"float_precision": 3}},
        layers=(Layer("endemism", "float64", None),),
    )
    (path,) = export(run)
    lines = path.read_text().splitlines()
    assert lines[0] == '"x","y","endemism"'
    # Row 0 of this 3 × 3 grid is even, so it holds data: centres 1/6, 1/2, 5/6.
    assert lines[1:4] == ["0.167,0.833,0.25", "0.5,0.833,1.25", "0.833,0.833,2.25"]


def test_disk_full_is_one_line_and_leaves_no_file(tmp_path: Path) -> None:
    run = build_run(
        tmp_path, resolution=0.5, export={"formats": ["parquet", "csv"]}, layers=LAYERS[:1]
    )
    out = out_dir(run)
    out.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(out)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        with pytest.raises(ExportError) as error:
            export(run)
        message = str(error.value)
        assert "\n" not in message
        assert message.startswith(f"{out}/merged.") and "disk full while writing" in message
        assert list(out.iterdir()) == []
    finally:
        subprocess.run(["umount", str(out)], check=True)


def test_changed_source_fails_validation_naming_cells_and_publishes_nothing(
    tmp_path: Path, database_url: str
) -> None:
    run = build_run(tmp_path, export={"formats": ["parquet", "postgres"]}, layers=LAYERS[2:])
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE geod_merged (previous integer)")
        cur.execute("INSERT INTO geod_merged VALUES (7)")
    # The passthrough source changed after it was copied into the store.
    with rasterio.open(tmp_path / "src" / "threat.tif", "r+") as src:
        data = src.read(1)
        src.write(np.where(data == 255, data, data + 1).astype("uint8"), 1)
    with pytest.raises(ExportError) as error:
        export(run, url=database_url)
    message = str(error.value)
    assert "\n" not in message
    assert re.match(
        rf"validation of {out_dir(run)}/merged.parquet failed at \d+ of \d+ sampled cells: "
        r"row (\d+) col (\d+) \(x=-?[\d.]+, y=-?[\d.]+\) threat: exported (\d+), source (\d+)",
        message,
    ), message
    row, col, exported, source = map(
        int,
        re.search(
            r"row (\d+) col (\d+) .*? threat: exported (\d+), source (\d+)", message
        ).groups(),
    )
    assert col % 3 == 0 and source == exported + 1 == (row * 7 + col * 3) % 200 + 1
    assert list(out_dir(run).iterdir()) == []
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM geod_merged")
        assert cur.fetchall() == [(7,)]  # the old table is untouched
        cur.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'geod_partial_%'")
        assert cur.fetchone()[0] == 0


def test_store_changed_after_the_merge_fails_validation_against_the_store(
    tmp_path: Path,
) -> None:
    run = build_run(tmp_path, layers=LAYERS[:1], merge={"skip_all_nodata": False})
    stream = MergeStream(run.store, run.grid, run.config)
    path = out_dir(run) / "merged.parquet"
    path.parent.mkdir()
    exporter = ParquetExporter(path, stream.schema, run.config.export.parquet, run.grid)
    for chunk in stream.chunks(run.governor()):
        exporter.write(chunk.batch)
    exporter.close()
    window = Window(0, 0, 64, 64)
    run.store.write_window("richness", window, np.full((64, 64), 5.5, dtype="float32"))
    keys = np.arange(64, dtype=np.int64)  # row 0, columns 0..63: all in the changed chunk
    with pytest.raises(ExportError) as error:
        validate_exports([exporter], stream, keys, 2, np.random.default_rng(0))
    assert re.search(
        r"at \d+ of \d+ sampled cells: row 0 col \d+ \(x=-1\d\d\.5\d+, "
        r"y=89\.500000\) richness: exported (\d+\.25|None), store 5\.5",
        str(error.value),
    ), str(error.value)
    exporter.abort()
    assert list(path.parent.iterdir()) == []


def test_stop_request_at_a_chunk_boundary_discards_partial_outputs(
    tmp_path: Path, database_url: str
) -> None:
    run = build_run(
        tmp_path,
        merge={"chunk_rows": 16},
        export={"formats": ["parquet", "csv", "postgres"]},
        layers=LAYERS[:1],
    )
    ctx = context(run)
    ctx.control.request_stop()
    with pytest.raises(StopRequested):
        run_merge_export(ctx, run.store, run.grid, ctx.stage("export"), None, database_url)
    assert list(out_dir(run).iterdir()) == []
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert cur.fetchone()[0] == 0


def test_postgres_without_any_database_url_fails_before_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GEOD_DATABASE_URL", raising=False)
    run = build_run(tmp_path, export={"formats": ["parquet", "postgres"]}, layers=LAYERS[:1])
    with pytest.raises(ConfigError, match=r"^export.formats includes postgres but no database"):
        export(run)
    assert not out_dir(run).exists()


def test_unreachable_database_is_one_line_without_password(tmp_path: Path) -> None:
    run = build_run(tmp_path, export={"formats": ["postgres"]}, layers=LAYERS[:1])
    url = "postgresql://geod:s3cret@127.0.0.1:1/nowhere?connect_timeout=2"
    with pytest.raises(ExportError) as error:
        export(run, url=url)
    message = str(error.value)
    assert message.startswith("postgres export: cannot connect to geod@127.0.0.1:1/nowhere: ")
    assert "s3cret" not in message and "\n" not in message


KILL_SCRIPT = """
import sys
from pathlib import Path
from pipeline.context import RunContext
from pipeline.control import Controller
from pipeline.events import EventSink, StateEvent
from pipeline.export import run_merge_export
from tests.test_merge import LAYERS, reopen_run

def tell_parent(event):
    if isinstance(event, StateEvent) and event.state == "paused":
        print("paused", flush=True)

run = reopen_run(Path(sys.argv[1]), resolution=0.5, merge={"chunk_rows": 16},
                 export={"formats": ["parquet", "csv"]}, layers=LAYERS[:1])
sink = EventSink(callback=tell_parent)
ctx = RunContext(run.config, sink, Controller(sink), run.governor())
ctx.control.request_pause()  # holds the export at its first chunk boundary
run_merge_export(ctx, run.store, run.grid, ctx.stage("export"))
"""


def test_killed_export_leaves_no_final_file_and_the_next_run_cleans_up(tmp_path: Path) -> None:
    options = {"resolution": 0.5, "merge": {"chunk_rows": 16}, "layers": LAYERS[:1]}
    run = build_run(tmp_path, export={"formats": ["parquet", "csv"]}, **options)
    out = out_dir(run)
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    # The child pauses after its first chunk is written; killing it there is
    # a SIGKILL in the middle of the export, deterministically.
    assert child.stdout is not None and child.stdout.readline() == "paused\n"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    leftovers = sorted(p.name for p in out.iterdir())
    assert [name.split(PARTIAL_MARKER)[0] for name in leftovers] == ["merged.csv", "merged.parquet"]
    assert all(PARTIAL_MARKER in name for name in leftovers)
    assert (out / leftovers[0]).stat().st_size > 0  # it really was mid-write

    paths = export(run)
    assert sorted(p.name for p in out.iterdir()) == ["merged.csv", "merged.parquet"]
    rows = merged_table(run).num_rows
    assert pacsv.read_csv(paths[1]).num_rows == pq.read_table(paths[0]).num_rows == rows
    # The export after the kill is byte for byte an uninterrupted one.
    run.config.paths.output_dir = tmp_path / "uninterrupted"
    for resumed, clean in zip(paths, export(run), strict=True):
        assert resumed.read_bytes() == clean.read_bytes()


def test_vanished_passthrough_source_is_checked_against_the_store_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Re-exporting an old run whose inputs were moved away still validates (store only)."""
    run = build_run(tmp_path, layers=LAYERS[:1])
    source = tmp_path / "src" / "richness.tif"
    source.unlink()
    (path,) = export(run)
    assert pq.read_table(path).num_rows == merged_table(run).num_rows
    assert f"richness: source {source} is gone; its cells are checked against the store only" in (
        caplog.messages
    )
