"""When the dashboard rings the terminal bell: a run ended, failed, or hit critical memory.

Someone watching a six-hour run is usually looking at something else; a bell
(``\\a``, which terminals and tmux turn into a sound, a flash or a window flag)
says "look now". It rings on a *change* only — a run seen already finished at
attach, or memory staying critical, rings nothing — and ``geo-tui attach
--no-bell`` turns it off.
"""

from __future__ import annotations

from collections.abc import Iterable

from supervisor.protocol import FINAL_STATES
from tui.state import DashboardState

#: The governor level that rings.
CRITICAL = "critical"


class Alerts:
    """Remembers what each run last looked like and says what deserves the bell."""

    def __init__(self, state: DashboardState) -> None:
        self._state = state
        self._run_states: dict[str, str] = {}
        self._critical: set[str] = set()

    def check(self, runs: Iterable[str], memory: Iterable[str]) -> list[str]:
        """Reasons to ring for the runs and memory that changed since the last frame."""
        reasons = []
        for run_id in runs:
            view = self._state.runs.get(run_id)
            if view is None:
                self._run_states.pop(run_id, None)
                continue
            state, before = view.summary.state, self._run_states.get(run_id)
            self._run_states[run_id] = state
            if before is not None and before not in FINAL_STATES and state in FINAL_STATES:
                reasons.append(f"{run_id} {state}")
        for run_id in memory:
            view = self._state.runs.get(run_id)
            critical = view is not None and view.levels.level == CRITICAL
            if critical and run_id not in self._critical:
                reasons.append(f"{run_id} memory critical")
            (self._critical.add if critical else self._critical.discard)(run_id)
        return reasons
