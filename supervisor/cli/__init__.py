"""``geod`` entry point: importing the verb modules registers their commands."""

from supervisor.cli import pipeline_cmds  # noqa: F401  (registers run/check/demo-data)
from supervisor.cli.main import cli


def main() -> None:
    cli()
