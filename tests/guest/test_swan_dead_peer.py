"""A real charon's peer dies: the tunnel model warns before the hard expiry, then reports
the tunnel down, on the surviving side and on the dead side (from the kernel's EXPIREs alone)."""

from __future__ import annotations

import os
import time

import pytest
from support import Monitor
from swan import have_strongswan, swan_pair


def test_peer_daemon_killed() -> None:
    """Kill right's charon after the first rekey: rekey_overdue before the hard expiry, then
    tunnel_down (hard_expire, rekey failed) within 1 s of the hard EXPIRE, on both sides;
    timings printed."""
    if (missing := have_strongswan()) is not None:
        if os.environ.get("CI"):
            pytest.fail(f"strongSwan is needed in CI: {missing}")
        pytest.skip(missing)
    with (
        swan_pair(left_rekey=10, left_life=16, right_rekey=20, right_life=26, initiate=False) as p,
        Monitor("--netns", p.left) as ml,
        Monitor("--netns", p.right) as mr,
    ):
        p.initiate()
        t_up = time.monotonic()
        traffic = p.send_traffic(count=600, interval=0.1, duration=60)
        ml.of_type("rekey_completed", timeout=25)  # the first rekey, by left
        p.kill("right")
        t_kill = time.monotonic()
        ml.of_type("tunnel_down", timeout=30)
        mr.of_type("tunnel_down", timeout=30)
        ml.drain(1.0)
        mr.drain(0.5)
        traffic.stop()

    for side, m in (("left (alive)", ml), ("right (daemon killed)", mr)):
        seq = [e["type"] for e in m.events if e["type"] in ("rekey_started", "rekey_overdue", "tunnel_down")]
        post = seq[seq.index("rekey_started", len(seq) - 3) if "rekey_started" in seq else 0 :]
        assert ["rekey_started", "rekey_overdue", "tunnel_down"] == post[-3:], f"{side}: {seq}"
        (overdue,) = [e for e in m.events if e["type"] == "rekey_overdue"]
        (gone,) = [e for e in m.events if e["type"] == "tunnel_down"]
        hard = [e for e in m.events if e["type"] == "expire" and e["hard"] and e["sa"]["spi"] == overdue["spi"]]
        assert overdue["mono"] < hard[0]["mono"], f"{side}: overdue after the hard expiry"
        lead = hard[0]["mono"] - overdue["mono"]
        assert lead > 1.0, f"{side}: only {lead:.2f} s of warning"
        assert ("hard_expire", True) == (gone["reason"], gone["rekey_failed"]) and gone["reqid"] > 0
        assert 0 <= gone["mono"] - hard[-1]["mono"] <= 1.0, f"{side}: tunnel_down late"
        titles = {a["rule"]["title"]: a for a in m.events if a["type"] == "alert"}
        assert "high" == titles["Rekey overdue"]["rule"]["level"]
        assert "critical" == titles["Tunnel down without a replacement"]["rule"]["level"]
        print(
            f"{side}: rekey_overdue {lead:.2f} s before the hard EXPIRE "
            f"(overdue at +{overdue['mono'] - m.events[0]['mono']:.1f} s, "
            f"tunnel_down at +{gone['mono'] - m.events[0]['mono']:.1f} s after the set-up; "
            f"right's charon killed {t_kill - t_up:.1f} s after it)"
        )
    # the dead side saw no DELSA/DELPOLICY from a daemon after the kill: only the kernel's EXPIREs
    after = [e for e in mr.events if e["type"] in ("delsa", "delpolicy") and e["mono"] > mr.events[-1]["mono"] - 20]
    assert all(e["nlmsg_pid"] == 0 for e in after)
