"""Recordings read back (xfrmwatch.capture): what `record` writes, and what an nlmon capture
by someone else holds (copies per listener, other processes' requests and replies).

Built from real recorded kernel messages (tests/fixtures); only headers are adjusted where a
test needs distinct sequence numbers.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import msgspec
import pytest
from support import ROOT, key_marker_forms, plant_keys

from xfrmwatch.capture import Capture, Counters, Notification, ProcessName
from xfrmwatch.detect.enrich import ProcessNames
from xfrmwatch.netlink import xfrm as x
from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.netlink.pcap import PcapWriter
from xfrmwatch.record import Recorder

F = ROOT / "tests/fixtures"
SA_DUMP = [(F / "uml/req-sa-dump" / n).read_bytes() for n in ("dgram-0001.raw", "dgram-0008.raw")]
POLICY_DUMP = [(F / "host/req-policy-dump" / n).read_bytes() for n in ("dgram-0001.raw", "dgram-0005.raw")]
DEFAULT = [(F / "host/req-default/dgram-0001.raw").read_bytes()]
NEWSA = (F / "uml/sa/0001-NEWSA.bin").read_bytes()
UPDSA = (F / "uml/sa/0007-UPDSA.bin").read_bytes()
DELSA = (F / "uml/sa/0008-DELSA.bin").read_bytes()
NEWPOLICY = (F / "host/policy/0001-NEWPOLICY.bin").read_bytes()
MARKER = b"K3Y-\xde\xad\xbe\xef-LEAK"
HDR = struct.Struct("=IHHII")
REQUEST, DUMP, MULTI = 0x1, 0x300, 0x2


def header(data: bytes, *, seq: int | None = None, pid: int | None = None, flags: int | None = None) -> bytes:
    """The datagram with every message's header fields replaced as given."""
    out = bytearray(data)
    off = 0
    while off + 16 <= len(out):
        mlen, mtype, fl, sq, pd = HDR.unpack_from(out, off)
        HDR.pack_into(out, off, mlen, mtype, fl if flags is None else flags, sq if seq is None else seq, pd if pid is None else pid)
        off += (mlen + 3) & ~3
    return bytes(out)


def request(mtype: int, flags: int, seq: int, pid: int, body: int = 24) -> bytes:
    return HDR.pack(16 + body, mtype, flags, seq, pid) + bytes(body)


def events(datagrams: list[bytes]) -> list[bytes]:
    dec = Decoder("t")
    return [msgspec.json.encode(e) for d in datagrams for e in dec.decode(d, 0.0, 0.0)]


def load(raw: bytes, tmp_path: Path) -> Capture:
    p = tmp_path / "c.pcap"
    p.write_bytes(raw)
    return Capture.load(p)


class TestRecorderRoundTrip:
    def recorded(self, tmp_path: Path) -> tuple[bytes, Capture]:
        (tmp_path / "proc/4321").mkdir(parents=True)
        (tmp_path / "proc/4321/comm").write_text("charon\n")
        rec = Recorder(names=ProcessNames(proc=str(tmp_path / "proc")))
        pid = 12944
        dump = [
            (100.0, x.NETLINK_XFRM, request(x.XFRM_MSG_GETSA, REQUEST | DUMP, 4242, 853), SA_DUMP),
            (100.1, x.NETLINK_XFRM, request(x.XFRM_MSG_GETPOLICY, REQUEST | DUMP, 5, pid, 64),
             [header(d, seq=5, pid=pid) for d in POLICY_DUMP]),
            (100.2, x.NETLINK_XFRM, request(x.XFRM_MSG_GETDEFAULT, REQUEST, 6, pid, 4), [header(DEFAULT[0], seq=6, pid=pid)]),
        ]  # fmt: skip
        rec.dump(dump)
        rec.notification(101.0, plant_keys(header(NEWSA, pid=4321), MARKER, 224), 0.0)
        rec.notification(102.0, plant_keys(UPDSA, MARKER, 224), 0.0)
        rec.overrun(103.0)
        rec.dump([(d[0] + 4, *d[1:]) for d in dump])
        rec.notification(105.0, plant_keys(DELSA, MARKER, 24), 0.0)
        rec.dump([(106.0, x.NETLINK_XFRM, request(x.XFRM_MSG_GETSA, REQUEST | DUMP, 7, 853), [header(d, seq=7) for d in SA_DUMP])], counters=True)
        rec.end(110.0)
        raw = rec.take()
        return raw, load(raw, tmp_path)

    def test_timeline(self, tmp_path: Path) -> None:
        """Initial dump, notifications, the process name before charon's change, the loss and
        the dump that repairs it, in the recorded order and times."""
        _, cap = self.recorded(tmp_path)
        assert cap.start == 100.0
        assert [(type(i).__name__, i.time) for i in cap.items] == [
            ("ProcessName", 101.0), ("Notification", 101.0), ("Notification", 102.0),
            ("Loss", 103.0), ("Notification", 105.0), ("Counters", 106.0),
        ]  # fmt: skip
        assert cap.items[0] == ProcessName(101.0, 4321, "charon")
        assert len(cap.resyncs) == 1 and cap.resyncs[0].time == pytest.approx(104.2)
        assert cap.stats.losses == 1 and cap.stats.dumps == 2 and cap.stats.counters == 1
        assert cap.truncated_at is None and cap.stopped == cap.end == 110.0

    def test_dumps_decode_like_the_kernel_replies(self, tmp_path: Path) -> None:
        """The dumps read back decode to the same SAs, policies and default policy as the
        kernel's replies did (key bytes zeroed, nothing else lost)."""
        _, cap = self.recorded(tmp_path)
        for d in (cap.initial, cap.resyncs[0]):
            assert d is not None and d.sa is not None and d.policy is not None and d.default is not None
            assert events(d.sa) == events(SA_DUMP)
            assert events(d.policy) == events([header(p, seq=5, pid=12944) for p in POLICY_DUMP])
            assert events(d.default) == events([header(DEFAULT[0], seq=6, pid=12944)])
        assert len(events(SA_DUMP)) == 7 and len(events(POLICY_DUMP)) == 4

    def test_no_key_bytes_in_the_file(self, tmp_path: Path) -> None:
        """Neither the planted marker nor the real keys of the recorded SA dump reach the file."""
        raw, cap = self.recorded(tmp_path)
        for form in key_marker_forms(MARKER):
            assert form not in raw
        aes = bytes.fromhex("00112233445566778899aabbccddeeff")
        assert aes in b"".join(SA_DUMP) and aes not in raw
        note = cap.items[1]
        assert isinstance(note, Notification)
        (e,) = Decoder().decode(note.data, 0.0)
        assert e.sa.enc.name == "cbc(aes)" and e.sa.enc.key_bits == 128  # type: ignore[attr-defined]

    def test_counters_right_after_the_initial_dump(self, tmp_path: Path) -> None:
        """An SA dump for the counters straight after the initial dump (no notification in
        between) is a sample, not part of the initial state."""
        rec = Recorder()
        sa_req = request(x.XFRM_MSG_GETSA, REQUEST | DUMP, 4242, 853)
        pol_req = request(x.XFRM_MSG_GETPOLICY, REQUEST | DUMP, 5, 12317, 64)
        rec.dump([(1.0, x.NETLINK_XFRM, sa_req, SA_DUMP), (1.0, x.NETLINK_XFRM, pol_req, [header(d, seq=5) for d in POLICY_DUMP])])
        rec.dump([(11.0, x.NETLINK_XFRM, request(x.XFRM_MSG_GETSA, REQUEST | DUMP, 6, 853), [header(d, seq=6) for d in SA_DUMP])], counters=True)
        rec.notification(12.0, NEWPOLICY, 0.0)
        cap = load(rec.take(), tmp_path)
        assert cap.initial is not None and cap.initial.time == 1.0 and cap.initial.complete
        assert [(type(i), i.time) for i in cap.items] == [(Counters, 11.0), (Notification, 12.0)]
        assert cap.stopped is None and cap.end == 12.0

    def test_process_gone_is_recorded(self, tmp_path: Path) -> None:
        """When the named process has gone, the next change of its pid records an empty name."""
        (tmp_path / "proc/77").mkdir(parents=True)
        (tmp_path / "proc/77/comm").write_text("pluto\n")
        rec = Recorder(names=ProcessNames(proc=str(tmp_path / "proc"), ttl=0.0))
        rec.notification(1.0, header(NEWPOLICY, pid=77), 0.0)
        rec.notification(2.0, header(NEWPOLICY, pid=77), 1.0)
        (tmp_path / "proc/77/comm").unlink()
        rec.notification(3.0, header(NEWPOLICY, pid=77), 2.0)
        cap = load(rec.take(), tmp_path)
        assert [(i.time, i.name) for i in cap.items if isinstance(i, ProcessName)] == [(1.0, "pluto"), (3.0, None)]


class TestNlmonCapture:
    def capture(self, *packets: tuple[float, bytes]) -> bytes:
        """As tcpdump writes it from an nlmon device: every packet PACKET_OUTGOING, requests
        told by their NLM_F_REQUEST flag."""
        f = io.BytesIO()
        w = PcapWriter(f)
        for t, data in packets:
            w.write(t, data)
        return f.getvalue()

    def test_copies_per_listener_dropped(self, tmp_path: Path) -> None:
        """nlmon shows a broadcast once per listening socket: identical datagrams microseconds
        apart are one notification; the same bytes seconds later are another."""
        cap = load(self.capture((1.0, NEWPOLICY), (1.000001, NEWPOLICY), (1.000002, NEWPOLICY),
                                (3.0, NEWPOLICY)), tmp_path)  # fmt: skip
        assert [i.time for i in cap.items] == [1.0, 3.0]
        assert cap.stats.duplicates == 2

    def test_other_processes_requests(self, tmp_path: Path) -> None:
        """Replies to another process's single GET and ALLOCSPI, and acks, are not
        notifications; the notification caused by its NEWSA request (same seq) is."""
        charon = 773
        ack = HDR.pack(36, 2, 0, 90, charon) + struct.pack("=i", 0) + request(x.XFRM_MSG_NEWSA, 5, 90, charon, 0)
        cap = load(self.capture(
            (1.0, request(x.XFRM_MSG_GETSA, REQUEST, 77, charon)),
            (1.0, header(NEWSA, seq=77, pid=charon)),
            (2.0, request(x.XFRM_MSG_ALLOCSPI, REQUEST, 78, charon, 232)),
            (2.0, header(NEWSA, seq=78, pid=charon)),
            (3.0, request(x.XFRM_MSG_NEWSA, REQUEST | 4, 90, charon, 224)),
            (3.0, header(NEWSA, seq=90, pid=charon)),
            (3.0, ack),
        ), tmp_path)  # fmt: skip
        assert [(type(i), i.time) for i in cap.items] == [(Notification, 3.0)]
        assert cap.stats.replies_dropped == 2

    def test_dumps_by_others(self, tmp_path: Path) -> None:
        """A dump at the start is the initial state even if its request was not captured;
        someone's SA dump later on is a sample of the counters, their policy dump nothing."""
        cap = load(self.capture(
            *[(1.0, d) for d in SA_DUMP],
            (1.1, request(x.XFRM_MSG_GETPOLICY, REQUEST | DUMP, 9, 0, 64)),
            *[(1.1, header(d, seq=9, pid=555)) for d in POLICY_DUMP],
            (2.0, NEWPOLICY),
            (3.0, request(x.XFRM_MSG_GETSA, REQUEST | DUMP, 10, 0)),
            *[(3.0, header(d, seq=10, pid=556)) for d in SA_DUMP],
            (4.0, header(NEWPOLICY, seq=11)),
            (5.0, request(x.XFRM_MSG_GETPOLICY, REQUEST | DUMP, 12, 0, 64)),
            *[(5.0, header(d, seq=12, pid=557)) for d in POLICY_DUMP],
            (6.0, header(NEWPOLICY, seq=13)),
        ), tmp_path)  # fmt: skip
        assert cap.initial is not None and cap.initial.sa is not None and cap.initial.policy is not None
        assert events(cap.initial.sa) == events(SA_DUMP)
        assert events(cap.initial.policy) == events([header(d, seq=9, pid=555) for d in POLICY_DUMP])
        assert [(type(i), i.time) for i in cap.items] == [
            (Notification, 2.0), (Counters, 3.0), (Notification, 4.0), (Notification, 6.0),
        ]  # fmt: skip
        sample = cap.items[1]
        assert isinstance(sample, Counters)
        assert events(sample.sa) == events([header(d, seq=10, pid=556) for d in SA_DUMP])
        assert cap.stats.dumps == 1 and cap.stats.counters == 1 and cap.resyncs == []

    def test_other_families_skipped(self, tmp_path: Path) -> None:
        """Messages of other netlink families (generic netlink here) are counted, not used."""
        f = io.BytesIO()
        w = PcapWriter(f)
        w.write(1.0, NEWPOLICY, family=16)
        w.write(2.0, NEWPOLICY)
        cap = load(f.getvalue(), tmp_path)
        assert [i.time for i in cap.items] == [2.0] and cap.stats.other_families == 1

    def test_capture_ending_before_the_resync_dump(self, tmp_path: Path) -> None:
        """A recording that stops between a loss and its dump ends at the loss."""
        rec = Recorder()
        rec.notification(1.0, NEWPOLICY, 0.0)
        rec.overrun(2.0)
        rec.notification(3.0, NEWPOLICY, 0.0)
        cap = load(rec.take(), tmp_path)
        assert cap.truncated_at == 2.0
        assert [type(i) for i in cap.items] == [Notification]
        assert cap.stats.losses == 0

