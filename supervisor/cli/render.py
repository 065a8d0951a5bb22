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

from pipeline.events import LogEvent
from supervisor import formatting
from supervisor.progress import running_seconds
from supervisor.protocol import FINAL_STATES, DaemonStatus, RunSummary

#: Line width when stdout is not a terminal (pipes, files): wide enough for any runs table.
PIPED_WIDTH = 240
#: Width of the text progress bar in the runs table.
PROGRESS_BAR_WIDTH = 10
#: Times older than this are shown with their date, younger ones as a clock time.
_SAME_DAY_SECONDS = 86400


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


def human_time(timestamp: float | None, now: float | None = None) -> str:
    if timestamp is None:
        return "-"
    now = time.time() if now is None else now
    moment = datetime.fromtimestamp(timestamp)
    if abs(now - timestamp) < _SAME_DAY_SECONDS:
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M")


def progress_text(progress: float) -> Text:
    text = formatting.bar(progress, PROGRESS_BAR_WIDTH)
    text.append(f" {progress * 100:5.1f}%")
    return text


def state_text(run: RunSummary) -> Text:
    """The run's state as a plain word (no glyph: the tables are parsed by scripts)."""
    text = formatting.state_text(run.state, paused_hard=run.paused_hard, glyph=False)
    if run.oom:
        text.append(" (oom)")
    return text


def elapsed(run: RunSummary, now: float | None = None) -> float | None:
    """Running time only: pauses, queueing and waits between retries do not count."""
    return running_seconds(run, time.time() if now is None else now)


def eta(run: RunSummary, now: float | None = None, *, compact: bool = False) -> str:
    """'done ≈ 20:40 (±10 min)' while running ('≈ 20:40 ±10 min' ``compact``), else '-'."""
    if run.state != "running":
        return formatting.MISSING
    clock = time.time() if now is None else now
    return formatting.eta(run.eta_at, run.eta_range, clock, compact=compact)


def queue_text(run: RunSummary, now: float | None = None) -> str:
    """What a waiting run waits for: its start time, its dependencies, a slot, memory;
    or why the daemon paused it (host memory pressure, low disk); else '-'."""
    if run.state == "paused" and run.wait_reason:
        return run.wait_reason
    if run.state == "scheduled":
        return f"starts {human_time(run.start_at, now)}"
    if run.state != "queued":
        return formatting.MISSING
    if run.retry_at is not None and run.retry_at > (time.time() if now is None else now):
        return f"retry at {human_time(run.retry_at, now)}"
    if run.wait_reason:
        return run.wait_reason
    return f"after {','.join(run.after)}" if run.after else formatting.MISSING


def runs_table(runs: Iterable[RunSummary], now: float | None = None) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    columns = ("ID", "NAME", "STATE", "PRIO", "PROGRESS", "STAGE", "STARTED", "ELAPSED", "ETA")
    for column in (*columns, "WAITS"):
        # The stage and the wait reason may wrap; an id or a state cut to "r00…" would be useless.
        table.add_column(column, no_wrap=column not in ("STAGE", "WAITS"), overflow="fold")
    table.add_column("RSS", justify="right", no_wrap=True)
    table.add_column("PEAK", justify="right", no_wrap=True)
    table.add_column("DISK", justify="right", no_wrap=True)
    for run in runs:
        table.add_row(
            run.id,
            run.name,
            state_text(run),
            str(run.priority),
            progress_text(run.progress),
            run.stage or "-",
            human_time(run.started, now),
            formatting.duration(elapsed(run, now)),
            eta(run, now, compact=True),
            queue_text(run, now),
            formatting.size(None if run.state in FINAL_STATES else run.rss),
            formatting.size(run.peak_rss),
            formatting.size(run.disk_used),
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
    label = Text(f"{formatting.state_glyph(status)} {node.get('name', node['id'])}")
    done, total = int(node.get("done") or 0), int(node.get("total") or 0)
    if total:
        label.append(f"  {done}/{total} {node.get('unit', '')}".rstrip(), style="dim")
    if status not in ("done", "pending"):
        label.append(f"  {status}", style=formatting.state_style(status))
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
        ("elapsed", formatting.duration(elapsed(run, now))),
        ("eta", eta(run, now)),
        ("rss", formatting.size(None if run.state in FINAL_STATES else run.rss)),
        ("peak rss", formatting.size(run.peak_rss)),
        ("predicted peak", _prediction(run)),
        ("disk used", formatting.size(run.disk_used)),
        ("retries", str(run.retries)),
        ("priority", str(run.priority)),
    ]
    if run.after:
        rows.append(("after", ", ".join(run.after)))
    if run.start_at is not None:
        rows.append(("start at", human_time(run.start_at, now)))
    if run.state in ("scheduled", "queued") or run.wait_reason:
        rows.append(("waits", queue_text(run, now)))
    if run.labels:
        rows.append(("labels", " ".join(f"{k}={v}" for k, v in sorted(run.labels.items()))))
    if run.start_window is not None:
        rows.append(("start window", str(run.start_window)))
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


def _prediction(run: RunSummary) -> str:
    """'1.2 GiB (peak of run r0003)': what the memory broker reserves for the run, and why."""
    if run.predicted_peak is None:
        return formatting.MISSING
    return f"{formatting.size(run.predicted_peak)} ({run.prediction or 'unknown source'})"


def daemon_summary(status: DaemonStatus, now: float | None = None) -> Table:
    """The ``status`` method's facts, readable: times as clock and duration, counts as words.

    Fields this function does not know are still shown (as text), so a newer daemon's
    additions appear without a CLI change.
    """
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    shown: dict[str, str] = {}
    for key, value in status.model_dump(mode="json").items():
        if key == "started":
            shown["started"] = human_time(value, now)
        elif key == "uptime":
            shown["uptime"] = formatting.duration(value)
        elif key == "counts" and isinstance(value, Mapping):
            shown["runs by state"] = (
                ", ".join(f"{count} {state}" for state, count in value.items() if count) or "none"
            )
        elif key == "host_memory" and isinstance(value, Mapping):
            pressure = value.get("pressure")
            shown["host memory"] = (
                f"{formatting.size(value.get('reserved'))} reserved of "
                f"{formatting.size(value.get('budget'))}"
                + (f"; under pressure: {pressure}" if pressure else "")
            )
        elif key == "stopping":
            if value:
                shown["stopping"] = "yes: runs are checkpointing"
        elif key == "settings_loaded":
            shown["settings loaded"] = human_time(value, now) if value else "never"
        elif key == "settings_error":
            if value:
                shown["settings error"] = f"{value} (the previous settings are in force)"
        elif key == "watching" and isinstance(value, list):
            for index, line in enumerate(value):
                shown[f"watch {index + 1}" if len(value) > 1 else "watch"] = str(line)
        elif not isinstance(value, list | Mapping):
            shown[key.replace("_", " ")] = str(value)
    for key, value in shown.items():
        facts.add_row(key, value)
    return facts


def log_line(record: LogEvent) -> Text:
    """One log record as ``HH:MM:SS LEVEL  stage  message``."""
    moment = datetime.fromtimestamp(record.time).strftime("%H:%M:%S")
    line = Text(f"{moment} ")
    line.append(f"{record.level:<8}", style=formatting.LEVEL_STYLE.get(record.level, ""))
    where = record.stage or record.logger
    if where:
        line.append(f" {where}", style="cyan")
    if record.dataset:
        line.append(f"[{record.dataset}]", style="cyan")
    line.append(f"  {record.message}")
    return line
