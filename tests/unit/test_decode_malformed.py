"""Malformed variants cut from recorded messages: each becomes a `malformed` event."""

from __future__ import annotations

import struct

import msgspec
import pytest
from support import ROOT, assert_no_keys, validate_event

from xfrmwatch.netlink.decode import Decoder

FIX = ROOT / "tests" / "fixtures"
NEWSA = (FIX / "uml/sa/0001-NEWSA.bin").read_bytes()
EXPIRE = (FIX / "uml/expire-time/0002-EXPIRE.bin").read_bytes()
NEWPOLICY = (FIX / "host/policy/0001-NEWPOLICY.bin").read_bytes()
KEYS = ("00112233445566778899aabbccddeeff", "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")


def with_len(msg: bytes, n: int) -> bytes:
    """The message cut to n bytes, with nlmsg_len saying n."""
    return struct.pack("=I", n) + msg[4:n]


def decoded(data: bytes) -> list[dict]:
    out = []
    for e in Decoder("fx").decode(data, 0.0, 0.0):
        obj = msgspec.json.decode(msgspec.json.encode(e))
        validate_event(obj)
        out.append(obj)
    assert_no_keys([msgspec.json.encode(o).decode() for o in out], KEYS)
    return out


def only_malformed(data: bytes) -> dict:
    (e,) = decoded(data)
    assert "malformed" == e["type"]
    return e


def first_attr_offset(msg: bytes, body_size: int) -> int:
    return 16 + body_size


def test_expire_shorter_than_its_minimum() -> None:
    """An EXPIRE of 116 bytes (a real daemon's bug report) is reported with both lengths."""
    e = only_malformed(with_len(EXPIRE, 116))
    assert "EXPIRE body is 100 bytes, shorter than its minimum 232" == e["reason"]
    assert (24, 116) == (e["msg_type"], e["length"])


@pytest.mark.parametrize("cut", [16, 17, 100, 223, 239])
def test_newsa_cut_short(cut: int) -> None:
    """A NEWSA cut anywhere before the end of its fixed part is malformed."""
    e = only_malformed(with_len(NEWSA, cut))
    assert "shorter than its minimum 224" in e["reason"] and 16 == e["msg_type"]


def test_attribute_running_past_the_end() -> None:
    """An attribute whose length runs past the message is malformed, not read."""
    off = first_attr_offset(NEWSA, 224)
    bad = bytearray(NEWSA)
    struct.pack_into("=H", bad, off, 0x7FF0)
    e = only_malformed(bytes(bad))
    assert "runs past the end of the message" in e["reason"]


def test_attribute_shorter_than_its_header() -> None:
    """An attribute claiming fewer than 4 bytes is malformed."""
    off = first_attr_offset(NEWSA, 224)
    bad = bytearray(NEWSA)
    struct.pack_into("=H", bad, off, 2)
    assert "< 4" in only_malformed(bytes(bad))["reason"]


def test_cut_inside_an_attribute() -> None:
    """A message cut in the middle of its attribute chain is malformed."""
    e = only_malformed(with_len(NEWSA, len(NEWSA) - 30))
    assert "runs past the end" in e["reason"] or "trailing bytes" in e["reason"]


def test_key_attribute_too_short_for_its_struct() -> None:
    """An XFRMA_ALG_AUTH_TRUNC too short for xfrm_algo_auth is malformed (and no bytes leak)."""
    # Shrink the first attribute (XFRMA_ALG_AUTH) to 8 bytes; move the rest up.
    off = first_attr_offset(NEWSA, 224)
    alen, atype = struct.unpack_from("=HH", NEWSA, off)
    assert 1 == atype  # XFRMA_ALG_AUTH in the recording
    shrunk = struct.pack("=HH", 8, 1) + NEWSA[off + 4 : off + 8]
    msg = NEWSA[:off] + shrunk + NEWSA[off + ((alen + 3) & ~3) :]
    e = only_malformed(struct.pack("=I", len(msg)) + msg[4:])
    assert "XFRMA_ALG_AUTH attribute is 4 bytes, needs 68" == e["reason"]


def test_template_length_not_a_multiple() -> None:
    """An XFRMA_TMPL whose length is not a multiple of 64 is malformed."""
    off = first_attr_offset(NEWPOLICY, 168)
    found = None
    while off < len(NEWPOLICY):
        alen, atype = struct.unpack_from("=HH", NEWPOLICY, off)
        if atype == 5:
            found = off
            break
        off += (alen + 3) & ~3
    assert found is not None
    bad = bytearray(NEWPOLICY)
    struct.pack_into("=H", bad, found, 4 + 60)
    assert "not a multiple of 64" in only_malformed(bytes(bad))["reason"]


def test_nlmsg_len_past_the_datagram() -> None:
    """nlmsg_len larger than the datagram: malformed, with the datagram's length."""
    bad = struct.pack("=I", len(NEWSA) + 40) + NEWSA[4:]
    e = only_malformed(bad)
    assert "runs past the end of the datagram" in e["reason"]
    assert len(NEWSA) == e["length"]


def test_trailing_bytes_after_a_message() -> None:
    """A good message followed by 3 stray bytes: the event, then a malformed one."""
    events = decoded(NEWPOLICY + b"\x01\x02\x03")
    assert ["newpolicy", "malformed"] == [e["type"] for e in events]
    assert "3 trailing bytes" in events[1]["reason"]


def test_bad_alignment() -> None:
    """A FLUSHSA with nlmsg_len 17, followed by bytes that end before the next 4-byte boundary."""
    flush = with_len((FIX / "uml/sa/0009-FLUSHSA.bin").read_bytes(), 17)
    events = decoded(flush + b"\x00\x00")
    assert ["flushsa", "malformed"] == [e["type"] for e in events]
    assert "bad alignment" in events[1]["reason"]


def test_unknown_message_type() -> None:
    """A message type the decoder does not know is malformed, never raised."""
    bad = NEWPOLICY[:4] + struct.pack("=H", 99) + NEWPOLICY[6:]
    e = only_malformed(bad)
    assert ("unknown message type 99", 99) == (e["reason"], e["msg_type"])


def test_good_messages_around_a_bad_one_in_one_datagram() -> None:
    """A bad message in a multi-message datagram does not hide the good one before it."""
    events = decoded(NEWPOLICY + with_len(NEWSA, 100))
    assert ["newpolicy", "malformed"] == [e["type"] for e in events]
