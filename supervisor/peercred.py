"""Who is on the other end of a Unix socket, and whose directory a socket lives in.

Both sides of the socket use this: the daemon to admit clients (``SO_PEERCRED``
and its socket group) and to refuse a socket directory someone else could
rename the socket out of; the client to refuse a server that is not the daemon
it meant to reach before it sends anything (a submission names a config path,
and the answer is believed).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
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


@dataclass(frozen=True)
class Identity:
    """Whom a run belongs to and its worker runs as: a peer's uid, gid and groups."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


def peer_groups(peer: Peer) -> set[int]:
    """The peer's primary and supplementary groups (from /proc, falling back to the group db)."""
    groups = {peer.gid}
    try:
        with open(f"/proc/{peer.pid}/status") as handle:
            for line in handle:
                if line.startswith("Groups:"):
                    groups.update(int(g) for g in line.split()[1:])
                    return groups
    except OSError:
        pass
    with contextlib.suppress(KeyError):
        name = pwd.getpwuid(peer.uid).pw_name
        groups.update(g.gr_gid for g in grp.getgrall() if name in g.gr_mem)
    return groups


def worker_identity(peer: Peer) -> Identity | None:
    """As whom a root daemon runs this peer's runs: the peer itself, unless it is root.

    A daemon not running as root can only run workers as itself (and only its own
    user or root may connect to it then), so there is nothing to switch to.
    """
    if os.geteuid() != 0 or peer.uid == 0:
        return None
    return Identity(peer.uid, peer.gid, tuple(sorted(peer_groups(peer))))


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
