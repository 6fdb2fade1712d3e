"""Planted key bytes never reach any output format, whatever the message looks like.

Real recorded SA messages get their key regions (in XFRMA_ALG_AUTH, _AUTH_TRUNC,
_CRYPT, _AEAD) overwritten with a marker, and an unknown attribute carrying the
marker is appended; every format xfrmwatch can emit is then searched for it.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ROOT, key_marker_forms, plant_keys

from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.output.ecs import EcsRenderer
from xfrmwatch.output.journald import JournalRenderer
from xfrmwatch.output.ocsf import OcsfRenderer
from xfrmwatch.output.render import TextRenderer
from xfrmwatch.output.syslog import SyslogRenderer

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


def outputs(data: bytes) -> list[bytes]:
    events = Decoder("t").decode(data, 0.0, 0.0)
    assert events
    return [r(e) for e in events for r in RENDERERS.values()]


@pytest.mark.parametrize("path", SA_MESSAGES, ids=lambda p: str(p.relative_to(ROOT / "tests/fixtures")))
def test_planted_keys_never_appear(path: Path) -> None:
    """Key regions and unknown attributes filled with a marker: no format shows it."""
    marker = b"K3Y-\xde\xad\xbe\xef-LEAK"
    body = 24 if path.name.endswith("DELSA.bin") else 224
    for blob in outputs(plant_keys(path.read_bytes(), marker, body)):
        for f in key_marker_forms(marker):
            assert f not in blob


@settings(max_examples=150)
@given(marker=st.binary(min_size=12, max_size=40).filter(lambda b: len(set(b)) > 6))
def test_random_key_bytes_never_appear(marker: bytes) -> None:
    """Whatever the key bytes are, no format shows them (hex, base64, raw, escaped)."""
    data = plant_keys((ROOT / "tests/fixtures/uml/sa/0001-NEWSA.bin").read_bytes(), marker, 224)
    assert data.count(marker[:12]) >= 3  # planted in the auth, auth-trunc and crypt keys (and the unknown one)
    for blob in outputs(data):
        for f in key_marker_forms(marker):
            assert f not in blob
