"""``geod`` entry point: the group loads each verb's module when that verb runs."""

from supervisor.cli.main import cli


def main() -> None:
    cli()
