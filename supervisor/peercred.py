"""Who is on the other end of a Unix socket, and whose directory a socket lives in.

Both sides of the socket use this: the daemon to admit clients (``SO_PEERCRED``
and its socket group) and to refuse a socket directory someone else could
rename the socket out of; the client to refuse a server that is not the daemon
it meant to reach before it sends anything (a submission names a config path,
and the answer is believed).
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

_PEERCRED = struct.Struct("3i")
#: Mode bits that let someone other than the owner add, rename or remove entries.
_SHARED_WRITE = stat.S_IWGRP | stat.S_IWOTH


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> Peer:
    """The connected peer's pid, uid and gid, as the kernel recorded them at connect time."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return Peer(*_PEERCRED.unpack(raw))


def directory_problem(directory: Path) -> str | None:
    """Why ``directory`` may not hold this user's socket, or None if it may.

    It must belong to this user or root, and nobody else may write to it unless
    the sticky bit stops them renaming what is not theirs (as in /tmp).
    """
    info = os.stat(directory)
    if info.st_uid not in (os.geteuid(), 0):
        return f"{directory} belongs to uid {info.st_uid}, not to this user or root"
    if info.st_mode & _SHARED_WRITE and not info.st_mode & stat.S_ISVTX:
        return f"{directory} is writable by others (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def trusted_server_uids(socket_path: Path) -> set[int]:
    """The uids a client believes on ``socket_path``: its own, root's, and the uid of a
    service owning the socket's directory when nobody else can write to that directory
    (``/run/geod`` of the system service, reached by its socket group's members)."""
    trusted = {os.geteuid(), 0}
    try:
        info = os.stat(socket_path.parent)
    except OSError:
        return trusted
    if not info.st_mode & _SHARED_WRITE:
        trusted.add(info.st_uid)
    return trusted
