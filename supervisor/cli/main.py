"""The ``geod`` command group; each verb lives in its own module of this package,
imported only when that verb runs (see :mod:`supervisor.cli.lazy`).

Exit codes (documented in the README):
0 success, 1 the run or command failed, 2 bad usage or invalid config/input,
3 the daemon is not running, 4 unknown run, 5 action not allowed in the run's state,
124 ``geod wait --timeout`` ran out (as timeout(1) exits),
130 interrupted with Ctrl-C (a run stops at a checkpoint and can be resumed).
"""

from __future__ import annotations

import click

from supervisor.cli.lazy import LazyCommand, LazyGroup

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_DAEMON = 3
EXIT_UNKNOWN_RUN = 4
EXIT_BAD_STATE = 5
EXIT_TIMEOUT = 124
#: 128 + SIGINT, as shells report a Ctrl-C.
EXIT_INTERRUPTED = 130


#: Package of the verb modules named in ``COMMANDS``.
_CLI = "supervisor.cli."

#: Every verb: where it lives and its short help. ``geod --help`` lists these
#: without importing a module; a verb's module loads only when it runs. A new verb is
#: decorated with ``@click.command()`` in its module and listed here.
COMMANDS: dict[str, LazyCommand] = {
    "attach": LazyCommand(
        _CLI + "run_cmds:attach",
        "Open the dashboard ('geo-tui attach') on every run, or on RUN.",
    ),
    "check": LazyCommand(
        _CLI + "pipeline_cmds:check",
        "Validate CONFIG and inspect every input's header; runs nothing.",
    ),
    "clean": LazyCommand(
        _CLI + "clean_cmd:clean",
        "Remove the layer stores and work files of finished runs; outputs and history stay.",
    ),
    "db": LazyCommand(
        _CLI + "db_cmd:db",
        "The telemetry database: migrate it, print its URL, or open psql on it.",
    ),
    "demo-data": LazyCommand(
        _CLI + "pipeline_cmds:demo_data",
        "Write synthetic global demo layers into DIRECTORY (default: ./demo).",
    ),
    "export": LazyCommand(
        _CLI + "export_cmd:export",
        "Re-export the merged table of a finished run in RUN_DIR (no resampling).",
    ),
    "kill": LazyCommand(
        _CLI + "run_cmds:kill",
        "Stop RUN (or --all): SIGTERM (checkpoint at the window boundary), SIGKILL after grace.",
    ),
    "logs": LazyCommand(
        _CLI + "run_cmds:logs",
        "Print RUN's latest log records; with -f keep following until the run ends.",
    ),
    "map": LazyCommand(
        _CLI + "map_cmd:map_command",
        "Draw RUN's resample windows as a map: done, running, pending, recomputed.",
    ),
    "open": LazyCommand(
        _CLI + "report_cmd:open_stack",
        "Show RUN's merged stack as xarray sees it (pipeline.stack.open_stack in Python).",
    ),
    "parallel": LazyCommand(
        _CLI + "queue_cmds:parallel",
        "Show or set how many runs execute at once (kept across daemon restarts).",
    ),
    "pause": LazyCommand(
        _CLI + "run_cmds:pause",
        "Pause RUN (or --all) at the next window boundary, with a checkpoint.",
    ),
    "priority": LazyCommand(
        _CLI + "queue_cmds:priority",
        "Set RUN's PRIORITY: among queued runs the higher starts first (may be negative).",
    ),
    "report": LazyCommand(
        _CLI + "report_cmd:report",
        "Write the self-contained HTML report of RUN (finished or not).",
    ),
    "resume": LazyCommand(_CLI + "run_cmds:resume", "Resume paused RUN (or --all)."),
    "retry": LazyCommand(
        _CLI + "run_cmds:retry",
        "Run a failed, killed or interrupted RUN again from its last checkpoint.",
    ),
    "run": LazyCommand(
        _CLI + "pipeline_cmds:run",
        "Run CONFIG in the foreground with live progress; rerun to resume.",
    ),
    "runs": LazyCommand(
        _CLI + "run_cmds:runs",
        "List every run the daemon knows (queued, running, and finished ones).",
    ),
    "serve": LazyCommand(
        _CLI + "daemon_cmds:serve",
        "Run the daemon in the foreground until SIGTERM or Ctrl-C (what systemd runs).",
    ),
    "sources": LazyCommand(
        _CLI + "sources_cmd:sources",
        "Files of the watched folders (geod.yml watch:): taken, unusable, or gone.",
    ),
    "start": LazyCommand(
        _CLI + "daemon_cmds:start",
        "Submit CONFIG as a new run, starting the daemon in the background if none answers.",
    ),
    "status": LazyCommand(
        _CLI + "run_cmds:status",
        "The daemon and its runs, or one RUN in detail (stage tree, outputs, peak RSS).",
    ),
    "stop": LazyCommand(
        _CLI + "daemon_cmds:stop",
        "Stop the daemon gracefully: runs stop at a checkpoint, then it exits.",
    ),
    "wait": LazyCommand(_CLI + "queue_cmds:wait", "Block until RUN..."),
}


@click.group(
    cls=LazyGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="geod")
def cli() -> None:
    """geod: run and supervise long raster pipelines."""
