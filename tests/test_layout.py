"""The README's module map and the import rules stay true as modules come and go."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUPERVISOR = REPO / "supervisor"
#: Layers and what each may import (``tui → supervisor → pipeline``, nothing back up).
ALLOWED = {"pipeline": {"pipeline"}, "supervisor": {"pipeline", "supervisor"}}


def _module_map() -> dict[str, str]:
    """``name → description`` from the README's one-line-per-module map of supervisor/."""
    text = (REPO / "README.md").read_text()
    section = text.split("`supervisor/`, one line per module:", 1)[1].split("\n\n", 2)[1]
    return dict(re.findall(r"^ {4}(\S+)\s+(.+)$", section, re.MULTILINE))


def test_readme_maps_every_supervisor_module_in_one_line() -> None:
    on_disk = {p.name for p in SUPERVISOR.glob("*.py") if p.name != "__init__.py"}
    on_disk |= {f"{p.name}/" for p in SUPERVISOR.iterdir() if (p / "__init__.py").exists()}
    assert set(_module_map()) == on_disk


def test_no_import_runs_back_up_the_layers() -> None:
    wrong = []
    for layer, allowed in ALLOWED.items():
        for path in (REPO / layer).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top in {"pipeline", "supervisor", "tui"} and top not in allowed:
                        wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert wrong == []
