"""Readers of /proc/net files: XFRM listeners and xfrm_stat counters.

Both are per network namespace: open them inside the namespace
(:func:`xfrmwatch.netlink.netns.entered`) and they keep showing that one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO

from .xfrm import NETLINK_XFRM, XFRMNLGRP_ACQUIRE, XFRMNLGRP_EXPIRE, XFRMNLGRP_POLICY, XFRMNLGRP_SA

#: IKE daemons by process name (``/proc/PID/comm``, at most 15 characters)
KNOWN_KEY_MANAGERS = frozenset(
    {"charon", "charon-systemd", "charon-nm", "charon-cmd", "pluto", "racoon", "iked", "isakmpd", "ikev2"}
)


@dataclass(frozen=True, slots=True)
class NetlinkListener:
    """One XFRM netlink socket as /proc/net/netlink lists it."""

    portid: int
    groups: int
    inode: int

    def listens_on(self, group: int) -> bool:
        return bool(self.groups & (1 << (group - 1)))


@dataclass(frozen=True, slots=True)
class KeyManager:
    """An XFRM listener judged to be a key manager, with the process that owns it."""

    listener: NetlinkListener
    pid: int | None
    comm: str | None


def _fd_inodes(pid: str, proc: str) -> set[int]:
    out: set[int] = set()
    try:
        fds = os.listdir(f"{proc}/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f"{proc}/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def _comm(pid: int | str, proc: str) -> str | None:
    try:
        with open(f"{proc}/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip() or None
    except OSError:
        return None


def socket_owners(listeners: Iterable[NetlinkListener], proc: str = "/proc") -> dict[int, tuple[int, str | None]]:
    """inode -> (pid, comm) of the processes holding these sockets.  A process's first
    netlink socket has its PID as port id, so that is tried first; the others are found
    by scanning every process's open files."""
    want = {li.inode: li for li in listeners}
    found: dict[int, tuple[int, str | None]] = {}
    for li in want.values():
        if li.portid > 0 and li.inode in _fd_inodes(str(li.portid), proc):
            found[li.inode] = (li.portid, _comm(li.portid, proc))
    if len(found) < len(want):
        for pid in (d for d in os.listdir(proc) if d.isdigit()):
            hits = _fd_inodes(pid, proc) & (want.keys() - found.keys())
            for inode in hits:
                found[inode] = (int(pid), _comm(pid, proc))
            if len(found) == len(want):
                break
    return found


def key_managers(
    listeners: Iterable[NetlinkListener], *, own_portid: int = -1, proc: str = "/proc"
) -> list[KeyManager]:
    """The listeners that are key managers, not passive monitors.

    A key manager listens on ACQUIRE or EXPIRE: it must answer both.  A passive monitor
    (``ip xfrm monitor``, xfrmwatch, any other event logger) listens on the SA or POLICY
    group as well, which no IKE daemon needs.  A listener counts as a key manager when its
    process is a known IKE daemon (:data:`KNOWN_KEY_MANAGERS`), or when it listens on
    ACQUIRE or EXPIRE and on neither SA nor POLICY."""
    cands = [
        li
        for li in listeners
        if li.portid != own_portid and (li.listens_on(XFRMNLGRP_ACQUIRE) or li.listens_on(XFRMNLGRP_EXPIRE))
    ]
    if not cands:
        return []
    owners = socket_owners(cands, proc)
    out = []
    for li in cands:
        pid, comm = owners.get(li.inode, (None, None))
        passive = li.listens_on(XFRMNLGRP_SA) or li.listens_on(XFRMNLGRP_POLICY)
        if comm in KNOWN_KEY_MANAGERS or not passive:
            out.append(KeyManager(li, pid, comm))
    return out


def xfrm_listeners(text: str) -> list[NetlinkListener]:
    """Parse /proc/net/netlink, keeping the NETLINK_XFRM sockets."""
    out = []
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 10 or not cols[1].isdigit():
            continue
        if int(cols[1]) != NETLINK_XFRM:
            continue
        out.append(NetlinkListener(portid=int(cols[2]), groups=int(cols[3], 16), inode=int(cols[9])))
    return out


def socket_drops(text: str, inode: int) -> int | None:
    """The ``Drops`` column of /proc/net/netlink for the socket with this inode (None if absent):
    how many messages the kernel dropped for it because its receive queue was full."""
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 10 and cols[9] == str(inode) and cols[8].isdigit():
            return int(cols[8])
    return None


def xfrm_stat(text: str) -> dict[str, int]:
    """Parse /proc/net/xfrm_stat: every ``Name value`` line, whatever the kernel has."""
    out = {}
    for line in text.splitlines():
        cols = line.split()
        if len(cols) == 2 and cols[1].isdigit():
            out[cols[0]] = int(cols[1])
    return out


class ProcFile:
    """A /proc file opened once (inside its netns) and re-read on demand."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._f: IO[str] | None
        try:
            self._f = open(path, encoding="ascii", errors="replace")  # noqa: SIM115
        except OSError:
            self._f = None

    def read(self) -> str:
        if self._f is None:
            return ""
        self._f.seek(0)
        return self._f.read()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


class KeyManagerPresence:
    """Whether a key manager listens in a namespace, re-read at most every ``ttl`` seconds
    of ``clock`` (a callable: trio's clock in the pipeline)."""

    def __init__(
        self, listeners: ProcFile, own_portids: Iterable[int], clock: Callable[[], float], ttl: float = 10.0
    ) -> None:
        self.listeners = listeners
        self.own = frozenset(own_portids)
        self.clock = clock
        self.ttl = ttl
        self._at = -math.inf
        self._present = True

    def __call__(self) -> bool:
        now = self.clock()
        if now - self._at >= self.ttl:
            self._at = now
            lis = [li for li in xfrm_listeners(self.listeners.read()) if li.portid not in self.own]
            self._present = bool(key_managers(lis))
        return self._present

