"""Daemon log lines: sd-daemon priority prefixes when stderr is the journal, timestamps else."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SNIPPET = (
    "import logging; from supervisor.logsetup import configure_logging; "
    "configure_logging('INFO'); log = logging.getLogger('geod.x'); "
    "log.debug('hidden'); log.info('hello'); log.warning('careful'); log.error('broken')"
)


def _log_to(path: Path, journal: bool) -> str:
    env = dict(os.environ)
    env.pop("JOURNAL_STREAM", None)
    with open(path, "wb") as stderr:
        if journal:  # what systemd sets when StandardError=journal: the stream's dev:inode
            stat = os.fstat(stderr.fileno())
            env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
        subprocess.run([sys.executable, "-c", SNIPPET], stderr=stderr, env=env, check=True)
    return path.read_text()


def test_journal_gets_priorities_and_no_timestamps(tmp_path: Path) -> None:
    lines = _log_to(tmp_path / "journal", journal=True).splitlines()
    assert lines == ["<6>geod.x: hello", "<4>geod.x: careful", "<3>geod.x: broken"]


def test_elsewhere_lines_carry_their_time_and_level(tmp_path: Path) -> None:
    lines = _log_to(tmp_path / "geod.log", journal=False).splitlines()
    assert len(lines) == 3
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO +geod\.x: hello$", lines[0])
    assert "WARNING" in lines[1] and "ERROR" in lines[2]


def test_a_stale_journal_stream_is_ignored(tmp_path: Path) -> None:
    """JOURNAL_STREAM inherited by a process whose stderr is something else: plain lines."""
    env = dict(os.environ, JOURNAL_STREAM="1:1")
    with open(tmp_path / "out", "wb") as stderr:
        subprocess.run([sys.executable, "-c", SNIPPET], stderr=stderr, env=env, check=True)
    assert not (tmp_path / "out").read_text().startswith("<")
