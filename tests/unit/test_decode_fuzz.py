"""Arbitrary bytes never raise out of the decoder."""

import struct

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import validate_event

from xfrmwatch import events as ev
from xfrmwatch.netlink import xfrm as x
from xfrmwatch.netlink.decode import Decoder

DEC = Decoder("fuzz")
ENC = msgspec.json.Encoder()


def _check(data: bytes) -> None:
    for e in DEC.decode(data, 0.0, 0.0):
        assert isinstance(e, ev.Event)
        validate_event(msgspec.json.decode(ENC.encode(e)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_datagrams(data: bytes) -> None:
    """Random datagrams decode to events (often `malformed`), never an exception."""
    _check(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    msg_type=st.sampled_from(sorted(x.MSG_MIN_SIZE)),
    body=st.binary(max_size=600),
    attrs=st.lists(
        st.tuples(st.integers(0, 45), st.binary(max_size=120)), max_size=6
    ),
    bad_len=st.integers(-8, 8),
)
def test_wellframed_messages_with_random_bodies(
    msg_type: int, body: bytes, attrs: list[tuple[int, bytes]], bad_len: int
) -> None:
    """Messages of every type with random bodies and attribute chains never raise."""
    minimum = x.MSG_MIN_SIZE[msg_type]
    body = (body + bytes(minimum))[: max(minimum, len(body))]
    body += bytes(-len(body) % 4)
    chain = b""
    for atype, payload in attrs:
        n = 4 + len(payload)
        chain += struct.pack("=HH", max(0, n + bad_len) & 0xFFFF, atype) + payload + bytes(-n % 4)
    payload = body + chain
    data = struct.pack("=IHHII", 16 + len(payload), msg_type, 0, 1, 0) + payload
    _check(data)
