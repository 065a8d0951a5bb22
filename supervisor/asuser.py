"""Reading a client's file with the client's permissions, not the daemon's.

A daemon running as root for a ``socket_group`` must not read, for a group
member, a file that member could not read themselves (``/etc/shadow`` as a
config). The read happens in a forked child that switches to the member's
groups, gid and uid before it opens anything, then applies the same rules as
a local read (regular file, size cap: :func:`pipeline.config.read_capped`) and
expands the config's ``glob:`` datasets as the member lists the folders.
A fork without exec, so it works wherever the daemon's interpreter lives.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pipeline.config import ConfigError, expand_globs_in, read_capped
from supervisor.peercred import Identity

#: First byte of the child's answer: the file's bytes follow, or a one-line error.
_OK, _REFUSED = b"+", b"-"


def _child(identity: Identity, path: Path, write_fd: int) -> None:  # pragma: no cover - child
    try:
        os.setgroups(list(identity.groups))
        os.setgid(identity.gid)
        os.setuid(identity.uid)
        answer = _OK + expand_globs_in(read_capped(path), path)
    except ConfigError as exc:
        answer = _REFUSED + str(exc).encode()
    except BaseException as exc:
        answer = _REFUSED + f"{path}: cannot be read as uid {identity.uid} ({exc})".encode()
    try:
        view = memoryview(answer)
        while view:
            view = view[os.write(write_fd, view) :]
    finally:
        os._exit(0)


def _read(identity: Identity, path: Path) -> bytes:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(read_fd)
        _child(identity, path, write_fd)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    os.waitpid(pid, 0)
    answer = b"".join(chunks)
    if answer[:1] == _OK:
        return answer[1:]
    message = answer[1:].decode(errors="replace") or f"{path}: the reader died"
    raise ConfigError(message.splitlines()[0])


async def read_config_as(identity: Identity, path: Path) -> bytes:
    """The bytes of config ``path`` as ``identity`` may read them; ConfigError otherwise."""
    return await asyncio.to_thread(_read, identity, path)
