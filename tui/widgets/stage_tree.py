"""The stage tree of the selected run: run → stage → dataset → window groups, with progress.

Each node's label carries a status icon, a bar, done/total, rate and ETA.
Updates are incremental: :meth:`StageTree.apply` relabels only the stage ids
that changed since the last frame and adds nodes for new ids; the whole tree
is rebuilt only when another run is selected or after a resync snapshot.
The branch that is running is expanded automatically (and collapsed again when
it finishes, unless the user opened it); a failed node is shown in red with
its error, and its ancestors are opened so it cannot be missed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from supervisor import formatting
from supervisor.protocol import RunSummary
from tui.state import DashboardState, StageProgress

#: Cells of each node's progress bar.
BAR_WIDTH = 12
#: Longest error text shown inline on a failed node (the log has the rest).
ERROR_CHARS = 80
#: Names are padded to this many cells so bars line up between siblings.
NAME_WIDTH = 14


class StageTree(Tree[str]):
    """Progress of one run's stages; ``data`` of every node is its stage id."""

    # Open/closed marks distinct from the ▶ "running" status icon.
    ICON_NODE = "▸ "
    ICON_NODE_EXPANDED = "▾ "

    def __init__(self, state: DashboardState, **kwargs: Any) -> None:
        super().__init__("no run selected", **kwargs)
        self._state = state
        self.run_id: str | None = None
        self._by_stage: dict[str, TreeNode[str]] = {}
        #: Nodes we opened because they were running; only those are closed again.
        self._auto_opened: set[str] = set()
        self.border_title = "Stages"
        #: The shown run's state when the labels were drawn (pausing relabels every node).
        self._run_state: str | None = None
        self.show_root = True
        self.guide_depth = 2

    @property
    def highlighted_stage(self) -> str | None:
        node = self.cursor_node
        return node.data if node is not None else None

    def show_run(self, run_id: str | None) -> None:
        """Rebuild for ``run_id`` (a new selection or a resync)."""
        self.run_id = run_id
        self._by_stage.clear()
        self._auto_opened.clear()
        self.clear()
        self.root.data = None
        if run_id is None:
            self.root.set_label("no run selected")
            return
        self.root.set_label(Text(run_id, style="bold"))
        self.root.expand()
        self.apply(info.node.id for info in self._state.ordered_stages(run_id))

    def run_changed(self) -> None:
        """The shown run's summary changed: relabel everything if its state did (‖ vs ▶)."""
        view = self._state.runs.get(self.run_id) if self.run_id else None
        state = view.summary.state if view is not None else None
        if state != self._run_state:
            self._run_state = state
            self.apply(list(self._by_stage))
        elif "run" in self._by_stage:
            self.apply(["run"])  # the root carries the run's ETA

    def apply(self, stage_ids: Iterable[str]) -> None:
        """Add or relabel the given stages of the shown run."""
        if self.run_id is None:
            return
        view = self._state.runs.get(self.run_id)
        if view is None:
            return
        touched: dict[str, None] = {}
        for stage_id in stage_ids:
            if stage_id in view.stages:
                touched[stage_id] = None
                # A child's progress moves its ancestors' bars too.
                touched.update(dict.fromkeys(view.ancestors(stage_id)))
        for stage_id in sorted(touched, key=lambda sid: sid.count("/")):
            self._upsert(view.stages[stage_id], view.fraction(stage_id))

    # -- internals ------------------------------------------------------------------

    def _upsert(self, info: StageProgress, fraction: float) -> None:
        node = self._by_stage.get(info.node.id)
        view = self._state.runs.get(self.run_id) if self.run_id else None
        summary = view.summary if view is not None else None
        if info.node.kind == "run" and summary is not None:
            fraction = summary.progress  # the daemon's figure, the same the table shows
        label = stage_label(info, fraction, summary, self._state.clock())
        if node is None:
            if info.node.parent is None:
                node = self.root
                node.data = info.node.id
                node.set_label(label)
            else:
                parent = self._by_stage.get(info.node.parent, self.root)
                leaf = info.node.kind == "window_group"
                node = parent.add(label, data=info.node.id, allow_expand=not leaf)
            self._by_stage[info.node.id] = node
        else:
            node.set_label(label)
        self._follow_activity(info, node)

    def _follow_activity(self, info: StageProgress, node: TreeNode[str]) -> None:
        if info.node.status in ("running", "failed"):
            for ancestor in _ancestors(node):
                if not ancestor.is_expanded:
                    ancestor.expand()
                    if ancestor.data is not None:
                        self._auto_opened.add(ancestor.data)
            if (
                info.node.status == "running"
                and info.node.kind != "window_group"
                and not node.is_expanded
            ):
                node.expand()
                self._auto_opened.add(info.node.id)
        elif (
            info.node.status == "done"
            and info.node.id in self._auto_opened
            and node is not self.root
        ):
            node.collapse()
            self._auto_opened.discard(info.node.id)


def _ancestors(node: TreeNode[str]) -> Iterable[TreeNode[str]]:
    parent = node.parent
    while parent is not None:
        yield parent
        parent = parent.parent


def stage_label(info: StageProgress, fraction: float, run: RunSummary | None, now: float) -> Text:
    """``▶ bio1          ████░░░░ 12/40 windows · 3.1/s``; the root carries the run's ETA.

    Labels put what matters first and keep it short, so a narrow tree cuts
    only the tail. While the run is paused a running node shows ‖ and no rate
    (nothing moves). The root shows the run's own progress and its
    ``done ≈ 20:40 (±10 min)``, the one ETA the table and the CLI show too.
    """
    node = info.node
    paused = run is not None and run.state == "paused"
    status = "paused" if paused and node.status == "running" else node.status
    failed = status == "failed"
    text = Text(f"{formatting.state_glyph(status)} ", style=formatting.state_style(status))
    text.append(f"{node.name:<{NAME_WIDTH}}", style="bold red" if failed else "")
    text.append(" ")
    text.append_text(formatting.bar(fraction, BAR_WIDTH, "red" if failed else "green"))
    if node.kind == "run" and run is not None:
        text.append(f" {fraction * 100:.1f}%")
        if run.state == "running" and run.eta_at is not None:
            eta = formatting.eta(run.eta_at, run.eta_range, now)
            text.append(f"  {eta}", style="bright_black")
    elif node.total:
        text.append(f" {node.done}/{node.total} {node.unit}")
    speed = info.rate if status == "running" and node.kind != "run" else None
    if speed:
        text.append(f" · {formatting.rate(speed, '')}", style="cyan")
    if failed and node.error:
        error = node.error if len(node.error) <= ERROR_CHARS else node.error[:ERROR_CHARS] + "…"
        text.append(f"  {error}", style="bold red")
    return text
