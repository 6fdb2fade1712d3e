"""Build the rule pack's test cases from events recorded from real kernels.

    .venv/bin/python rules/tests/make_cases.py

Each case is a JSON-lines file of events (the event schema), made from the
fixtures in tests/fixtures (real NEWSA, ACQUIRE, ... messages decoded by
xfrmwatch) with only the fields under test changed.  `expected.yml` says how
many alerts each case must raise per rule; `xfrmwatch rules test` checks it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import msgspec

from xfrmwatch import events as ev
from xfrmwatch.netlink.decode import Decoder

HERE = Path(__file__).resolve().parent
FIX = HERE.parent.parent / "tests" / "fixtures"
R = msgspec.structs.replace


def rec(path: str) -> ev.Event:
    (e,) = Decoder("gw1").decode((FIX / path).read_bytes(), 100.0, 1_800_000_000.0)
    return e


SA_EVENT = rec("uml/sa/0001-NEWSA.bin")  # esp cbc(aes)+hmac(sha256), replay 32, limits
assert isinstance(SA_EVENT, ev.NewSA)
SA = SA_EVENT.sa
ACQ = rec("host/acquire/0002-ACQUIRE.bin")
MAPPING = next(
    e for f in sorted((FIX / "uml/traffic-u2").glob("*MAPPING.bin")) for e in Decoder("gw1").decode(f.read_bytes(), 100.0, 1_800_000_000.0)
)
POL = rec("host/policy/0001-NEWPOLICY.bin")
FLUSHSA = rec("uml/sa/0009-FLUSHSA.bin")
FLUSHPOL = rec("host/policy/0012-FLUSHPOLICY.bin")
DELSA = rec("uml/sa/0008-DELSA.bin")
DEFAULT = rec("host/policy/0010-GETDEFAULT.bin")
COMMON: dict[str, Any] = {"time": "2027-01-15T08:00:00.000000Z", "mono": 100.0, "netns": "gw1", "nlmsg_pid": 0, "nlmsg_seq": 0}


def at(e: ev.Event, mono: float) -> ev.Event:
    return R(e, mono=mono)


def sa_with(**kw: Any) -> ev.Event:
    return R(SA_EVENT, sa=R(SA, **kw))


def alg(name: str, bits: int) -> ev.Alg:
    return ev.Alg(name=name, key_bits=bits)


def auth(name: str, bits: int, trunc: int) -> ev.AuthAlg:
    return ev.AuthAlg(name=name, key_bits=bits, trunc_bits=trunc)


NO_LIMITS = R(SA.lifetime, hard_add_seconds=None, hard_bytes=None, hard_packets=None, hard_use_seconds=None)


def derived(cls: type, **kw: Any) -> ev.Event:
    return cls(**COMMON, **kw)  # type: ignore[no-any-return]


TUNNEL: dict[str, Any] = {
    "tunnel_id": "esp/1/192.0.2.1/192.0.2.2", "reqid": 1, "proto": "esp", "src": "192.0.2.1", "dst": "192.0.2.2",
    "spi_in": "0x00000100", "spi_out": "0x00000200",
}  # fmt: skip


def tunnel(cls: type, **kw: Any) -> ev.Event:
    return cls(**{**COMMON, **TUNNEL, **kw})  # type: ignore[no-any-return]


def down(**kw: Any) -> ev.Event:
    base = {"teardown": False, "rekey_failed": False, "spis": ["0x00000100", "0x00000200"], "nlmsg_pid": 773}
    return tunnel(ev.TunnelDown, **{**base, **kw})


def sa_state(sa: ev.SA, direction: str = "in", matched: bool = True) -> ev.Event:
    return ev.SaState(**COMMON, sa=sa, direction=direction, policy_matched=matched)


def pol_state(**kw: Any) -> ev.Event:
    assert isinstance(POL, ev.NewPolicy)
    base = {"policy": POL.policy, "protects": True, "prefix_min": 32, "tmpl_without_sa": False, "key_manager": True}
    return ev.PolicyState(**COMMON, **{**base, **kw})


def ns_state(**kw: Any) -> ev.Event:
    base: dict[str, Any] = {
        "default_in": "block", "default_fwd": "block", "default_out": "block", "key_manager": True,
        "key_manager_groups": ["acquire", "expire"], "xfrm_stat": {"XfrmInNoStates": 0},
        "xfrm_stat_errors": 0, "xfrm_stat_nonzero": [],
    }  # fmt: skip
    return ev.NetnsState(**COMMON, **{**base, **kw})


CASES: dict[str, list[ev.Event]] = {
    "weak-encryption.pos": [sa_with(enc=alg("cbc(des3_ede)", 192)), sa_with(enc=alg("ecb(cipher_null)", 0))],
    "weak-encryption.neg": [sa_with(enc=alg("cbc(aes)", 256)), SA_EVENT],
    "weak-integrity.pos": [sa_with(auth=auth("hmac(md5)", 128, 96))],
    "weak-integrity.neg": [sa_with(auth=auth("hmac(sha512)", 512, 256))],
    "sha1-96.pos": [sa_with(auth=auth("hmac(sha1)", 160, 96))],
    "sha1-96.neg": [sa_with(auth=auth("hmac(sha1)", 160, 160)), sa_with(auth=auth("hmac(sha256)", 256, 96))],
    "replay-off-inbound-esp.pos": [sa_with(replay_window=0, dir="in"), sa_state(R(SA, replay_window=0), "in")],
    "replay-off-inbound-esp.neg": [
        sa_with(replay_window=32, dir="in"),
        sa_with(replay_window=0, dir="out"),
        sa_state(R(SA, replay_window=0), "out"),
        sa_with(replay_window=0, dir="in", spi="0x00000000"),
    ],
    "no-hard-lifetime.pos": [sa_with(lifetime=NO_LIMITS)],
    "no-hard-lifetime.neg": [SA_EVENT, sa_with(lifetime=NO_LIMITS, spi="0x00000000")],
    "policy-flush.pos": [FLUSHPOL],
    "policy-flush.neg": [POL],
    "sad-flush.pos": [FLUSHSA],
    "sad-flush.neg": [R(DELSA, nlmsg_pid=773, process="charon")],
    "default-policy-accept.pos": [R(DEFAULT, switched_to_accept=["in"])],
    "default-policy-accept.neg": [R(DEFAULT, switched_to_accept=[])],
    "acquire-storm.pos": [at(ACQ, 100.0 + i * 0.5) for i in range(25)],
    "acquire-storm.neg": [at(ACQ, 100.0 + i * 40.0) for i in range(25)],
    "nat-mapping-change.pos": [MAPPING],
    "nat-mapping-change.neg": [SA_EVENT],
    "rekey-overdue.pos": [
        tunnel(ev.RekeyOverdue, spi="0x00000100", basis="time", seconds_since_soft=3.0, seconds_to_hard=3.0),
        tunnel(ev.RekeyOverdue, spi="0x00000100", basis="history", expected_seconds=3600.0),
    ],
    "rekey-overdue.neg": [
        tunnel(ev.RekeyCompleted, old_spis=["0x00000100"], new_spis=["0x00000101"], initiator=True,
               duration_seconds=0.011),
        tunnel(ev.RekeyStarted, spi="0x00000100", basis="bytes", seconds_to_hard=60.0),
    ],  # fmt: skip
    "tunnel-down-failure.pos": [down(reason="hard_expire"), down(reason="deleted", rekey_failed=True)],
    "tunnel-down-failure.neg": [
        tunnel(ev.TunnelUp, mode="tunnel"),
        tunnel(ev.RekeyStarted, spi="0x00000100", basis="time", seconds_to_hard=6.0),
    ],
    "tunnel-broken.pos": [
        down(reason="deleted", partial=True, nlmsg_pid=0),
        down(reason="policy_removed"),
        down(reason="flushed"),
        down(reason="unknown"),
    ],
    "tunnel-broken.neg": [R(DELSA, nlmsg_pid=0), tunnel(ev.TunnelUp, mode="transport")],
    "tunnel-teardown.pos": [down(reason="deleted", teardown=True)],
    "tunnel-teardown.neg": [tunnel(ev.TunnelUp, mode="tunnel")],
    "traffic-stalled.pos": [tunnel(ev.TrafficStalled, silent_seconds=30.0, out_bytes_since=12000)],
    "traffic-stalled.neg": [tunnel(ev.TrafficResumed, silent_seconds=45.0)],
    "netlink-overrun.pos": [derived(ev.Overrun, detail="ENOBUFS")],
    "netlink-overrun.neg": [derived(ev.Resync, missing=[], stale=[], sas=1, policies=1)],
    "audit-sa-without-policy.pos": [sa_state(SA, matched=False)],
    "audit-sa-without-policy.neg": [sa_state(SA, matched=True)],
    "audit-template-without-sa.pos": [pol_state(tmpl_without_sa=True, key_manager=False)],
    "audit-template-without-sa.neg": [pol_state(tmpl_without_sa=True, key_manager=True)],
    "audit-broad-bypass.pos": [pol_state(protects=False, prefix_min=0)],
    "audit-broad-bypass.neg": [pol_state(protects=False, prefix_min=24), pol_state(protects=True, prefix_min=0)],
    "audit-default-accept.pos": [ns_state(default_out="accept")],
    "audit-default-accept.neg": [ns_state()],
    "audit-no-key-manager.pos": [ns_state(key_manager=False, key_manager_groups=[])],
    "audit-no-key-manager.neg": [ns_state()],
    "audit-xfrm-stat-errors.pos": [ns_state(xfrm_stat={"XfrmInNoStates": 3}, xfrm_stat_errors=3, xfrm_stat_nonzero=["XfrmInNoStates"])],
    "audit-xfrm-stat-errors.neg": [ns_state()],
}


def main() -> int:
    enc = msgspec.json.Encoder()
    for name, events in CASES.items():
        with open(HERE / f"{name}.jsonl", "wb") as f:
            for e in events:
                f.write(enc.encode(e) + b"\n")
    print(f"wrote {len(CASES)} cases to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
