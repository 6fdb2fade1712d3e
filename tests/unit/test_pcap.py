"""The pcap layer: LINKTYPE_NETLINK files as tcpdump writes them for nlmon, and pcapng.

Expected bytes come from the format specifications (tcpdump.org's pcap and
LINKTYPE_NETLINK pages, the pcapng draft), not from the writer.
"""

from __future__ import annotations

import io
import struct

import pytest
from support import ROOT

from xfrmwatch.errors import EXIT_CAPTURE, CaptureError
from xfrmwatch.netlink.pcap import PcapWriter, read_packets

NEWSA = (ROOT / "tests/fixtures/uml/sa/0001-NEWSA.bin").read_bytes()
DUMP = (ROOT / "tests/fixtures/uml/req-sa-dump/dgram-0001.raw").read_bytes()


def written(*packets: tuple[float, bytes, int, int]) -> bytes:
    f = io.BytesIO()
    w = PcapWriter(f)
    for t, data, pkttype, family in packets:
        w.write(t, data, pkttype=pkttype, family=family)
    return f.getvalue()


class TestWriter:
    def test_global_header(self) -> None:
        """The pcap header: magic a1b2c3d4 (native order), version 2.4, snaplen, link type 253."""
        head = written()[:24]
        assert struct.unpack("=IHHiIII", head) == (0xA1B2C3D4, 2, 4, 0, 0, 262144, 253)

    def test_record_and_cooked_header(self) -> None:
        """A record: seconds, microseconds, lengths; then nlmon's 16-byte header, big-endian:
        packet type (4, PACKET_OUTGOING, as tcpdump shows every nlmon packet), ARPHRD_NETLINK
        (824), address length 0, 8 zero bytes, netlink family."""
        f = io.BytesIO()
        PcapWriter(f).write(1700000000.25, NEWSA)
        data = f.getvalue()[24:]
        sec, usec, incl, orig = struct.unpack_from("=IIII", data)
        assert (sec, usec, incl, orig) == (1700000000, 250000, 16 + len(NEWSA), 16 + len(NEWSA))
        assert data[16:32] == bytes.fromhex("0004" "0338" "0000" "0000000000000000" "0006")
        assert data[32:] == NEWSA

    def test_round_trip(self) -> None:
        """What was written reads back: time (to the microsecond), packet type, family, bytes."""
        raw = written((10.5, b"\x10" * 20, 6, 6), (11.000001, NEWSA, 7, 6), (12.0, b"abcd" * 5, 7, 0))
        got = list(read_packets(io.BytesIO(raw)))
        assert [(round(p.time, 6), p.pkttype, p.family, p.data) for p in got] == [
            (10.5, 6, 6, b"\x10" * 20), (11.000001, 7, 6, NEWSA), (12.0, 7, 0, b"abcd" * 5),
        ]  # fmt: skip

    def test_big_datagram_split_between_messages(self) -> None:
        """A datagram longer than the snapshot length is cut between messages, never inside one."""
        f = io.BytesIO()
        w = PcapWriter(f, snaplen=16 + 2 * len(NEWSA) + 8)
        w.write(1.0, NEWSA * 5)
        got = [p.data for p in read_packets(io.BytesIO(f.getvalue()))]
        assert got == [NEWSA * 2, NEWSA * 2, NEWSA]


def pcap_bytes(order: str, magic: int, linktype: int, records: list[tuple[int, int, bytes]]) -> bytes:
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for sec, frac, body in records:
        out += struct.pack(order + "IIII", sec, frac, len(body), len(body)) + body
    return out


def cooked(pkttype: int, family: int, data: bytes) -> bytes:
    return struct.pack(">HHH8sH", pkttype, 824, 0, bytes(8), family) + data


class TestReader:
    def test_big_endian_nanosecond_pcap(self) -> None:
        """A big-endian file with nanosecond timestamps (magic a1b23c4d)."""
        raw = pcap_bytes(">", 0xA1B23C4D, 253, [(5, 123456789, cooked(7, 6, NEWSA))])
        (p,) = read_packets(io.BytesIO(raw))
        assert (p.time, p.pkttype, p.family, p.data) == (pytest.approx(5.123456789), 7, 6, NEWSA)

    def test_pcapng(self) -> None:
        """pcapng (what dumpcap writes): section header, interface with if_tsresol 9
        (nanoseconds), an enhanced packet block with an option, a simple packet block."""

        def block(btype: int, body: bytes) -> bytes:
            body += bytes(-len(body) % 4)
            n = len(body) + 12
            return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

        shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
        opts = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
        idb = block(1, struct.pack("<HHI", 253, 0, 262144) + opts)
        pkt = cooked(7, 6, NEWSA)
        ts = 1_700_000_000_123_456_789
        epb_opts = struct.pack("<HH", 1, 5) + b"hello" + bytes(3) + struct.pack("<HH", 0, 0)
        epb = block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(pkt), len(pkt)) + pkt + bytes(-len(pkt) % 4) + epb_opts)
        spb = block(3, struct.pack("<I", len(pkt)) + pkt)
        got = list(read_packets(io.BytesIO(shb + idb + epb + spb)))
        assert [(p.pkttype, p.family, p.data) for p in got] == [(7, 6, NEWSA)] * 2
        assert got[0].time == pytest.approx(1_700_000_000.123456789)

    def test_not_a_capture(self) -> None:
        """Anything else is a CaptureError naming the file, with its own exit code."""
        with pytest.raises(CaptureError, match=r"^x\.bin: not a pcap or pcapng file") as info:
            list(read_packets(io.BytesIO(b"hello world, not pcap"), "x.bin"))
        assert info.value.exit_code == EXIT_CAPTURE == 10
        with pytest.raises(CaptureError, match="empty"):
            list(read_packets(io.BytesIO(b""), "e"))

    def test_wrong_link_type(self) -> None:
        """An Ethernet capture (link type 1) is refused with the way to make a netlink one."""
        raw = pcap_bytes("<", 0xA1B2C3D4, 1, [])
        with pytest.raises(CaptureError, match=r"link type 1 is not netlink \(253\).*nlmon"):
            list(read_packets(io.BytesIO(raw), "eth.pcap"))

    def test_cut_short(self) -> None:
        """A file cut in the middle of a packet yields the whole packets before it."""
        raw = written((1.0, NEWSA, 7, 6), (2.0, DUMP, 7, 6))
        got = list(read_packets(io.BytesIO(raw[:-10])))
        assert [p.data for p in got] == [NEWSA]
