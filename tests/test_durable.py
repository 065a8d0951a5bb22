"""The one atomic write and the one torn-tail repair that checkpoints, state files,
histories and the telemetry spool share (real files, no mocks)."""

from __future__ import annotations

from pathlib import Path

from pipeline.durable import TAIL_SCAN_BYTES, cut_torn_tail, write_atomic


def test_write_atomic_replaces_whole_files_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_atomic(path, "old")
    write_atomic(path, b"new bytes")
    assert path.read_bytes() == b"new bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_whole_lines_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    assert not cut_torn_tail(path)  # missing
    path.write_bytes(b"")
    assert not cut_torn_tail(path)  # empty
    path.write_bytes(b'{"a":1}\n{"b":2}\n')
    assert not cut_torn_tail(path)
    assert path.read_bytes() == b'{"a":1}\n{"b":2}\n'


def test_a_torn_last_line_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_bytes(b'{"a":1}\n{"b":')
    assert cut_torn_tail(path)
    assert path.read_bytes() == b'{"a":1}\n'


def test_a_torn_line_longer_than_one_scan_step_is_cut_whole(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"first\n" + b"x" * (3 * TAIL_SCAN_BYTES + 5))
    assert cut_torn_tail(path)
    assert path.read_bytes() == b"first\n"
    path.write_bytes(b"y" * (TAIL_SCAN_BYTES + 1))  # no newline at all
    assert cut_torn_tail(path)
    assert path.read_bytes() == b""
