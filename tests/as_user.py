"""Run a piece of test code as another user: fork, switch uid/gid, JSON back to the parent.

Forked, not exec'd, because the interpreter may live where the other user cannot
execute it (a venv under /root). Needs root.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any


def call_as(uid: int, gid: int, action: Callable[[], Any]) -> Any:
    """``action()``'s JSON-able result, computed in a child running as ``uid``/``gid``."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read_fd)
        answer: Any
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            answer = action()
        except BaseException as exc:
            answer = f"{type(exc).__name__}: {exc}"
        try:
            os.write(write_fd, json.dumps(answer).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)
