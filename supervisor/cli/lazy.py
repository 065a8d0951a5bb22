"""A click group that imports a command's module only when that command runs.

The verbs' modules pull in pydantic configs, rich, psycopg2 and (for ``run``,
``export``, ``open``) the data path; importing them all made every ``geod``
call, even ``geod --help``, pay for every verb. This is click's documented
lazy-loading pattern (a ``click.Group`` whose ``get_command`` imports
``module:attr`` on demand), plus a help listing drawn from the table itself,
because click's own listing would load every command to ask its short help.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import click

#: Columns click reserves around a command's name in the listing (``Group.format_commands``).
_NAME_GAP = 6


@dataclass(frozen=True)
class LazyCommand:
    """Where a command lives (``"package.module:attr"``) and its one-line help.

    ``help`` is the command's short help as click would derive it from the
    docstring; ``tests/test_startup_imports.py`` checks the two stay equal.
    """

    target: str
    help: str

    def short_help(self, limit: int) -> str:
        """``help`` cut to ``limit`` columns the way click cuts a docstring's first line."""
        # A bare Command runs click's own shortening; its helper function is deprecated.
        return click.Command(None, help=self.help).get_short_help_str(limit)


class LazyGroup(click.Group):
    """A ``click.Group`` whose subcommands are imported from a table when first used."""

    def __init__(self, *args: Any, lazy_commands: Mapping[str, LazyCommand], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands and cmd_name not in self.commands:
            self.add_command(self._load(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def _load(self, cmd_name: str) -> click.Command:
        module_name, attr = self.lazy_commands[cmd_name].target.split(":", 1)
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module_name}:{attr} is a {type(command).__name__}, not a command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the commands with the table's help, as click would, without importing them.

        Commands already loaded (or added eagerly) use their own short help.
        """
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - _NAME_GAP - max(len(name) for name in names)
        rows = []
        for name in names:
            command = self.commands.get(name)
            if command is not None:
                if command.hidden:
                    continue
                rows.append((name, command.get_short_help_str(limit)))
            else:
                rows.append((name, self.lazy_commands[name].short_help(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)
