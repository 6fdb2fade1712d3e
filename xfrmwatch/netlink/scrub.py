"""Key-free copies of raw XFRM netlink datagrams, for recordings.

A recording keeps the kernel's messages byte for byte, except:

- the key bytes of XFRMA_ALG_AUTH, _CRYPT, _AEAD, _AUTH_TRUNC (and _COMP, same layout) are
  zeroed; the algorithm name, key length and ICV/truncation length stay, and so does every
  length, so the messages still parse and decode to the same events;
- the payload of every attribute the decoder does not know (:data:`xfrmwatch.decode.ATTRS`)
  is zeroed: an unknown attribute could be a future key carrier;
- the body of a message of a type the decoder does not know is zeroed (header kept), and so
  is anything after a framing error;
- NLMSG_ERROR keeps its code and the request header it answers, NLMSG_DONE its code;
- MAPPING: the unused 12 bytes of IPv4 addresses are zeroed (the kernel leaves them
  uninitialised: stack garbage).
"""

from __future__ import annotations

import socket
import struct

from . import xfrm as x
from .decode import ATTRS
from .framing import NLA_HDR, NLA_TYPE_MASK, NLMSG_DONE, NLMSG_ERROR, iter_messages

#: message type -> where its attributes start (the fixed body, 4-aligned)
_ATTR_START = {t: (n + 3) & ~3 for t, n in x.MSG_MIN_SIZE.items()}
_INFO_TYPES = frozenset(
    {x.XFRM_MSG_NEWSADINFO, x.XFRM_MSG_GETSADINFO, x.XFRM_MSG_NEWSPDINFO, x.XFRM_MSG_GETSPDINFO}
)
_KNOWN = frozenset(ATTRS) | {x.XFRMA_SA, x.XFRMA_POLICY, x.XFRMA_PAD}
#: XFRMA_SAD_CNT/_HINFO, XFRMA_SPD_INFO/_HINFO/_IPV4_HTHRESH/_IPV6_HTHRESH: counters only
_INFO_KNOWN = frozenset({1, 2, 3, 4})
#: control messages: how much of the body to keep (the error code, and the header it answers)
_CONTROL_KEEP = {NLMSG_DONE: 4, NLMSG_ERROR: 20}
_U16 = struct.Struct("=H")
#: xfrm_user_mapping: family at 20; daddr, old_saddr, new_saddr at 0, 28, 44
_MAPPING_ADDRS = (0, 28, 44)


def zero_keys(data: bytes) -> bytes:
    """A copy of one datagram with key bytes and unknown payloads zeroed (see the module)."""
    buf = bytearray(data)
    kept = 0  # where the last whole message ends
    for item in iter_messages(data):
        if isinstance(item, str):  # a framing error: nothing after the last whole message is kept
            break
        mtype, _, _, _, body, end = item
        start = _ATTR_START.get(mtype)
        if mtype < 16:
            _zero(buf, body + _CONTROL_KEEP.get(mtype, 0), end)
        elif start is None:
            _zero(buf, body, end)
        else:
            _scrub_attrs(buf, body + start, end, mtype in _INFO_TYPES)
            if mtype == x.XFRM_MSG_MAPPING and end - body >= 64:
                _mapping_padding(buf, body)
        kept = end
    if kept < len(buf):
        # keep the header of a message that runs past the end, so that it still shows
        header_end = kept + ((-kept) % 4) + 16
        _zero(buf, header_end if header_end <= len(buf) else kept, len(buf))
    return bytes(buf)


def _zero(buf: bytearray, start: int, end: int) -> None:
    if start < end:
        buf[start:end] = bytes(end - start)


def _scrub_attrs(buf: bytearray, off: int, end: int, info: bool) -> None:
    known = _INFO_KNOWN if info else _KNOWN
    while off + 4 <= end:
        alen, atype = NLA_HDR.unpack_from(buf, off)
        if alen < 4 or off + alen > end:
            break
        atype &= NLA_TYPE_MASK
        payload = off + 4
        key_at = None if info else x.KEY_OFFSETS.get(atype)
        if key_at is not None:
            _zero(buf, min(payload + key_at, off + alen), off + alen)
        elif atype not in known:
            _zero(buf, payload, off + alen)
        off += (alen + 3) & ~3
    _zero(buf, off, end)


def _mapping_padding(buf: bytearray, body: int) -> None:
    if _U16.unpack_from(buf, body + 20)[0] == socket.AF_INET:
        for a in _MAPPING_ADDRS:
            _zero(buf, body + a + 4, body + a + 16)


__all__ = ["zero_keys"]
