"""The ``watch:`` section of ``geod.yml``: folders the daemon watches for new rasters.

::

    watch:
      - dir: /data/incoming          # relative paths: against geod.yml's folder
        pattern: "*.tif"             # fnmatch on the file name (default *.tif)
        config: /data/pipeline.yml   # a config whose glob: datasets pick up the files
        on_new: submit               # or record (default): inspect and list only
        settle_seconds: 10           # size and mtime unchanged this long before a file is taken
        recursive: false
        attempts: 3                  # settled-but-unreadable checks before it is reported
    reload_debounce: 0.5             # seconds of quiet after an edit of geod.yml before reloading

A file is taken once its writes have settled and it opens as a complete raster
(:mod:`supervisor.watcher`); ``record`` inspects it and lists it in ``geod
sources`` and telemetry's ``raster_sources``; ``submit`` additionally queues one
run of ``config`` for the files that arrived together. The section lives in its
own model, mixed into :class:`supervisor.settings.Settings`, so it stays apart
from the other daemon settings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: A rule's name becomes a file name in the state directory and a telemetry stream id.
RULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,62}$")


class WatchRule(BaseModel):
    """One watched folder and what happens to the rasters that arrive in it."""

    model_config = ConfigDict(extra="forbid")

    dir: Path = Field(description="The watched folder (relative: against geod.yml's folder).")
    name: str | None = Field(
        default=None,
        description="Names the rule in `geod sources`, logs, the state directory and telemetry "
        "(default: the folder's name).",
    )
    pattern: str = Field(default="*.tif", description="File names taken (fnmatch).")
    config: Path | None = Field(
        default=None, description="The pipeline config submitted when on_new is submit."
    )
    on_new: Literal["record", "submit"] = Field(
        default="record", description="record: inspect and list; submit: also queue a run."
    )
    settle_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a file's size and mtime must stay unchanged before it is taken "
        "(a file renamed into the folder is taken at once).",
    )
    recursive: bool = Field(default=False, description="Watch subfolders too.")
    attempts: int = Field(
        default=3,
        ge=1,
        description="Times a settled file that does not open as a complete raster is tried "
        "again (each after settle_seconds) before it is reported as an error.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not RULE_NAME.fullmatch(value):
            raise ValueError(f"{value[:80]!r} is not a valid rule name: use letters, digits, _ -")
        return value

    @model_validator(mode="after")
    def _submit_needs_config(self) -> WatchRule:
        if self.on_new == "submit" and self.config is None:
            raise ValueError("on_new: submit needs a config: to submit")
        return self

    @property
    def key(self) -> str:
        """The rule's name (its folder's name unless given), unique among the rules."""
        if self.name is not None:
            return self.name
        return re.sub(r"[^A-Za-z0-9_\-]", "_", self.dir.name or "root").lstrip("-") or "root"

    def resolved(self, base: Path) -> WatchRule:
        """The rule with ``dir`` and ``config`` made absolute against ``base``."""
        config = None if self.config is None else (base / self.config).resolve()
        return self.model_copy(update={"dir": (base / self.dir).resolve(), "config": config})


class WatchSettings(BaseModel):
    """The watch folders and live reload of ``geod.yml``: a section of the daemon settings."""

    watch: list[WatchRule] = Field(
        default_factory=list, description="Folders watched for new rasters (see watch_rules)."
    )
    reload_debounce: float = Field(
        default=0.5,
        gt=0,
        description="Seconds without further edits to geod.yml before it is reloaded "
        "(an editor saves in several writes).",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> WatchSettings:
        seen: dict[str, int] = {}
        for index, rule in enumerate(self.watch):
            if rule.key in seen:
                raise ValueError(
                    f"watch[{index}]: rule name {rule.key!r} is also watch[{seen[rule.key]}]'s; "
                    "give one a name:"
                )
            seen[rule.key] = index
        return self
