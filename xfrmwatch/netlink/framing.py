"""Netlink framing, written once: the message header, the attribute header, and the
walk over the messages of one datagram (the decoder's and the request path's)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

__all__ = [
    "NLA_HDR", "NLA_TYPE_MASK", "NLMSG_DONE", "NLMSG_ERROR", "NLMSG_HDR", "NLMSG_NOOP", "NLMSG_OVERRUN",
    "NLM_F_DUMP", "NLM_F_DUMP_INTR", "NLM_F_MULTI", "NLM_F_REQUEST", "iter_messages",
]  # fmt: skip

#: struct nlmsghdr: length, type, flags, sequence, port id
NLMSG_HDR = struct.Struct("=IHHII")
#: struct nlattr: length, type
NLA_HDR = struct.Struct("=HH")
#: the attribute type without the NLA_F_NESTED / NLA_F_NET_BYTEORDER flags
NLA_TYPE_MASK = 0x3FFF
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
#: the header's flags (linux/netlink.h)
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300


def iter_messages(data: bytes) -> Iterator[tuple[int, int, int, int, int, int] | str]:
    """Split a datagram into (type, flags, seq, pid, body offset, body end).

    A framing error is yielded as a string (the reason) and ends the walk.
    """
    off = 0
    total = len(data)
    while off < total:
        if total - off < 16:
            yield f"{total - off} trailing bytes, shorter than a netlink header"
            return
        mlen, mtype, flags, seq, pid = NLMSG_HDR.unpack_from(data, off)
        if mlen < 16:
            yield f"nlmsg_len {mlen} is shorter than the header"
            return
        if off + mlen > total:
            yield f"nlmsg_len {mlen} runs past the end of the datagram ({total - off} bytes left)"
            return
        yield mtype, flags, seq, pid, off + 16, off + mlen
        nxt = off + ((mlen + 3) & ~3)
        if nxt > total and off + mlen < total:
            yield "bad alignment: the next message does not start on a 4-byte boundary"
            return
        off = nxt
