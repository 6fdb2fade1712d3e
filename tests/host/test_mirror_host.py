"""The mirror equals a fresh dump of the kernel after changes, and after an overrun."""

from __future__ import annotations

import signal
from pathlib import Path

from support import Monitor, kernel_dump, mirror_state, normalized, sh


def test_mirror_equals_dump_after_changes(netns: str, tmp_path: Path) -> None:
    """Adds, updates, deletes, flushes, larval states and expiry: mirror == dump once quiet."""
    sh(f"ip -n {netns} xfrm policy add src 10.0.0.0/24 dst 10.0.1.0/24 dir out")  # before start: from the dump
    sh(f"ip netns exec {netns} sysctl -qw net.core.xfrm_acq_expires=1")
    state = tmp_path / "state.json"
    with Monitor("--netns", netns, "--state-file", str(state)) as m:
        for i in range(5):
            sh(f"ip -n {netns} xfrm policy add src 10.1.{i}.0/24 dst 10.2.0.0/16 dir in priority {i}")
        sh(f"ip -n {netns} xfrm policy update src 10.1.0.0/24 dst 10.2.0.0/16 dir in priority 77")
        sh(f"ip -n {netns} xfrm policy delete src 10.1.1.0/24 dst 10.2.0.0/16 dir in")
        sh(f"ip -n {netns} xfrm policy add src 10.3.0.0/24 dst 10.4.0.0/24 dir fwd limit time-hard 1")
        sh(f"ip -n {netns} xfrm state allocspi src 192.0.2.1 dst 192.0.2.2 proto esp min 0x100 max 0x100")
        m.wait_for(lambda e: e["type"] == "polexpire" and e["hard"])
        m.wait_for(lambda e: e["type"] == "expire" and e["hard"])
        assert normalized(kernel_dump(netns)) == normalized(mirror_state(m, state))
        sh(f"ip -n {netns} xfrm policy setdefault in block")
        sh(f"ip -n {netns} xfrm policy flush")
        m.of_type("flushpolicy")
        sh(f"ip -n {netns} xfrm policy add src 10.9.0.0/24 dst 10.9.1.0/24 dir out")
        m.of_type("newpolicy", count=7)
        got = mirror_state(m, state)
        assert normalized(kernel_dump(netns)) == normalized(got)
        assert 1 == len(got["policy"])
        sh(f"ip -n {netns} xfrm policy setdefault in accept")


def test_overrun_then_resync_repairs_the_mirror(netns: str, tmp_path: Path) -> None:
    """Events lost to an overrun are repaired by a resync that reports what had drifted."""
    batch = "\n".join(f"xfrm policy add src 10.50.{i // 250}.{i % 250}/32 dst 10.60.0.1/32 dir out" for i in range(3000))
    (tmp_path / "batch").write_text(batch + "\n")
    state = tmp_path / "state.json"
    with Monitor("--netns", netns, "--rcvbuf", "4096", "--state-file", str(state)) as m:
        m.proc.send_signal(signal.SIGSTOP)
        sh(f"ip -n {netns} -batch {tmp_path / 'batch'}")
        m.proc.send_signal(signal.SIGCONT)
        m.of_type("overrun", timeout=20)
        r = m.of_type("resync", timeout=20)[0]
        assert r["policies"] == 3000
        assert r["missing"], "a lossy overrun must leave something to repair"
        assert all(x.startswith("policy index") for x in r["missing"])
        m.drain(1.0)
        got = mirror_state(m, state)
    assert 3000 == len(got["policy"])
    assert normalized(kernel_dump(netns)) == normalized(got)
