"""Netlink captures: pcap files with ``LINKTYPE_NETLINK`` (253), as the kernel's nlmon device
presents netlink traffic.

Each packet is one netlink datagram (an skb: one or more netlink messages) preceded by the
16-byte "cooked" header that libpcap gives nlmon captures (the layout of ``LINKTYPE_LINUX_SLL``;
https://www.tcpdump.org/linktypes/LINKTYPE_NETLINK.html), all fields big-endian:

    pkttype   u16   4 = PACKET_OUTGOING: what libpcap reports for every packet of an nlmon
                    device (the device "transmits" each message it taps; the kernel marks them
                    PACKET_USER or PACKET_KERNEL, but that does not reach a packet socket).  A
                    request from user space is told by its NLM_F_REQUEST flag instead.
    hatype    u16   824 = ARPHRD_NETLINK
    halen     u16   0
    addr      8 B   zero
    protocol  u16   the netlink family (6 = NETLINK_XFRM, 0 = NETLINK_ROUTE)

The netlink messages themselves are in host byte order, as on the socket.  :class:`PcapWriter`
writes classic pcap (microsecond timestamps, the byte order of this host), which tcpdump,
tshark and Wireshark read; :func:`read_packets` reads pcap (either byte order, micro- or
nanosecond timestamps) and pcapng (what ``dumpcap``/``tshark -w`` write).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import CaptureError
from .framing import iter_messages

LINKTYPE_NETLINK = 253
ARPHRD_NETLINK = 824
PACKET_OUTGOING = 4
PACKET_USER = 6
PACKET_KERNEL = 7
NETLINK_ROUTE = 0
NETLINK_XFRM = 6
#: tcpdump's default snapshot length; a netlink datagram is at most 32 KiB (dump skbs)
SNAPLEN = 262144

COOKED = struct.Struct(">HHH8sH")
_PCAP_MAGIC_US = 0xA1B2C3D4
_PCAP_MAGIC_NS = 0xA1B23C4D
_PCAP_HDR = struct.Struct("=IHHiIII")
_REC_HDR = struct.Struct("=IIII")
_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_BOM = 0x1A2B3C4D


@dataclass(frozen=True, slots=True)
class Packet:
    """One captured netlink datagram."""

    time: float  #: UNIX time of capture (seconds)
    pkttype: int  #: as captured (PACKET_OUTGOING from nlmon; see the module)
    family: int  #: netlink family (NETLINK_XFRM ...)
    data: bytes  #: the netlink message(s)


class PcapWriter:
    """Writes netlink datagrams to a pcap stream (``LINKTYPE_NETLINK``).

    A datagram longer than the snapshot length is split at message boundaries, so that no
    packet is ever truncated.
    """

    def __init__(self, f: BinaryIO, snaplen: int = SNAPLEN) -> None:
        self._f = f
        self.snaplen = snaplen
        self.packets = 0
        f.write(_PCAP_HDR.pack(_PCAP_MAGIC_US, 2, 4, 0, 0, snaplen, LINKTYPE_NETLINK))

    def write(
        self, t: float, data: bytes, *, pkttype: int = PACKET_OUTGOING, family: int = NETLINK_XFRM
    ) -> None:
        for chunk in _split(data, self.snaplen - COOKED.size):
            sec = int(t)
            usec = min(round((t - sec) * 1e6), 999_999)
            n = COOKED.size + len(chunk)
            self._f.write(_REC_HDR.pack(sec, usec, n, n))
            self._f.write(COOKED.pack(pkttype, ARPHRD_NETLINK, 0, bytes(8), family))
            self._f.write(chunk)
            self.packets += 1


def _split(data: bytes, limit: int) -> Iterator[bytes]:
    """The datagram, or pieces of it cut between messages, each at most ``limit`` bytes
    (a single message longer than that is cut, and shows as truncated)."""
    if len(data) <= limit:
        yield data
        return
    start = 0
    for m in iter_messages(data):
        if isinstance(m, str):
            break
        nxt = m[5] + (-m[5] % 4)  # the end of this message, aligned
        if nxt - start > limit and m[4] - 16 > start:
            yield data[start : m[4] - 16]
            start = m[4] - 16
    while start < len(data):
        yield data[start : start + limit]
        start += limit


def read_packets(f: BinaryIO, name: str = "capture") -> Iterator[Packet]:
    """Every packet of a pcap or pcapng netlink capture, in file order.

    Raises :class:`CaptureError` (naming ``name``) for anything that is not a netlink
    capture; a file cut short ends the iteration after the last whole packet.
    """
    head = f.read(4)
    if len(head) < 4:
        raise CaptureError(f"{name}: empty or not a capture file")
    if struct.unpack("<I", head)[0] == _PCAPNG_SHB:
        yield from _read_pcapng(f, head, name)
        return
    rest = f.read(_PCAP_HDR.size - 4)
    for order in ("<", ">"):
        magic = struct.unpack(order + "I", head)[0]
        if magic in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS):
            break
    else:
        raise CaptureError(
            f"{name}: not a pcap or pcapng file (record one with `xfrmwatch record` or "
            "`tcpdump -i nlmon0 -w FILE`)"
        )
    if len(rest) < _PCAP_HDR.size - 4:
        raise CaptureError(f"{name}: pcap header cut short")
    _, _, _, _, _, linktype = struct.unpack(order + "HHiIII", rest)
    linktype &= 0xFFFF
    _check_linktype(linktype, name)
    scale = 1e-9 if magic == _PCAP_MAGIC_NS else 1e-6
    rec = struct.Struct(order + "IIII")
    while True:
        h = f.read(rec.size)
        if len(h) < rec.size:
            return
        sec, frac, caplen, _ = rec.unpack(h)
        body = f.read(caplen)
        if len(body) < caplen:
            return
        p = _cooked(sec + frac * scale, body)
        if p is not None:
            yield p


def _check_linktype(linktype: int, name: str) -> None:
    if linktype != LINKTYPE_NETLINK:
        raise CaptureError(
            f"{name}: link type {linktype} is not netlink ({LINKTYPE_NETLINK}); capture on an "
            "nlmon interface (`ip link add nlmon0 type nlmon`) or with `xfrmwatch record`"
        )


def _cooked(t: float, body: bytes) -> Packet | None:
    if len(body) < COOKED.size:
        return None
    pkttype, _, _, _, family = COOKED.unpack_from(body)
    return Packet(t, pkttype, family, body[COOKED.size :])


def _read_pcapng(f: BinaryIO, head: bytes, name: str) -> Iterator[Packet]:
    """pcapng: section headers, interface descriptions, enhanced/simple/obsolete packet blocks."""
    order = "<"
    ifaces: list[tuple[int, float]] = []  # (linktype, seconds per timestamp unit)
    h = head
    while len(h) == 4:
        if struct.unpack("<I", h)[0] == _PCAPNG_SHB:  # a palindrome: same in both orders
            rest = f.read(8)
            if len(rest) < 8:
                return
            if rest[4:] == struct.pack("<I", _PCAPNG_BOM):
                order = "<"
            elif rest[4:] == struct.pack(">I", _PCAPNG_BOM):
                order = ">"
            else:
                raise CaptureError(f"{name}: not a pcapng file (bad byte-order magic)")
            blen = struct.unpack(order + "I", rest[:4])[0]
            if blen < 28 or len(f.read(blen - 12)) < blen - 12:
                return
            ifaces = []
            h = f.read(4)
            continue
        raw = f.read(4)
        if len(raw) < 4:
            return
        btype = struct.unpack(order + "I", h)[0]
        blen = struct.unpack(order + "I", raw)[0]
        if blen < 12:
            raise CaptureError(f"{name}: pcapng block of length {blen}")
        block = f.read(blen - 8)
        if len(block) < blen - 8:
            return
        body = block[:-4]
        if btype == 1:  # interface description
            ifaces.append((struct.unpack_from(order + "H", body, 0)[0], _tsresol(body[8:], order)))
        elif btype in (2, 3, 6):
            if btype == 3:  # simple packet: interface 0, no timestamp
                iface, ts, caplen, off = 0, 0, struct.unpack_from(order + "I", body, 0)[0], 4
            elif btype == 6:  # enhanced packet
                iface, hi, lo, caplen = struct.unpack_from(order + "IIII", body, 0)
                ts, off = (hi << 32) | lo, 20
            else:  # obsolete packet block
                iface, _, hi, lo, caplen = struct.unpack_from(order + "HHIII", body, 0)
                ts, off = (hi << 32) | lo, 20
            if iface >= len(ifaces):
                raise CaptureError(f"{name}: packet for undeclared interface {iface}")
            linktype, unit = ifaces[iface]
            _check_linktype(linktype, name)
            p = _cooked(ts * unit, body[off : off + caplen])
            if p is not None:
                yield p
        h = f.read(4)


def _tsresol(options: bytes, order: str) -> float:
    """The interface's timestamp unit from its if_tsresol option (default microseconds)."""
    off = 0
    while off + 4 <= len(options):
        code, olen = struct.unpack_from(order + "HH", options, off)
        if code == 0:
            break
        if code == 9 and olen >= 1:
            v = options[off + 4]
            return float(2 ** -(v & 0x7F)) if v & 0x80 else float(10**-v)
        off += 4 + ((olen + 3) & ~3)
    return 1e-6


__all__ = [
    "LINKTYPE_NETLINK",
    "NETLINK_ROUTE",
    "NETLINK_XFRM",
    "PACKET_KERNEL",
    "PACKET_OUTGOING",
    "PACKET_USER",
    "Packet",
    "PcapWriter",
    "read_packets",
]
