"""Recordings are key-free: zero_keys() on real recorded messages with planted keys."""

from __future__ import annotations

import struct
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ROOT, key_marker_forms, plant_keys

from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.netlink.scrub import zero_keys

FIXTURES = ROOT / "tests/fixtures"
MESSAGES = sorted(FIXTURES.rglob("*.bin"))
DATAGRAMS = sorted(FIXTURES.rglob("dgram-*.raw"))
SA_MESSAGES = [p for p in MESSAGES if p.name.endswith(("-NEWSA.bin", "-UPDSA.bin", "-DELSA.bin"))]
MARKER = b"K3Y-\xde\xad\xbe\xef-LEAK"


def decoded(data: bytes) -> list[bytes]:
    return [msgspec.json.encode(e) for e in Decoder("t").decode(data, 0.0, 0.0)]


def test_fixture_set_has_key_messages() -> None:
    """The real messages below include SAs with every kind of key attribute."""
    assert len(SA_MESSAGES) >= 20
    assert len(MESSAGES) >= 100


@pytest.mark.parametrize("path", MESSAGES + DATAGRAMS, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_scrubbed_decodes_the_same(path: Path) -> None:
    """Every recorded message or datagram decodes to the same events after scrubbing, and
    keeps its length: the recording loses nothing xfrmwatch reads."""
    data = path.read_bytes()
    clean = zero_keys(data)
    assert len(clean) == len(data)
    assert decoded(clean) == decoded(data)


@pytest.mark.parametrize("path", SA_MESSAGES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_planted_keys_are_zeroed(path: Path) -> None:
    """Key regions and an unknown attribute filled with a marker: none of it survives, in any
    form, and the bytes where it was are zero."""
    body = 24 if path.name.endswith("DELSA.bin") else 224
    planted = plant_keys(path.read_bytes(), MARKER, body)
    assert MARKER in planted
    clean = zero_keys(planted)
    for form in key_marker_forms(MARKER):
        assert form not in clean
    changed = [i for i in range(len(clean)) if clean[i] != planted[i]]
    assert changed and all(clean[i] == 0 for i in changed)


def test_real_keys_from_the_recording_script_are_zeroed() -> None:
    """The keys record-uml.sh configured (fixtures/README.md) are in the raw fixtures and not in
    their scrubbed copies, while algorithm names and key lengths stay."""
    keys = [
        "00112233445566778899aabbccddeeff",
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        "0f0e0d0c0b0a09080706050403020100cafebabe",
        "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100deadbeef",
    ]
    raw = b"".join(p.read_bytes() for p in SA_MESSAGES)
    clean = b"".join(zero_keys(p.read_bytes()) for p in SA_MESSAGES)
    for k in keys:
        assert bytes.fromhex(k) in raw
        assert bytes.fromhex(k)[:8] not in clean
    for name in (b"cbc(aes)", b"hmac(sha256)", b"rfc4106(gcm(aes))", b"rfc7539esp(chacha20,poly1305)"):
        assert name in clean


def test_unknown_message_type_body_zeroed() -> None:
    """A message type xfrmwatch does not know keeps its header; its body is zeroed."""
    msg = struct.pack("=IHHII", 16 + len(MARKER) + 4, 99, 0, 7, 0) + MARKER + b"abcd"
    clean = zero_keys(msg)
    assert clean[:16] == msg[:16] and clean[16:] == bytes(len(MARKER) + 4)


def test_control_messages_keep_their_codes() -> None:
    """NLMSG_ERROR keeps its code and the header it answers; anything after is zeroed."""
    err = struct.pack("=IHHII", 16 + 20 + 8, 2, 0, 1, 0) + struct.pack("=i", -22) + bytes(range(16)) + MARKER[:8]
    clean = zero_keys(err)
    assert clean[:36] == err[:36] and clean[36:] == bytes(8)


def test_mapping_ipv4_padding_zeroed() -> None:
    """The recorded MAPPINGs have stack garbage in the unused 12 bytes of an IPv4 address
    (fixtures/README.md); scrubbed, they are zero and the events are unchanged."""
    paths = sorted(FIXTURES.glob("uml/traffic-u2/*-MAPPING.bin"))
    assert paths
    for path in paths:
        data = path.read_bytes()
        clean = zero_keys(data)
        for a in (0, 28, 44):
            assert clean[16 + a + 4 : 16 + a + 16] == bytes(12)
        assert decoded(clean) == decoded(data)
    assert any(p.read_bytes() != zero_keys(p.read_bytes()) for p in paths)


def test_framing_error_zeroes_the_rest() -> None:
    """After a message whose length runs past the datagram, nothing is kept but that header."""
    good = (FIXTURES / "uml/sa/0001-NEWSA.bin").read_bytes()
    bad = struct.pack("=IHHII", 4000, 16, 0, 0, 0) + MARKER * 4
    clean = zero_keys(good + bad)
    assert MARKER not in clean and len(clean) == len(good + bad)
    assert clean[len(good) : len(good) + 16] == bad[:16]


@settings(max_examples=300)
@given(data=st.binary(max_size=600), marker=st.binary(min_size=12, max_size=40).filter(lambda b: len(set(b)) > 6))
def test_never_raises_and_hides_planted_keys(data: bytes, marker: bytes) -> None:
    """Arbitrary bytes never make it raise or change the length; a key planted into a real
    message is gone whatever the key bytes are."""
    assert len(zero_keys(data)) == len(data)
    planted = plant_keys((FIXTURES / "uml/sa/0001-NEWSA.bin").read_bytes(), marker, 224)
    assert marker not in zero_keys(planted)
