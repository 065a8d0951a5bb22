"""geo-tui: the dashboard app — layout, the frame timer, and the key actions.

Data flow: :class:`~tui.connection.DaemonLink` (a worker task) feeds the
:class:`~tui.state.DashboardState`; a timer at :data:`FRAME_HZ` drains the
state's :class:`~tui.state.Changes` and hands each widget only what concerns
it (changed rows, changed stage ids, new log records, new memory samples).
Nothing is repainted per event, which is what keeps the app responsive while a
run emits thousands of events per second.

Actions go to the daemon through the link; their visible effect arrives back as
notifications like anyone else's, so several dashboards attached at once show
the same thing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

from textual import on
from textual.app import App, ComposeResult, SystemCommand
from textual.containers import Vertical
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Header, Input

from supervisor import formatting
from supervisor.client import Call, Calls
from supervisor.protocol import FINAL_STATES, ProtocolError, Selection
from tui.alerts import Alerts
from tui.bindings import APP_BINDINGS, COMMANDS
from tui.connection import Backoff, DaemonLink, NotConnected
from tui.run_filter import FilterError, RunFilter
from tui.screens.confirm_kill import ConfirmKill
from tui.screens.help import HelpScreen
from tui.screens.sources import SourcesScreen
from tui.state import DashboardState
from tui.widgets.banner import ConnectionBanner
from tui.widgets.body import Body
from tui.widgets.events_pane import EventsPane
from tui.widgets.filter_box import FilterBox
from tui.widgets.log_view import LogView, plural
from tui.widgets.memory_chart import MemoryChart
from tui.widgets.run_map import RunMapPanel
from tui.widgets.runs_table import RunsTable
from tui.widgets.search_box import SearchBox
from tui.widgets.stage_tree import StageTree

#: Frames per second at which batched changes reach the log (≤ 100 ms behind an event).
FRAME_HZ = 10
#: The runs table and stage tree are repainted at most this often: a row or tree line
#: costs milliseconds to render in Textual, and eyes read progress no faster anyway.
PANEL_HZ = 4
#: The memory chart is redrawn at most this often (samples arrive about once a second).
CHART_HZ = 2
#: Elapsed times and the header's uptime tick once a second.
CLOCK_S = 1.0
_CONNECTION_MARK = {
    "connected": "● connected",
    "connecting": "◌ connecting",
    "lost": "✘ disconnected",
    "offline": "○ replay",
}


class GeodApp(App[None]):
    """The dashboard. ``connect=False`` shows a state fed by the caller (tests, replays)."""

    CSS_PATH = "app.tcss"
    BINDINGS = APP_BINDINGS
    TITLE = "geod"

    def __init__(
        self,
        *,
        state: DashboardState | None = None,
        socket_path: Path | None = None,
        run: str | None = None,
        connect: bool = True,
        backoff: Backoff | None = None,
        bell: bool = True,
    ) -> None:
        super().__init__()
        #: Ring the terminal bell when a run ends, fails or hits critical memory.
        self.ring_bell = bell
        self.state = state or DashboardState()
        self.alerts = Alerts(self.state)
        self.initial_run = run
        self.selected: str | None = None
        self.link: DaemonLink | None = None
        if connect:
            self.link = DaemonLink(
                self.state,
                socket_path,
                backoff=backoff,
                wanted_runs=lambda: [self.selected] if self.selected else [],
            )
        else:
            self.state.connection.state = "offline"
        self._chart_due = False
        self._chart_drawn = 0.0
        # Changes held back for the next panel repaint (see PANEL_HZ).
        self._runs_due: set[str] = set()
        self._stages_due: set[str] = set()
        self._stages_reset = False
        self._panels_drawn = 0.0
        # The panels, built once: frames and actions use these directly (no DOM query
        # per frame, and none that could miss while a modal screen is on top).
        self.runs_table = RunsTable(self.state, id="runs")
        self.stage_tree = StageTree(self.state, id="stages")
        self.memory_chart = MemoryChart(self.state, id="memory")
        self.run_map = RunMapPanel(self.state, id="map")
        self._map_due = False
        self.events_pane = EventsPane(self.state, id="events")
        self.log_view = LogView(self.state, id="log")
        self.search_box = SearchBox(id="search")
        self.filter_box = FilterBox(id="filter")
        self.banner = ConnectionBanner(id="banner")
        self.body = Body(id="body")

    # -- layout -----------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        yield self.banner
        yield self.filter_box
        yield self.runs_table
        with self.body:
            yield self.stage_tree
            with Vertical(id="right"):
                yield self.memory_chart
                yield self.run_map
                yield self.events_pane
                yield self.log_view
                yield self.search_box
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(1 / FRAME_HZ, self.frame, name="frame")
        self.set_interval(CLOCK_S, self._tick, name="clock")
        self.search_box.display = False
        self.filter_box.display = False
        self.runs_table.focus()
        self.state.touch_connection()
        if self.link is not None:
            self.run_worker(self.link.run(), name="daemon-link", group="link", exit_on_error=False)
        self.frame()
        self._tick()

    # -- the frame: batched state → widgets ---------------------------------------------

    def frame(self) -> None:
        """Apply everything that changed since the last frame."""
        changes = self.state.take_changes()
        now = time.monotonic()
        reasons = self.alerts.check(changes.runs, changes.memory)
        if reasons and self.ring_bell:
            self.bell()
            self.notify(" · ".join(reasons), severity="warning", timeout=5)
        self._runs_due |= changes.runs
        run = self.selected
        if run is not None:
            self._stages_reset |= run in changes.stages_reset
            self._stages_due |= changes.stages.get(run, set())
        if now - self._panels_drawn >= 1 / PANEL_HZ:
            self._panels_drawn = now
            self._repaint_panels()
        if changes.connection:
            self.banner.show_info(self.state.connection)
            self._update_header()
        if changes.transitions_reset:
            self.events_pane.reload()
        elif changes.transitions:
            self.events_pane.add(changes.transitions)
        run = self.selected
        if run is None:
            return
        log = self.log_view
        if run in changes.logs_reset:
            log.reload()
        elif run in changes.logs:
            log.append(changes.logs[run])
        if run in changes.memory:
            self._chart_due = True
        self._map_due |= run in changes.maps
        if (self._chart_due or self._map_due) and now - self._chart_drawn >= 1 / CHART_HZ:
            self._chart_drawn = now
            if self._chart_due:
                self._chart_due = False
                self.memory_chart.redraw()
            if self._map_due and self.map_shown:
                self._map_due = False
                self.run_map.redraw()

    def _repaint_panels(self) -> None:
        """The table and tree catch up with everything held back since their last repaint."""
        if self._runs_due:
            runs, self._runs_due = self._runs_due, set()
            self.runs_table.sync(runs)
            if self.selected is None or self.selected not in self.state.runs:
                self._choose_initial()
            elif self.selected in runs and not self._stages_reset:
                self.stage_tree.run_changed()
        if self._stages_reset:
            self.stage_tree.show_run(self.selected)
        elif self._stages_due:
            self.stage_tree.apply(self._stages_due)
        self._stages_reset, self._stages_due = False, set()

    def _tick(self) -> None:
        self.runs_table.tick()
        self._update_header()

    def _update_header(self) -> None:
        info = self.state.connection
        parts = []
        if info.daemon_version:
            parts.append(f"daemon {info.daemon_version}")
        if info.daemon_started and info.state == "connected":
            parts.append(f"up {formatting.duration(self.state.clock() - info.daemon_started)}")
        parts.append(_CONNECTION_MARK.get(info.state, info.state))
        self.sub_title = " · ".join(parts)

    def _choose_initial(self) -> None:
        table = self.runs_table
        runs = self.state.runs
        wanted = self.initial_run if self.initial_run in runs else None
        if self.initial_run is not None and wanted is None:
            self.notify(f"no run {self.initial_run}; showing another", severity="warning")
        self.initial_run = None  # asked once: later choices follow the table
        if wanted is None:
            active = [r for r, view in runs.items() if view.summary.state not in FINAL_STATES]
            wanted = active[0] if active else next(iter(runs), None)
        if wanted is not None:
            table.select(wanted)
        self.select_run(wanted)

    # -- selection ---------------------------------------------------------------------

    @on(RunsTable.RunChosen)
    def _on_run_chosen(self, message: RunsTable.RunChosen) -> None:
        # Highlight messages are queued; after a re-sort an older one may name a row
        # the cursor has already left, so only the row under the cursor counts.
        if message.run_id == self.runs_table.selected_run:
            self.select_run(message.run_id)

    def select_run(self, run_id: str | None) -> None:
        """Point the stage tree, chart and log at ``run_id``."""
        if run_id == self.selected:
            return
        self.selected = run_id
        self._stages_reset, self._stages_due = False, set()
        self.stage_tree.show_run(run_id)
        self.log_view.show_run(run_id)
        self.memory_chart.show_run(run_id)
        self.run_map.show_run(run_id)
        if run_id is not None and self.link is not None and self.link.connected:
            self.run_worker(self._load(self.link, run_id), group="load", exit_on_error=False)

    async def _load(self, link: DaemonLink, run_id: str) -> None:
        try:
            await link.load_run(run_id)
        except (ProtocolError, NotConnected) as exc:
            self.notify(f"could not load {run_id}: {exc}", severity="warning")

    @on(LogView.NeedOlder)
    def _on_need_older(self, message: LogView.NeedOlder) -> None:
        if self.link is not None and self.link.connected:
            older = self._older(self.link, message.run_id, message.before_seq)
            self.run_worker(older, group="load", exit_on_error=False)

    async def _older(self, link: DaemonLink, run_id: str, before_seq: int) -> None:
        try:
            await link.fetch_logs(run_id, before_seq)
        except (ProtocolError, NotConnected) as exc:
            self.notify(f"could not page back: {exc}", severity="warning")

    # -- actions -----------------------------------------------------------------------

    def action_pause(self) -> None:
        if self.selected is not None:
            self._send(Calls.pause(Selection(run=self.selected)), f"pause {self.selected}")

    def action_resume(self) -> None:
        if self.selected is not None:
            self._send(Calls.resume(Selection(run=self.selected)), f"resume {self.selected}")

    def action_pause_all(self) -> None:
        self._send(Calls.pause(Selection(all=True)), "pause all")

    def action_resume_all(self) -> None:
        self._send(Calls.resume(Selection(all=True)), "resume all")

    def action_retry(self) -> None:
        if self.selected is not None:
            self._send(Calls.retry(self.selected), f"retry {self.selected}")

    def action_priority(self, step: int) -> None:
        """``+``/``-``: the selected run's priority one up or down (the queue reorders)."""
        view = self.state.runs.get(self.selected) if self.selected is not None else None
        if view is not None:
            priority = view.summary.priority + step
            call = Calls.priority(view.summary.id, priority)
            self._send(call, f"priority {view.summary.id} → {priority}")

    def action_kill(self) -> None:
        self._confirm_kill(force=False)

    def action_force_kill(self) -> None:
        self._confirm_kill(force=True)

    def _confirm_kill(self, *, force: bool) -> None:
        run = self.selected
        if run is None:
            return

        def done(confirmed: bool | None) -> None:
            if confirmed:
                verb = "force-kill" if force else "kill"
                self._send(Calls.kill(Selection(run=run), force), f"{verb} {run}")

        view = self.state.runs.get(run)
        state = view.summary.state if view is not None else "running"
        self.push_screen(ConfirmKill(run, force=force, state=state), done)

    def _send(self, call: Call[Any], what: str) -> None:
        self.run_worker(self._request(call, what), group="actions", exit_on_error=False)

    async def _request(self, call: Call[Any], what: str) -> None:
        if self.link is None:
            self.notify(f"{what}: not attached to a daemon", severity="warning")
            return
        try:
            await self.link.request(call)
        except (ProtocolError, NotConnected) as exc:
            self.notify(f"{what}: {exc}", severity="error")
        else:
            self.notify(f"{what}: sent", timeout=2)

    def action_follow(self) -> None:
        following = self.log_view.toggle_follow()
        self.notify("log: following" if following else "log: scroll held", timeout=1.5)

    def action_level(self) -> None:
        level = self.log_view.cycle_level()
        self.notify(f"log level ≥ {level}", timeout=1.5)

    def action_stage_filter(self) -> None:
        log = self.log_view
        stage = self.stage_tree.highlighted_stage
        if log.stage_filter is not None or stage in (None, "run"):
            log.set_stage_filter(None)
            self.notify("log: all stages", timeout=1.5)
        else:
            log.set_stage_filter(stage)
            self.notify(f"log: stage {stage}", timeout=1.5)

    def action_pin_stage(self) -> None:
        log = self.log_view
        log.pinned = not log.pinned
        log.set_stage_filter(log.stage_filter)  # repaints the subtitle
        state = "kept" if log.pinned else "reset"
        self.notify(f"log: stage filter {state} when another run is selected", timeout=1.5)

    def action_search(self) -> None:
        self._show_panel(self.log_view)  # narrow layout: the log is what is searched
        box = self.search_box
        box.display = True
        box.focus()

    @on(Input.Submitted, "#search")
    def _on_search(self, message: Input.Submitted) -> None:
        box = self.search_box
        box.display = False
        log = self.log_view
        hits = log.set_search(message.value)
        log.focus()
        if message.value:
            self.notify(f"/{message.value}: {plural(hits, 'hit')}", timeout=2)

    def action_filter(self) -> None:
        """``:`` as in k9s: a prompt over the runs table, holding the filter in force."""
        box = self.filter_box
        table = self.runs_table
        box.value = str(table.run_filter)[1:] if table.run_filter else ""
        box.display = True
        box.focus()

    @on(Input.Submitted, "#filter")
    def _on_filter(self, message: Input.Submitted) -> None:
        try:
            run_filter = RunFilter.parse(message.value)
        except FilterError as exc:
            self.notify(str(exc), severity="error", timeout=4)
            return  # the prompt stays open with what was typed
        self.filter_box.display = False
        self.runs_table.set_filter(run_filter)
        self.runs_table.focus()

    def action_search_next(self) -> None:
        self.log_view.jump(1)

    def action_search_prev(self) -> None:
        self.log_view.jump(-1)

    def action_memory_span(self) -> None:
        span = self.memory_chart.cycle_span()
        self.notify(f"memory: {span}", timeout=1.5)

    def action_memory_series(self) -> None:
        if len(self.memory_chart.series_names()) == 1:
            self.notify("memory: this run has no Dask workers", timeout=1.5)
            return
        self.notify(f"memory: {self.memory_chart.cycle_series()}", timeout=1.5)

    def action_sort(self) -> None:
        self.runs_table.cycle_sort()

    def action_cycle_panel(self) -> None:
        self._cycle(1)

    def action_cycle_panel_back(self) -> None:
        self._cycle(-1)

    def _cycle(self, step: int) -> None:
        # Tab cycles through the panels only (never into the hidden search box).
        panels: list[Widget] = [self.runs_table, *self._body_panels()]
        focused = self.focused
        index = panels.index(focused) if focused in panels else -1
        panel = panels[(index + step) % len(panels)]
        if panel is not self.runs_table:
            self._show_panel(panel)
        panel.focus()

    def _body_panels(self) -> list[Widget]:
        middle = self.run_map if self.map_shown else self.memory_chart
        return [self.stage_tree, middle, self.events_pane, self.log_view]

    @property
    def map_shown(self) -> bool:
        return self.body.has_class("-map")

    def action_map(self) -> None:
        """Swap the memory chart for the map of the run's windows (and back)."""
        body = self.body
        shown = not self.map_shown
        focused = self.focused in (self.memory_chart, self.run_map)
        body.set_class(shown, "-map")
        panel = self.run_map if shown else self.memory_chart
        if shown:
            self.run_map.redraw()
        if body.has_class("-narrow") or focused:
            self._show_panel(panel)
            panel.focus()

    def _show_panel(self, panel: Widget) -> None:
        """In the narrow layout, the body shows ``panel`` alone (the others stay built)."""
        panels = [self.stage_tree, self.memory_chart, self.run_map, self.events_pane, self.log_view]
        self.body.show(str(panel.id), [str(other.id) for other in panels])

    def action_detach(self) -> None:
        """Leave; the daemon keeps every run going (we only ever held a subscription)."""
        self.exit()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_sources(self) -> None:
        self.run_worker(self._show_sources(), group="actions", exit_on_error=False)

    async def _show_sources(self) -> None:
        if self.link is None:
            self.notify("sources: not attached to a daemon", severity="warning")
            return
        try:
            sources = await self.link.request(Calls.sources())
        except (ProtocolError, NotConnected) as exc:
            self.notify(f"sources: {exc}", severity="error")
            return
        self.push_screen(SourcesScreen(sources))

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """geod's own actions first; Textual's built-ins (theme, screenshot...) after them."""
        for command in COMMANDS:
            title = f"{command.title} ({command.display})" if command.key else command.title
            yield SystemCommand(title, command.help, partial(self.run_action, command.action))
        yield from super().get_system_commands(screen)
