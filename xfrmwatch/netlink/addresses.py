"""A namespace's own addresses, from an rtnetlink RTM_GETADDR dump.

The mirror needs them to tell inbound from outbound SAs.  The raw request and reply
datagrams are kept so that a recording carries them (NETLINK_ROUTE packets, as nlmon would
show ``ip addr``), and a replay reads the addresses back with :func:`parse`.
"""

from __future__ import annotations

import itertools
import socket as _stdsocket
import struct
from collections.abc import Iterable

import trio

from .framing import NLA_HDR as _NLA
from .framing import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDR, iter_messages
from .netns import entered

NETLINK_ROUTE = 0
RTM_NEWADDR = 20
RTM_GETADDR = 22
IFA_ADDRESS = 1
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_seq = itertools.count(1)


def request(seq: int) -> bytes:
    """An RTM_GETADDR dump request, every family."""
    body = _IFADDRMSG.pack(_stdsocket.AF_UNSPEC, 0, 0, 0, 0)
    head: bytes = NLMSG_HDR.pack(16 + len(body), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    return head + body


async def dump(netns: str | None) -> tuple[bytes, list[bytes]]:
    """(request, reply datagrams) of an RTM_GETADDR dump in ``netns``."""
    with entered(netns):
        raw = _stdsocket.socket(_stdsocket.AF_NETLINK, _stdsocket.SOCK_RAW, NETLINK_ROUTE)
    with trio.socket.from_stdlib_socket(raw) as sock:
        await sock.bind((0, 0))
        seq = next(_seq)
        req = request(seq)
        replies: list[bytes] = []
        with trio.fail_after(10):
            await sock.send(req)
            while True:
                data, (pid, _) = await sock.recvfrom(1 << 16)
                if pid != 0:
                    continue
                replies.append(data)
                if _done(data, seq):
                    return req, replies


def _done(data: bytes, seq: int) -> bool:
    for m in iter_messages(data):
        if isinstance(m, str):
            return True
        if m[2] == seq and m[0] in (NLMSG_DONE, NLMSG_ERROR):
            return True
    return False


def parse(datagrams: Iterable[bytes]) -> frozenset[str]:
    """Every IFA_ADDRESS in RTM_NEWADDR messages."""
    out: set[str] = set()
    for data in datagrams:
        for m in iter_messages(data):
            if isinstance(m, str):
                break
            mtype, _, _, _, body, end = m
            if mtype != RTM_NEWADDR or end - body < _IFADDRMSG.size:
                continue
            family = data[body]
            a = body + _IFADDRMSG.size
            while a + 4 <= end:
                alen, atype = _NLA.unpack_from(data, a)
                if alen < 4:
                    break
                if atype == IFA_ADDRESS and family in (_stdsocket.AF_INET, _stdsocket.AF_INET6):
                    try:
                        out.add(_stdsocket.inet_ntop(family, data[a + 4 : a + alen]))
                    except ValueError:
                        pass
                a += (alen + 3) & ~3
    return frozenset(out)


__all__ = ["dump", "parse", "request"]
