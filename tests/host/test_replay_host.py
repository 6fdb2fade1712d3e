"""A session on the host kernel, watched live by `monitor` and recorded by `record` at the same
time, then replayed with `replay --fast`: the same events and alerts at the same offsets, and
the same final mirror.  The session includes the kernel's own timers (POLEXPIRE soft/hard, the
hard EXPIRE of a larval state), a named process's change, default-policy switches and a flush.
"""

from __future__ import annotations

import json
from pathlib import Path

from support import (
    Monitor,
    Recording,
    assert_replay_matches_live,
    assert_same_state,
    named_change,
    replay_json,
    sh,
)


def test_replay_equals_live(netns: str, tmp_path: Path) -> None:
    """Everything `monitor` printed live, `replay --fast` prints from the recording, in the same
    order, each within 0.25 s of its live offset; and the mirrors at the end agree."""
    sh(f"ip netns exec {netns} sysctl -qw net.core.xfrm_acq_expires=2")
    sh(f"ip -n {netns} xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out "
       "tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 5 mode tunnel")  # fmt: skip
    live_state, replay_state = tmp_path / "live.json", tmp_path / "replay.json"
    pcap = tmp_path / "s.pcap"
    with Monitor("--netns", netns, "--state-file", str(live_state)) as m, Recording(pcap, "--netns", netns) as r:
        sh(f"ip -n {netns} xfrm policy add src 10.3.0.0/24 dst 10.4.0.0/24 dir in "
           "tmpl src 192.0.2.2 dst 192.0.2.1 proto esp reqid 6 mode tunnel limit time-soft 2 limit time-hard 4")  # fmt: skip
        sh(f"ip -n {netns} xfrm state allocspi src 192.0.2.1 dst 192.0.2.2 proto esp min 0x4000 max 0x4000")
        named_change(netns, "xw-keymgr", "10.5.0.0/24", "10.6.0.0/24")
        sh(f"ip -n {netns} xfrm policy setdefault in block fwd block out accept")
        sh(f"ip -n {netns} xfrm policy setdefault in accept fwd accept out accept")
        sh(f"ip -n {netns} xfrm policy delete src 10.5.0.0/24 dst 10.6.0.0/24 dir out")
        m.wait_for(lambda e: e["type"] == "polexpire" and e["hard"], timeout=15)
        m.wait_for(lambda e: e["type"] == "expire" and e["hard"], timeout=15)
        sh(f"ip -n {netns} xfrm policy add src 10.7.0.0/24 dst 10.8.0.0/24 dir fwd")
        sh(f"ip -n {netns} xfrm policy flush")
        m.wait_for(lambda e: e["type"] == "flushpolicy")
        m.drain(1.0)
        assert r.stop() == 0, r.stderr.decode()
    live = [e for e in m.events]

    replayed = replay_json(pcap, "--state-file", str(replay_state))
    assert_replay_matches_live(live, replayed, 0.25)
    alerts = [e["rule"]["title"] for e in live if e["type"] == "alert"]
    assert alerts, "the session raises alerts (default policy accept, policy flush)"
    named = [e for e in replayed if e.get("process") == "xw-keymgr"]
    assert [e["type"] for e in named] == ["newpolicy"]
    timed = {e["type"] for e in live if e["nlmsg_pid"] == 0 and e["type"] in ("polexpire", "expire")}
    assert timed == {"polexpire", "expire"}  # the kernel's own timers are in the comparison

    assert_same_state(json.loads(live_state.read_text()), json.loads(replay_state.read_text()))
