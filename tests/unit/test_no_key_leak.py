"""Planted key bytes never reach any output format, whatever the message looks like.

Real recorded SA messages get their key regions (in XFRMA_ALG_AUTH, _AUTH_TRUNC,
_CRYPT, _AEAD) overwritten with a marker, and an unknown attribute carrying the
marker is appended; every format xfrmwatch can emit is then searched for it.
"""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ROOT

from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.output.ecs import EcsRenderer
from xfrmwatch.output.journald import JournalRenderer
from xfrmwatch.output.ocsf import OcsfRenderer
from xfrmwatch.output.render import TextRenderer
from xfrmwatch.output.syslog import SyslogRenderer

KEY_ATTRS = {1: 68, 2: 68, 18: 72, 20: 72}  # attribute -> offset of the key in its payload
SA_MESSAGES = sorted((ROOT / "tests/fixtures").rglob("*-NEWSA.bin")) + sorted(
    (ROOT / "tests/fixtures").rglob("*-UPDSA.bin")
) + sorted((ROOT / "tests/fixtures").rglob("*-DELSA.bin"))
RENDERERS = {
    "json": lambda e: msgspec.json.encode(e),
    "text": TextRenderer(),
    "ecs": lambda e: msgspec.json.encode(EcsRenderer(hostname="h")(e)),
    "ocsf": lambda e: msgspec.json.encode(OcsfRenderer(hostname="h")(e)),
    "journald": JournalRenderer(),
    "syslog": SyslogRenderer(hostname="h"),
}


def plant(msg: bytes, marker: bytes, body: int) -> bytes:
    """The message with every key region filled with the marker, plus an unknown attribute."""
    out = bytearray(msg)
    off = 16 + body
    planted = 0
    while off + 4 <= len(out):
        alen, atype = struct.unpack_from("=HH", out, off)
        if alen < 4:
            break
        if atype & 0x3FFF in KEY_ATTRS:
            start = off + 4 + KEY_ATTRS[atype & 0x3FFF]
            for i in range(start, off + alen):
                out[i] = marker[(i - start) % len(marker)]
            planted += off + alen - start
        elif atype & 0x3FFF == 6:  # XFRMA_SA inside a DELSA: its own attributes follow at top level
            pass
        off += (alen + 3) & ~3
    unknown = struct.pack("=HH", 4 + len(marker), 200) + marker + bytes(-len(marker) % 4)
    out += unknown
    struct.pack_into("=I", out, 0, len(out))
    return bytes(out)


def outputs(data: bytes) -> list[bytes]:
    events = Decoder("t").decode(data, 0.0, 0.0)
    assert events
    return [r(e) for e in events for r in RENDERERS.values()]


def forms(marker: bytes) -> list[bytes]:
    return [
        marker, marker.hex().encode(), marker.hex().upper().encode(),
        base64.b64encode(marker), repr(marker).encode()[2:-1], ":".join(f"{b:02x}" for b in marker).encode(),
    ]  # fmt: skip


@pytest.mark.parametrize("path", SA_MESSAGES, ids=lambda p: str(p.relative_to(ROOT / "tests/fixtures")))
def test_planted_keys_never_appear(path: Path) -> None:
    """Key regions and unknown attributes filled with a marker: no format shows it."""
    marker = b"K3Y-\xde\xad\xbe\xef-LEAK"
    body = 24 if path.name.endswith("DELSA.bin") else 224
    for blob in outputs(plant(path.read_bytes(), marker, body)):
        for f in forms(marker):
            assert f not in blob


@settings(max_examples=150)
@given(marker=st.binary(min_size=12, max_size=40).filter(lambda b: len(set(b)) > 6))
def test_random_key_bytes_never_appear(marker: bytes) -> None:
    """Whatever the key bytes are, no format shows them (hex, base64, raw, escaped)."""
    data = plant((ROOT / "tests/fixtures/uml/sa/0001-NEWSA.bin").read_bytes(), marker, 224)
    assert data.count(marker[:12]) >= 3  # planted in the auth, auth-trunc and crypt keys (and the unknown one)
    for blob in outputs(data):
        for f in forms(marker):
            assert f not in blob
