"""A real strongSwan session (set-up, rekeys, the peer's charon killed), watched live by
`monitor` and recorded by `record` on both sides at once, then replayed with `replay --fast`:
the same events and alerts (tunnel_up, rekeys, rekey_overdue, tunnel_down) at the same offsets,
the same final mirror; and none of the real ESP keys in the recordings."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from support import Monitor, Recording, assert_replay_matches_live, assert_same_state, replay_json, sh
from swan import have_strongswan, swan_pair

#: `monitor` and `record` are two processes reading the same messages: each reads a message when
#: it gets the CPU, which in the (emulated, shared) UML guest can differ by a few hundred ms
SLACK = 0.5


def esp_keys(ns: str) -> set[str]:
    """The keys of every SA in the namespace, as `ip xfrm state` prints them."""
    return set(re.findall(r"\b0x([0-9a-f]{32,})\b", sh(f"ip -n {ns} xfrm state").stdout))


def test_swan_session_replays_as_live(tmp_path: Path) -> None:
    """Both sides of a dead-peer session: replay == live, event for event."""
    if (missing := have_strongswan()) is not None:
        if os.environ.get("CI"):
            pytest.fail(f"strongSwan is needed in CI: {missing}")
        pytest.skip(missing)
    keys: set[str] = set()
    with swan_pair(left_rekey=10, left_life=16, right_rekey=20, right_life=26, initiate=False) as p:
        sides = {}
        for side in ("left", "right"):
            state = tmp_path / f"{side}-live.json"
            pcap = tmp_path / f"{side}.pcap"
            m = Monitor("--netns", p.ns(side), "--state-file", str(state))
            r = Recording(pcap, "--netns", p.ns(side))
            sides[side] = (m, r, state, pcap)
        try:
            p.initiate()
            keys |= esp_keys(p.left) | esp_keys(p.right)
            traffic = p.send_traffic(count=600, interval=0.1, duration=60)
            ml = sides["left"][0]
            ml.of_type("rekey_completed", timeout=25)
            keys |= esp_keys(p.left) | esp_keys(p.right)
            p.kill("right")
            ml.of_type("tunnel_down", timeout=30)
            sides["right"][0].of_type("tunnel_down", timeout=30)
            ml.drain(1.5)
            traffic.stop()
        finally:
            for m, r, _, _ in sides.values():
                r.stop()
                m.stop()
    assert len(keys) >= 4, keys  # in and out, before and after the rekey

    for side, (m, r, state, pcap) in sides.items():
        assert r.proc.returncode == 0, r.stderr.decode()
        data = pcap.read_bytes()
        for k in keys:
            assert bytes.fromhex(k)[:12] not in data, f"{side}: an ESP key is in the recording"
        out = tmp_path / f"{side}-replay.json"
        replayed = replay_json(pcap, "--state-file", str(out), timeout=300)
        live = m.events
        types = [e["type"] for e in live]
        for t in ("tunnel_up", "rekey_started", "rekey_overdue", "tunnel_down", "alert"):
            assert t in types, f"{side}: no {t} live"
        worst = assert_replay_matches_live(live, replayed, SLACK)
        assert_same_state(json.loads(state.read_text()), json.loads(out.read_text()))
        overdue = next(e for e in replayed if e["type"] == "rekey_overdue")
        print(f"{side}: {len(live)} events; replay offsets within {worst * 1000:.0f} ms of live; "
              f"rekey_overdue at +{overdue['mono'] - replayed[0]['mono']:.2f} s")  # fmt: skip
