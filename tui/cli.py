"""``geo-tui`` entry point."""

import sys


def main() -> None:
    print("geo-tui: not yet available", file=sys.stderr)
    sys.exit(1)
