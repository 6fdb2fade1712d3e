"""Readers of /proc/net files: XFRM listeners and xfrm_stat counters.

Both are per network namespace: open them inside the namespace
(:func:`xfrmwatch.netlink.netns.entered`) and they keep showing that one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO

from .xfrm import NETLINK_XFRM


@dataclass(frozen=True, slots=True)
class NetlinkListener:
    """One XFRM netlink socket as /proc/net/netlink lists it."""

    portid: int
    groups: int
    inode: int

    def listens_on(self, group: int) -> bool:
        return bool(self.groups & (1 << (group - 1)))


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
