"""The runs table's ``:`` filter, as in k9s: ``:running`` keeps runs by state, ``/demo`` by name.

A filter is a few words: a word starting with ``/`` keeps runs whose name
contains the rest (any case); any other word names a state, or the start of
one (``fail`` is ``failed``), and several states keep runs in any of them
(``running paused``). Kinds combine: ``running /demo`` is running runs named
like demo. Pure and Textual-free, so it is tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.contract import RUN_STATES
from supervisor.protocol import RunSummary

#: What starts a name filter word.
NAME_MARK = "/"


class FilterError(ValueError):
    """A filter word names no state (the message says which states there are)."""


@dataclass(frozen=True)
class RunFilter:
    """Runs in one of ``states`` (any if empty) whose name contains ``name`` (any if None)."""

    states: frozenset[str] = frozenset()
    name: str | None = None

    @classmethod
    def parse(cls, text: str) -> RunFilter:
        """``running /demo`` → that filter; a leading ``:`` is allowed; raises FilterError."""
        states: set[str] = set()
        name: str | None = None
        for word in text.strip().removeprefix(":").replace(",", " ").split():
            if word.startswith(NAME_MARK):
                name = word[len(NAME_MARK) :].lower() or None
                continue
            matches = [state for state in RUN_STATES if state.startswith(word.lower())]
            if len(matches) != 1:
                raise FilterError(f"filter: {word!r} names no state ({', '.join(RUN_STATES)})")
            states.add(matches[0])
        return cls(frozenset(states), name)

    def __bool__(self) -> bool:
        return bool(self.states or self.name)

    def matches(self, run: RunSummary) -> bool:
        if self.states and run.state not in self.states:
            return False
        return self.name is None or self.name in run.name.lower()

    def __str__(self) -> str:
        """The filter as typed back: ``:running /demo``."""
        words = [state for state in RUN_STATES if state in self.states]
        if self.name:
            words.append(NAME_MARK + self.name)
        return ":" + " ".join(words)
