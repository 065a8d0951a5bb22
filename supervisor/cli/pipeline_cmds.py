"""``geod run``, ``geod check`` and ``geod demo-data``: the pipeline without a daemon.

Each spawns the same worker the daemon would (``python -m pipeline.worker``) and
renders its event stream, so the foreground path exercises exactly the code a
supervised run does and the supervisor never imports pipeline internals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from pipeline.contract import EVENTS_FD_ENV, PROBLEM_LEVELS, WORKER_EXIT_INPUT
from pipeline.events import Event, LogEvent, SourceEvent, StateEvent, decode
from supervisor.cli.main import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from supervisor.cli.progress_view import ProgressView

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig

#: Where ``geod demo-data`` writes when no directory is given: what config.yml uses.
DEFAULT_DEMO_DIR = Path("demo")
#: Printed on the first Ctrl-C of a foreground run.
STOPPING_MESSAGE = "\nstopping after the current window (Ctrl-C again to kill)…\n"


def _validate(config_path: Path) -> PipelineConfig:
    """The config, or its one-line error and exit 2.

    Imported here, not at the top: pydantic and the config's models take ~0.25 s,
    which ``geod run`` spends while its worker is already starting.
    """
    from pipeline.config import ConfigError, load_config

    try:
        return load_config(config_path)
    except ConfigError as exc:
        click.echo(f"geod: {exc}", err=True)
        sys.exit(EXIT_USAGE)


def analysed_summary(config: PipelineConfig) -> str:
    """What som/gwpca will analyse, and which categorical datasets they leave out."""
    one_hot = set(config.one_hot_variables())
    names = [
        f"{name} (categorical, one-hot encoded)" if name in one_hot else name
        for name in config.analysed_variables()
    ]
    text = f"analysed variables: {', '.join(names)}"
    left_out = [d.name for d in config.datasets if d.categorical and d.name not in one_hot]
    if left_out:
        text += f"; categorical, not analysed: {', '.join(left_out)}"
    return text


class WorkerProcess:
    """``python -m pipeline.worker ARGS`` started now, its events followed later.

    Apart from following, so the caller can do its own work (validate the config)
    while the worker imports on another core, and :meth:`abort` it if that fails.
    ``env`` adds to the worker's environment (never to this process's own).
    """

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self._read_fd, write_fd = os.pipe()
        env = dict(os.environ, **(env or {}), **{EVENTS_FD_ENV: str(write_fd)})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.worker", *args], env=env, pass_fds=(write_fd,)
        )
        os.close(write_fd)

    def abort(self) -> None:
        """Kill the worker before it has been followed, and reap it."""
        self.process.kill()
        self.process.wait()
        os.close(self._read_fd)

    def follow(self, view: ProgressView | None) -> tuple[int, str | None]:
        """Feed the worker's events to ``view`` until it exits.

        Returns its exit code and its last lifecycle state. The first Ctrl-C asks
        the worker to stop at the next checkpoint (it gets SIGINT from the
        terminal as well); a second one kills it.
        """
        process = self.process
        interrupts = 0

        def on_interrupt(_signum: int, _frame: FrameType | None) -> None:
            nonlocal interrupts
            interrupts += 1
            if interrupts == 1:
                # os.write, not click.echo: a handler must not re-enter a buffered stream.
                os.write(2, STOPPING_MESSAGE.encode())
                process.send_signal(signal.SIGINT)
            else:
                process.kill()

        previous = signal.signal(signal.SIGINT, on_interrupt)
        last_state: str | None = None
        try:
            with os.fdopen(self._read_fd, "rb") as stream:
                for line in stream:
                    event = decode(line)
                    if isinstance(event, StateEvent):
                        last_state = event.state
                    if view is not None:
                        view.handle(event)
            code = process.wait()
        finally:
            signal.signal(signal.SIGINT, previous)
        return code, last_state


@click.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(path_type=Path))
@click.option("--work-dir", type=click.Path(path_type=Path), help="Override paths.work_dir.")
@click.option(
    "--stages",
    help="Comma list of catalog,resample,export,analysis (default: all; 'merge' = export).",
)
@click.option("--formats", help="Comma list of export formats (default: the config's).")
def run(config_path: Path, work_dir: Path | None, stages: str | None, formats: str | None) -> None:
    """Run CONFIG in the foreground with live progress; rerun to resume."""
    args = [str(config_path)]
    if work_dir is not None:
        args += ["--work-dir", str(work_dir)]
    if stages:
        args += ["--stages", stages]
    if formats:
        args += ["--formats", formats]
    run_in_foreground(
        args, "run", "run the same command again to resume", precheck=lambda: _validate(config_path)
    )


def run_in_foreground(
    args: list[str],
    what: str,
    resume_hint: str,
    env: dict[str, str] | None = None,
    precheck: Callable[[], object] | None = None,
) -> None:
    """Run the worker with progress bars; exit as the outcome says, listing outputs.

    ``precheck`` runs once the worker has started, before the bars do, so its
    work overlaps the worker's imports; if it exits or raises, the worker is
    killed before it has read anything.
    """
    worker = WorkerProcess(args, env)
    if precheck is not None:
        try:
            precheck()
        except BaseException:
            worker.abort()
            raise
    with ProgressView() as view:
        code, state = worker.follow(view)
    if state == "stopped":
        click.echo(f"geod: {what} stopped at a checkpoint; {resume_hint}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if code != EXIT_OK or state != "done":
        click.echo(f"geod: {what} failed: {view.failure or f'worker exit code {code}'}", err=True)
        sys.exit(EXIT_USAGE if code == WORKER_EXIT_INPUT else EXIT_FAILED)
    for output in view.outputs:
        click.echo(f"wrote {output}")


@click.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(path_type=Path))
def check(config_path: Path) -> None:
    """Validate CONFIG and inspect every input's header; runs nothing."""
    config = _validate(config_path)
    for expansion in config.expansions:
        count = len(expansion.datasets)
        click.echo(
            f"  datasets[{expansion.index}] glob {expansion.pattern}: "
            f"{count} dataset{'s' if count != 1 else ''}"
        )
        for name, path in expansion.datasets:
            click.echo(f"    {name} ← {path}")
    code, _state = WorkerProcess([str(config_path), "--stages", "catalog"]).follow(_CheckView())
    if code != EXIT_OK:
        sys.exit(EXIT_USAGE if code == WORKER_EXIT_INPUT else EXIT_FAILED)
    if config.analysis.methods:
        click.echo(f"  {analysed_summary(config)}")
    click.echo(f"{config_path}: ok")


class _CheckView(ProgressView):
    """Prints catalog findings and errors only."""

    def __init__(self) -> None:
        super().__init__(live=False)

    def handle(self, event: Event) -> None:
        if isinstance(event, StateEvent) and event.state == "failed":
            click.echo(f"geod: {event.reason}", err=True)
        elif isinstance(event, LogEvent) and event.level in PROBLEM_LEVELS:
            click.echo(f"{event.level.lower()}: {event.message}", err=True)
        elif isinstance(event, LogEvent) and event.stage == "catalog" and event.dataset:
            click.echo(f"  {event.message}")  # what the catalog adjusted (wrap, unpacking...)
        elif isinstance(event, SourceEvent):
            click.echo(f"  {event.dataset}: {event.width}×{event.height} {event.dtype} {event.crs}")


@click.command("demo-data")
@click.argument(
    "directory", required=False, default=DEFAULT_DEMO_DIR, type=click.Path(path_type=Path)
)
@click.option(
    "--size", type=click.Choice(["small", "medium", "large"]), default="small", show_default=True
)
@click.option("--seed", type=int, default=0, show_default=True)
def demo_data(directory: Path, size: str, seed: int) -> None:
    """Write synthetic global demo layers into DIRECTORY (default: ./demo)."""
    command = [
        sys.executable,
        "-m",
        "pipeline.demo",
        str(directory),
        "--size",
        size,
        "--seed",
        str(seed),
    ]
    sys.exit(subprocess.call(command))
