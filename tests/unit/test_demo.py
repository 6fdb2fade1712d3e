"""`xfrmwatch demo`: the shipped recording (real strongSwan in the UML guest) replayed with its
narration, with no privileges at all; the recording is key-free and about a minute long."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support import ROOT, XFRMWATCH

from xfrmwatch.capture import Capture, KeyManager, Notification, ProcessName
from xfrmwatch.cli import session_speed
from xfrmwatch.demo.session import about, session
from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.netlink.pcap import read_packets
from xfrmwatch.netlink.scrub import zero_keys

DEMO = ROOT / "xfrmwatch/demo"


def test_shipped_session_is_a_real_strongswan_session() -> None:
    """The shipped file is what `record` writes of a charon session: an initial dump, charon
    named, a key manager listening, ESP AES-GCM SAs, three rekeys and the hard expiry."""
    cap = session()
    assert cap.initial is not None and cap.initial.addresses and "192.0.2.1" in cap.initial.addresses
    assert any(isinstance(i, ProcessName) and i.name == "charon" for i in cap.items)
    assert any(isinstance(i, KeyManager) and i.present for i in cap.items)
    dec = Decoder()
    events = [e for i in cap.items if isinstance(i, Notification) for e in dec.decode(i.data, 0.0)]
    types = [type(e).__name__ for e in events]
    assert types.count("UpdSA") >= 4 and types.count("NewSA") >= 4
    assert {e.sa.aead.name for e in events if type(e).__name__ == "NewSA"} == {"rfc4106(gcm(aes))"}  # type: ignore[attr-defined]
    assert [e.hard for e in events if type(e).__name__ == "Expire"][-2:] == [True, True]  # type: ignore[attr-defined]
    assert about()["strongswan"].startswith("strongSwan") and cap.stopped is not None


def test_shipped_session_holds_no_key_bytes() -> None:
    """Every XFRM datagram in the shipped file but the recorder's own markers (netlink NOOPs:
    a process name, the key-manager mark) is already scrubbed: zeroing keys changes nothing
    (the keys strongSwan negotiated never reached it)."""
    with open(DEMO / "session.pcap", "rb") as f:
        packets = [p for p in read_packets(f) if p.family == 6 and p.data[4:6] != b"\x01\x00"]
    assert len(packets) > 50
    assert all(zero_keys(p.data) == p.data for p in packets)


def test_about_a_minute() -> None:
    """Played at its default speed, the session takes about a minute."""
    cap = session()
    assert 50 <= (cap.end - cap.start) / session_speed() <= 70


def test_readme_says_how_it_was_recorded() -> None:
    """A README next to the recording names the script that made it."""
    text = (DEMO / "README.md").read_text()
    assert "tests/fixtures/record-demo.sh" in text and "strongSwan" in text


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
def test_demo_runs_without_any_privilege(tmp_path: Path) -> None:
    """`demo --fast` with no capabilities at all (and no_new_privs): the story in order,
    each step explained, and the alerts it should raise."""
    cmd = ["setpriv", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", *XFRMWATCH, "demo", "--fast"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    said = [line.strip()[2:] for line in lines if line.startswith("  > ")]
    story = [s.split(":")[0].split(" ")[0] for s in said]
    assert story[0] == "Tunnel" and "Rekey" in story and story.count("Rekey") == 3
    order = [s for s in said if s.startswith(("Tunnel up", "Rekey 3 done", "SA ", "Tunnel down", "The tunnel's policies"))]
    assert order[0].startswith("Tunnel up") and order[-2].startswith("Tunnel down after a failed rekey")
    assert order[-1].startswith("The tunnel's policies are removed")
    assert any("should have been replaced by now" in s for s in said)
    events = [line.split()[2] for line in lines if line[:4].isdigit()]
    assert events.count("rekey_completed") == 3 and "rekey_overdue" in events and "tunnel_down" in events
    assert any("[high] Rekey overdue" in line for line in lines)
    assert any("[critical] Tunnel down without a replacement" in line for line in lines)
    assert lines[0].startswith("== xfrmwatch demo: a real IKEv2 session") and lines[-1].startswith("== That was a recording")
    assert p.stderr.strip() == ""


def test_capture_of_the_shipped_file_matches() -> None:
    """The package's loader reads the same file the repository holds."""
    assert Capture.load(DEMO / "session.pcap").stats == session().stats
