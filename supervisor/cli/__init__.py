"""``geod`` entry point: importing the verb modules registers their commands."""

from supervisor.cli import clean_cmd as clean_cmd  # registers clean
from supervisor.cli import daemon_cmds as daemon_cmds  # registers serve/start/stop
from supervisor.cli import db_cmd as db_cmd  # registers db migrate/url/psql
from supervisor.cli import export_cmd as export_cmd  # registers export
from supervisor.cli import map_cmd as map_cmd  # registers map
from supervisor.cli import pipeline_cmds  # noqa: F401  (registers run/check/demo-data)
from supervisor.cli import queue_cmds as queue_cmds  # registers priority/parallel/wait
from supervisor.cli import report_cmd as report_cmd  # registers report/open
from supervisor.cli import run_cmds as run_cmds  # registers status/runs/logs/attach/control
from supervisor.cli import sources_cmd as sources_cmd  # registers sources
from supervisor.cli.main import cli


def main() -> None:
    cli()
