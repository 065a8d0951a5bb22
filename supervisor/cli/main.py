"""The ``geod`` command group; each verb lives in its own module of this package.

Exit codes (documented in the README):
0 success, 1 the run or command failed, 2 bad usage or invalid config/input,
3 the daemon is not running, 4 unknown run, 5 action not allowed in the run's state,
124 ``geod wait --timeout`` ran out (as timeout(1) exits),
130 interrupted with Ctrl-C (a run stops at a checkpoint and can be resumed).
"""

from __future__ import annotations

import click

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_DAEMON = 3
EXIT_UNKNOWN_RUN = 4
EXIT_BAD_STATE = 5
EXIT_TIMEOUT = 124
#: 128 + SIGINT, as shells report a Ctrl-C.
EXIT_INTERRUPTED = 130


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="geod")
def cli() -> None:
    """geod: run and supervise long raster pipelines."""
