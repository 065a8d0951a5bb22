"""Human output of the daemon-facing verbs: rich tables, the stage tree, log lines, JSON.

Every function takes protocol data (``RunSummary`` or the plain dicts the daemon
sends) and returns a rich renderable, so the verbs only choose what to show and
tests can render to a string console.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from supervisor.protocol import FINAL_STATES, RunSummary

#: Colour of each run state; final states are dim, trouble is red.
STATE_STYLES: dict[str, str] = {
    "queued": "cyan",
    "running": "green",
    "paused": "yellow",
    "stopping": "yellow",
    "done": "bold green",
    "failed": "bold red",
    "killed": "red",
    "interrupted": "magenta",
}
LEVEL_STYLES: dict[str, str] = {
    "DEBUG": "dim",
    "INFO": "",
    "WARNING": "yellow",
    "ERROR": "red",
    "CRITICAL": "bold red",
}
STAGE_STATUS_MARKS: dict[str, str] = {
    "pending": "·",
    "running": "▶",
    "paused": "‖",
    "done": "✔",
    "failed": "✘",
    "skipped": "↷",
}
_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
_KIB = 1024
_SECONDS_PER_MINUTE = 60
_SECONDS_PER_HOUR = 3600
_SECONDS_PER_DAY = 86400
#: Line width when stdout is not a terminal (pipes, files): wide enough for any runs table.
PIPED_WIDTH = 240
#: Width of the text progress bar in the runs table.
PROGRESS_BAR_WIDTH = 10
#: Times older than this are shown with their date, younger ones as a clock time.
_SAME_DAY_SECONDS = _SECONDS_PER_DAY


def stdout_console() -> Console:
    """The terminal's width on a terminal; wide when piped, so ``grep``/``awk`` see whole rows
    (rich would otherwise squeeze tables to 80 columns and truncate ids)."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=PIPED_WIDTH)
    return console


def print_json(data: Any) -> None:
    """Plain, stable JSON on stdout (no colour codes even on a terminal), one document."""
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def run_json(run: Mapping[str, Any]) -> dict[str, Any]:
    """A run as scripts get it: every ``RunSummary`` field present, extras kept."""
    return RunSummary.model_validate(run).model_dump(mode="json")


def human_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size, unit = float(value), 0
    while size >= _KIB and unit < len(_BYTE_UNITS) - 1:
        size /= _KIB
        unit += 1
    return f"{size:.0f} B" if unit == 0 else f"{size:.1f} {_BYTE_UNITS[unit]}"


def human_duration(seconds: float | None) -> str:
    """``1d 2h``, ``3h 04m``, ``5m 06s``, ``7s``: two units at most, like pueue's table."""
    if seconds is None:
        return "-"
    total = max(0, round(seconds))
    days, rest = divmod(total, _SECONDS_PER_DAY)
    hours, rest = divmod(rest, _SECONDS_PER_HOUR)
    minutes, secs = divmod(rest, _SECONDS_PER_MINUTE)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def human_time(timestamp: float | None, now: float | None = None) -> str:
    if timestamp is None:
        return "-"
    now = time.time() if now is None else now
    moment = datetime.fromtimestamp(timestamp)
    if abs(now - timestamp) < _SAME_DAY_SECONDS:
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M")


def progress_text(progress: float) -> Text:
    filled = round(max(0.0, min(1.0, progress)) * PROGRESS_BAR_WIDTH)
    bar = "█" * filled + "░" * (PROGRESS_BAR_WIDTH - filled)
    return Text(f"{bar} {progress * 100:5.1f}%")


def state_text(run: RunSummary) -> Text:
    label = "paused (hard)" if run.state == "paused" and run.paused_hard else run.state
    return Text(label, style=STATE_STYLES.get(run.state, ""))


def elapsed(run: RunSummary, now: float | None = None) -> float | None:
    if run.started is None:
        return None
    end = run.finished if run.finished is not None else (time.time() if now is None else now)
    return end - run.started


def runs_table(runs: Iterable[RunSummary], now: float | None = None) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "NAME", "STATE", "PROGRESS", "STAGE", "STARTED", "ELAPSED", "ETA"):
        # The stage may wrap; an id or a state cut to "r00…" would be useless.
        table.add_column(column, no_wrap=column != "STAGE", overflow="fold")
    table.add_column("RSS", justify="right", no_wrap=True)
    table.add_column("PEAK", justify="right", no_wrap=True)
    for run in runs:
        table.add_row(
            run.id,
            run.name,
            state_text(run),
            progress_text(run.progress),
            run.stage or "-",
            human_time(run.started, now),
            human_duration(elapsed(run, now)),
            human_duration(run.eta) if run.state == "running" else "-",
            human_bytes(None if run.state in FINAL_STATES else run.rss),
            human_bytes(run.peak_rss),
        )
    return table


def stage_tree(title: str, stages: Iterable[Mapping[str, Any]]) -> Tree:
    """The stage tree (run → stage → dataset → window group) from flat stage nodes.

    Nodes arrive flat with a ``parent`` id (the StageEvent shape); children keep the
    order the worker announced them in. A node whose parent is unknown hangs off the
    root rather than being dropped, so a partial snapshot still shows everything.
    """
    nodes = [dict(node) for node in stages]
    known = {node["id"] for node in nodes}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for node in nodes:
        parent = node.get("parent")
        children.setdefault(parent if parent in known else None, []).append(node)
    root = Tree(Text(title, style="bold"))

    def add(branch: Tree, parent: str | None) -> None:
        for node in children.get(parent, []):
            add(branch.add(_stage_label(node)), node["id"])

    add(root, None)
    return root


def _stage_label(node: Mapping[str, Any]) -> Text:
    status = str(node.get("status", "pending"))
    label = Text(f"{STAGE_STATUS_MARKS.get(status, '?')} {node.get('name', node['id'])}")
    done, total = int(node.get("done") or 0), int(node.get("total") or 0)
    if total:
        label.append(f"  {done}/{total} {node.get('unit', '')}".rstrip(), style="dim")
    if status not in ("done", "pending"):
        label.append(f"  {status}", style=STATE_STYLES.get(status, "yellow"))
    if node.get("error"):
        label.append(f"  {node['error']}", style="red")
    return label


def run_detail(run: RunSummary, now: float | None = None) -> RenderableType:
    """``geod status RUN``: facts, stage tree, outputs."""
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("run", run.id),
        ("name", run.name),
        ("state", state_text(run)),
        ("progress", progress_text(run.progress)),
        ("stage", run.stage or "-"),
        ("config", run.config_path or "-"),
        ("directory", run.run_dir or "-"),
        ("submitted", human_time(run.submitted, now)),
        ("started", human_time(run.started, now)),
        ("finished", human_time(run.finished, now)),
        ("elapsed", human_duration(elapsed(run, now))),
        ("eta", human_duration(run.eta) if run.state == "running" else "-"),
        ("rss", human_bytes(None if run.state in FINAL_STATES else run.rss)),
        ("peak rss", human_bytes(run.peak_rss)),
        ("retries", str(run.retries)),
    ]
    if run.exit_code is not None:
        rows.append(("exit code", str(run.exit_code)))
    if run.error:
        rows.append(("error", Text(run.error, style="red")))
    for key, value in rows:
        facts.add_row(key, value)
    parts: list[RenderableType] = [facts]
    stages = (run.model_extra or {}).get("stages")
    if stages:
        parts.append(Text())
        parts.append(stage_tree("stages", stages))
    if run.outputs:
        parts.append(Text())
        outputs = Table(box=None, header_style="bold", pad_edge=False)
        outputs.add_column("OUTPUT")
        outputs.add_column("KIND")
        for output in run.outputs:
            outputs.add_row(str(output.get("path", "?")), str(output.get("kind", "-")))
        parts.append(outputs)
    return Group(*parts)


def daemon_summary(status: Mapping[str, Any], now: float | None = None) -> Table:
    """The ``status`` method's facts, readable: times as clock and duration, counts as words.

    Fields this function does not know are still shown (as text), so a newer daemon's
    additions appear without a CLI change.
    """
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    shown: dict[str, str] = {}
    for key, value in status.items():
        if key == "started":
            shown["started"] = human_time(value, now)
        elif key == "uptime":
            shown["uptime"] = human_duration(value)
        elif key == "counts" and isinstance(value, Mapping):
            shown["runs by state"] = (
                ", ".join(f"{count} {state}" for state, count in value.items() if count) or "none"
            )
        elif key == "stopping":
            if value:
                shown["stopping"] = "yes: runs are checkpointing"
        elif not isinstance(value, list | Mapping):
            shown[key.replace("_", " ")] = str(value)
    for key, value in shown.items():
        facts.add_row(key, value)
    return facts


def log_line(record: Mapping[str, Any]) -> Text:
    """One log record as ``HH:MM:SS LEVEL  stage  message``."""
    level = str(record.get("level", "INFO"))
    moment = datetime.fromtimestamp(float(record.get("time", 0.0))).strftime("%H:%M:%S")
    line = Text(f"{moment} ")
    line.append(f"{level:<8}", style=LEVEL_STYLES.get(level, ""))
    where = record.get("stage") or record.get("logger")
    if where:
        line.append(f" {where}", style="cyan")
    if record.get("dataset"):
        line.append(f"[{record['dataset']}]", style="cyan")
    line.append(f"  {record.get('message', '')}")
    return line
