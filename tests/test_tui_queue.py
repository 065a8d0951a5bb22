"""The dashboard's view of the queue against a real daemon (fake workers, Pilot):
priority, dependencies and start time in the runs table, and ``+``/``-`` changing
a run's priority in the daemon.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text

from tests.daemon_harness import fake_config, running_daemon
from tests.tui_support import pilot_test
from tui.app import GeodApp
from tui.connection import Backoff
from tui.widgets.runs_table import RunsTable

SIZE = (160, 40)
WAIT_S = 30.0
#: Holds the only slot until the test ends (400 steps of 50 ms).
BLOCKER = "steps400"


async def until(pilot, predicate, timeout: float = WAIT_S) -> None:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        await pilot.pause(0.02)


def cell(table: RunsTable, run: str, column: str) -> str:
    value = table.get_cell(run, column)
    return value.plain if isinstance(value, Text) else str(value)


def test_runs_table_shows_the_queue_and_plus_minus_change_priority(tmp_path: Path) -> None:
    with running_daemon(tmp_path, concurrency=1) as daemon:
        blocker = daemon.submit(fake_config(tmp_path / "a", BLOCKER))
        daemon.wait(blocker, "running")
        queued = daemon.submit(fake_config(tmp_path / "b", "steps3"), after=[blocker])
        later = daemon.submit(
            fake_config(tmp_path / "c", "steps3"), start_at=time.time() + 3600, priority=-2
        )

        @pilot_test
        async def drive() -> None:
            app = GeodApp(socket_path=daemon.socket_path, run=queued, backoff=Backoff(0.1, 0.5))
            async with app.run_test(size=SIZE) as pilot:
                table = app.query_one(RunsTable)
                await until(pilot, lambda: app.selected == queued and later in table.rows)
                assert cell(table, queued, "why") == f"waiting for {blocker} (running)"
                # An hour away, read within the second of the submission or just after.
                assert cell(table, later, "why").startswith(("starts in 59m", "starts in 1h 00m"))
                assert cell(table, later, "priority").strip() == "-2"
                assert cell(table, later, "state").endswith("scheduled")
                table.focus()
                await pilot.press("plus", "plus")
                await until(pilot, lambda: daemon.run(queued)["priority"] == 2)
                await until(pilot, lambda: cell(table, queued, "priority").strip() == "2")
                await pilot.press("minus")
                await until(pilot, lambda: daemon.run(queued)["priority"] == 1)

        drive()
