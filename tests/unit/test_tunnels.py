"""The tunnel model on the kernel sequences of real IKE daemons and manual keying
(/work/shared/notes/ike-rekey.md): strongSwan, Libreswan, ip xfrm; rekeys, collisions,
byte lifetimes, dead peers, teardowns, lone deletions, flushes, traffic stalls.

Each test drives a Mirror and a TunnelModel the way the pipeline's state stage does: every
event applied to the mirror, then observed by the model; the model's deadlines fired in
order as the clock advances (explicit times, as trio's clock would give them)."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest
from support import ROOT, validate_event

from xfrmwatch import events as ev
from xfrmwatch.mirror import Mirror
from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.timestamps import utc, utc_precise
from xfrmwatch.tunnels import TunnelModel, TunnelSettings


def _first(path: str, cls: type[Any]) -> Any:
    return next(e for e in Decoder().decode((ROOT / path).read_bytes(), 0.0, 0.0) if isinstance(e, cls))


SA_TEMPLATE: ev.SA = _first("tests/fixtures/uml/sa/0002-NEWSA.bin", ev.SaEvent).sa  # a real GCM tunnel SA
POLICY_TEMPLATE: ev.Policy = _first("tests/fixtures/host/policy/0002-NEWPOLICY.bin", ev.PolicyEvent).policy
ACQUIRE: ev.AcquireEvent = _first("tests/fixtures/uml/traffic-u1/0023-ACQUIRE.bin", ev.AcquireEvent)
L, R = "192.0.2.1", "192.0.2.2"
CHARON = 773
WALL0 = time.time()
ZERO = msgspec.structs.replace(
    SA_TEMPLATE.lifetime, soft_bytes=None, hard_bytes=None, soft_packets=None, hard_packets=None,
    soft_add_seconds=None, hard_add_seconds=None, soft_use_seconds=None, hard_use_seconds=None,
)  # fmt: skip
DERIVED = {cls.__struct_config__.tag for cls in ev.TUNNEL_EVENTS}


class Side:
    """One namespace's mirror and tunnel model, fed as the pipeline's state stage feeds them."""

    def __init__(self, local: str = L, key_manager: bool = True, **settings: Any) -> None:
        self.mirror = Mirror(netns="t", local_addrs=frozenset({local}))
        self.model = TunnelModel(self.mirror, TunnelSettings(**settings), key_manager=lambda: key_manager)
        self.now = 0.0
        self.seen: list[dict[str, Any]] = []
        self.attached: list[bool] = []
        self.pid = CHARON

    def _emit(self, events: list[ev.Event]) -> None:
        for e in events:
            obj = msgspec.json.decode(msgspec.json.encode(e))
            validate_event(obj)
            obj["at"] = round(self.now, 3)
            self.seen.append(obj)

    def at(self, t: float) -> None:
        """Advance the clock to ``t``, firing the model's deadlines on the way."""
        while (d := self.model.next_deadline()) is not None and d <= t:
            self.now = max(self.now, d)
            self._emit(self.model.on_time(self.now, WALL0 + self.now))
        self.now = max(self.now, t)

    def common(self, pid: int | None = None) -> dict[str, Any]:
        return {
            "time": utc_precise(WALL0 + self.now), "mono": self.now, "netns": "t",
            "nlmsg_pid": self.pid if pid is None else pid, "nlmsg_seq": 0,
        }  # fmt: skip

    def feed(self, e: ev.Event) -> None:
        entry = self.mirror.apply(e)
        derived, attached = self.model.observe(e, entry, self.now, WALL0 + self.now)
        self.attached.append(attached)
        self._emit(derived)

    # kernel messages
    def sa(self, spi: int, src: str, dst: str, *, reqid: int = 1, lifetime: ev.Lifetime | None = None,
           mode: str = "tunnel") -> ev.SA:  # fmt: skip
        cur = msgspec.structs.replace(SA_TEMPLATE.current, add_time=utc(WALL0 + self.now))
        return msgspec.structs.replace(
            SA_TEMPLATE, spi=f"0x{spi:08x}", src=src, dst=dst, reqid=reqid, mode=mode,
            lifetime=lifetime or ZERO, current=cur,
        )  # fmt: skip

    def add(self, s: ev.SA, upd: bool = False) -> ev.SA:
        self.feed((ev.UpdSA if upd else ev.NewSA)(**self.common(), sa=s))
        return s

    def expire(self, s: ev.SA, hard: bool, *, bytes_: int = 0) -> None:
        cur = msgspec.structs.replace(s.current, bytes=bytes_, packets=bytes_ // 100)
        self.feed(ev.Expire(**self.common(0), hard=hard, sa=msgspec.structs.replace(s, current=cur)))

    def delete(self, s: ev.SA) -> None:
        sid = ev.SaId(family=s.family, dst=s.dst, spi=s.spi, proto=s.proto)
        self.feed(ev.DelSA(**self.common(), id=sid, sa=s))

    def policy(self, d: str, *, reqid: int = 1, index: int | None = None, src: str = L, dst: str = R,
               hold: bool = False, upd: bool = False) -> ev.Policy:  # fmt: skip
        tm = msgspec.structs.replace(
            POLICY_TEMPLATE.tmpl[0], src="0.0.0.0" if hold else src, dst="0.0.0.0" if hold else dst,
            reqid=0 if hold else reqid, proto="esp", mode="tunnel",
        )  # fmt: skip
        idx = index if index is not None else {"out": 1, "in": 8, "fwd": 2}[d] + 16 * reqid
        p = msgspec.structs.replace(POLICY_TEMPLATE, dir=d, index=idx, tmpl=[tm])
        self.feed((ev.UpdPolicy if upd else ev.NewPolicy)(**self.common(), policy=p))
        return p

    def delpolicy(self, p: ev.Policy) -> None:
        pid = ev.PolicyId(dir=p.dir, index=p.index, sel=p.sel)
        self.feed(ev.DelPolicy(**self.common(), policy_id=pid, policy=p))

    def acquire(self, reqid: int, src: str = L, dst: str = R) -> None:
        tm = [msgspec.structs.replace(ACQUIRE.policy.tmpl[0], reqid=reqid, src=src, dst=dst)]
        pol = msgspec.structs.replace(ACQUIRE.policy, tmpl=tm)
        self.feed(msgspec.structs.replace(ACQUIRE, **self.common(0), policy=pol))

    def sample(self, *pairs: tuple[ev.SA, int]) -> None:
        """A counters sample (GETSA dump): (SA, bytes so far)."""
        sas = [msgspec.structs.replace(s, current=msgspec.structs.replace(s.current, bytes=b, packets=b // 100))
               for s, b in pairs]  # fmt: skip
        self._emit(self.model.counters(sas, self.now, WALL0 + self.now))

    def derived(self, *types: str) -> list[dict[str, Any]]:
        want = set(types) or DERIVED
        return [e for e in self.seen if e["type"] in want]

    def types(self) -> list[str]:
        return [e["type"] for e in self.derived()]


def life(*, soft: int | None = None, hard: int | None = None, soft_bytes: int | None = None,
         hard_bytes: int | None = None) -> ev.Lifetime:  # fmt: skip
    return msgspec.structs.replace(ZERO, soft_add_seconds=soft, hard_add_seconds=hard,
                                   soft_bytes=soft_bytes, hard_bytes=hard_bytes)  # fmt: skip


def swan_install(s: Side, base: int, *, local: str = L, remote: str = R, reqid: int = 1,
                 soft_in: int | None = 10, soft_out: int | None = None, hard: int | None = 16) -> tuple[ev.SA, ev.SA]:  # fmt: skip
    """strongSwan's order: UPDSA inbound (filling the reserved SPI), NEWSA outbound."""
    i = s.add(s.sa(base, remote, local, reqid=reqid, lifetime=life(soft=soft_in, hard=hard)), upd=True)
    o = s.add(s.sa(base + 0x1000, local, remote, reqid=reqid, lifetime=life(soft=soft_out, hard=hard)))
    return i, o


def swan_policies(s: Side, reqid: int = 1, upd: bool = False) -> list[ev.Policy]:
    return [s.policy(d, reqid=reqid, upd=upd) for d in ("in", "fwd", "out")]


# --- strongSwan --------------------------------------------------------------------------------


def test_strongswan_setup_and_initiator_rekeys() -> None:
    """Set-up, then three rekeys started by this side's soft EXPIRE: one tunnel_up, and per
    rekey exactly one rekey_started and one rekey_completed (initiator), nothing else."""
    s = Side()
    i, o = swan_install(s, 0x100)
    swan_policies(s)
    for n in range(1, 4):
        s.at(10 * n - 0.15)
        s.expire(i, hard=False)
        s.at(10 * n - 0.14)
        i2, o2 = swan_install(s, 0x100 + n)
        swan_policies(s, upd=True)
        s.delete(o)
        s.at(10 * n + 4.86)
        s.delete(i)
        i, o = i2, o2
    s.at(40)
    assert ["tunnel_up"] + ["rekey_started", "rekey_completed"] * 3 == s.types()
    up = s.derived("tunnel_up")[0]
    assert (L, R, "0x00000100", "0x00001100") == (up["src"], up["dst"], up["spi_in"], up["spi_out"])
    done = s.derived("rekey_completed")
    assert [True] * 3 == [d["initiator"] for d in done]
    assert [1, 2, 3] == [d["rekeys"] for d in done]
    assert (["0x00000100", "0x00001100"], ["0x00000101", "0x00001101"]) == (done[0]["old_spis"], done[0]["new_spis"])
    assert 0.005 < done[0]["duration_seconds"] < 0.05
    assert not any(d["collision"] for d in done)


def test_strongswan_responder_is_known_from_the_lifetimes() -> None:
    """The side that sees no soft EXPIRE: its old SAs' soft limit is still ahead, so the
    kernel shows it did not start the rekey: initiator false, one rekey_completed each."""
    s = Side(local=R)
    i, o = swan_install(s, 0x300, local=R, remote=L, soft_in=20, hard=26)
    for n in range(1, 4):
        s.at(10 * n)
        i2, o2 = swan_install(s, 0x300 + n, local=R, remote=L, soft_in=20, hard=26)
        s.delete(o)
        s.at(10 * n + 5)
        s.delete(i)
        i, o = i2, o2
    s.at(35)
    assert ["tunnel_up"] + ["rekey_completed"] * 3 == s.types()
    done = s.derived("rekey_completed")
    assert [False] * 3 == [d["initiator"] for d in done]
    assert (["0x00000300", "0x00001300"], ["0x00000301", "0x00001301"]) == (done[0]["old_spis"], done[0]["new_spis"])


def test_strongswan_dead_peer_survivor() -> None:
    """Peer's charon killed: soft EXPIRE, no replacement; rekey_overdue half-way to the
    hard limit; the hard EXPIREs end the tunnel (tunnel_down hard_expire, rekey failed) within
    the grace time; the ACQUIRE and the late DELPOLICY/DELSA of charon giving up add nothing."""
    s = Side(grace=0.5)
    i, o = swan_install(s, 0x700)
    pols = swan_policies(s)
    s.at(10)
    s.expire(i, hard=False)
    s.at(16)
    s.expire(i, hard=True)
    s.expire(o, hard=True)
    s.at(16.2)
    s.acquire(1)
    s.at(26.1)
    for p in reversed(pols):
        s.delpolicy(p)
    s.delete(o)  # the larval ACQUIRE state under the dead outbound SPI: not in the mirror
    s.at(40)
    assert ["tunnel_up", "rekey_started", "rekey_overdue", "tunnel_down"] == s.types()
    _, started, overdue, down = s.derived()
    assert ("time", 6.0) == (started["basis"], started["seconds_to_hard"])
    assert (13.0, 3.0) == (overdue["at"], overdue["seconds_to_hard"])
    assert ("hard_expire", True, False, False) == (down["reason"], down["rekey_failed"], down["teardown"], down["partial"])
    assert 16 < down["at"] <= 16 + 1.0
    assert 1 == s.model.acquires_attached((1, "esp", L, R))


def test_strongswan_dead_side_from_expires_alone() -> None:
    """The side whose daemon died sees only the kernel's EXPIREs: the superseded generation
    expiring is ignored; the current one gives started, overdue, then tunnel_down."""
    s = Side(local=R)
    oi, oo = swan_install(s, 0x900, local=R, remote=L, soft_in=20, hard=26)
    s.at(10)
    ci, co = swan_install(s, 0x901, local=R, remote=L, soft_in=20, hard=26)
    s.delete(oo)  # the delayed delete of the old inbound never runs: the daemon was killed
    s.at(20)
    s.expire(oi, hard=False)
    s.at(26)
    s.expire(oi, hard=True)
    s.at(30)
    s.expire(ci, hard=False)
    s.at(36)
    s.expire(ci, hard=True)
    s.expire(co, hard=True)
    s.at(40)
    assert ["tunnel_up", "rekey_completed", "rekey_started", "rekey_overdue", "tunnel_down"] == s.types()
    assert all(e["spi"] == "0x00000901" for e in s.derived("rekey_started", "rekey_overdue"))
    assert "hard_expire" == s.derived("tunnel_down")[0]["reason"]


def test_strongswan_gives_up_before_the_hard_expiry() -> None:
    """Wide soft->hard window: charon deletes the unrekeyed CHILD_SA itself (DELPOLICY x3,
    DELSA x2) before any hard EXPIRE, even before the overdue point: tunnel_down says the rekey
    failed (not a teardown)."""
    s = Side()
    i, o = swan_install(s, 0xB00, soft_in=10, hard=400)
    pols = swan_policies(s)
    s.at(10)
    s.expire(i, hard=False)
    s.at(26)
    for p in reversed(pols):
        s.delpolicy(p)
    s.delete(o)
    s.delete(i)
    s.at(30)
    assert ["tunnel_up", "rekey_started", "tunnel_down"] == s.types()
    down = s.derived("tunnel_down")[0]
    assert ("deleted", True, False, CHARON) == (down["reason"], down["rekey_failed"], down["teardown"], down["nlmsg_pid"])
    assert ["0x00000b00", "0x00001b00"] == sorted(down["spis"])
    assert 26.0 < down["at"] <= 27.0


def test_strongswan_terminate_is_a_teardown() -> None:
    """swanctl --terminate of a healthy tunnel: policies then SAs deleted by charon:
    one tunnel_down, teardown, no rekey failure."""
    s = Side()
    i, o = swan_install(s, 0xC00)
    pols = swan_policies(s)
    s.at(5)
    for p in reversed(pols):
        s.delpolicy(p)
    s.delete(o)
    s.delete(i)
    s.at(7)
    assert ["tunnel_up", "tunnel_down"] == s.types()
    down = s.derived("tunnel_down")[0]
    assert ("deleted", True, False) == (down["reason"], down["teardown"], down["rekey_failed"])


def test_rekey_collision_is_one_rekey() -> None:
    """Both peers rekey at once: two new pairs appear together; the redundant one is deleted
    seconds later, the old ones too: exactly one rekey_completed, collision folded, no down."""
    s = Side()
    i, o = swan_install(s, 0xD00)
    swan_policies(s)
    s.at(9.9)
    s.expire(i, hard=False)
    s.at(10.0)
    a_i, a_o = swan_install(s, 0xD01)
    s.at(10.004)
    swan_install(s, 0xD02)
    s.delete(o)
    s.at(13)
    s.delete(a_o)  # the redundant CHILD_SA
    s.delete(a_i)
    s.at(15)
    s.delete(i)
    s.at(30)
    assert ["tunnel_up", "rekey_started", "rekey_completed"] == s.types()
    done = s.derived("rekey_completed")[0]
    assert (True, True) == (done["collision"], done["initiator"])
    assert {"0x00000d01", "0x00000d02", "0x00001d01", "0x00001d02"} == set(done["new_spis"])


def test_break_before_make_reauthentication_is_no_outage() -> None:
    """Reauthentication that removes the CHILD_SA and installs a new one under the same key
    within the grace time: no tunnel_down, a rekey."""
    s = Side(grace=0.5)
    i, o = swan_install(s, 0xE00)
    pols = swan_policies(s)
    s.at(5)
    for p in reversed(pols):
        s.delpolicy(p)
    s.delete(o)
    s.delete(i)
    s.at(5.2)
    swan_install(s, 0xE01)
    swan_policies(s)
    s.at(10)
    assert ["tunnel_up", "rekey_completed"] == s.types()


def test_two_child_sas_are_two_tunnels() -> None:
    """Two CHILD_SAs under one IKE_SA (reqids 1 and 2): two tunnels; one torn down, the
    other keeps rekeying untouched."""
    s = Side()
    i1, o1 = swan_install(s, 0x100, reqid=1)
    i2, o2 = swan_install(s, 0x200, reqid=2)
    s.at(5)
    s.delete(o2)
    s.delete(i2)
    s.at(9.9)
    s.expire(i1, hard=False)
    swan_install(s, 0x101, reqid=1)
    s.delete(o1)
    s.at(20)
    assert ["tunnel_up", "tunnel_up", "tunnel_down", "rekey_started", "rekey_completed"] == s.types()
    assert [1, 2, 2, 1, 1] == [e["reqid"] for e in s.derived()]


def test_ipv6_transport_tunnel() -> None:
    """IPv6 outer addresses, transport mode: the same life."""
    la, ra = "2001:db8::1", "2001:db8::2"
    s = Side(local=la)
    i, o = swan_install(s, 0x600, local=la, remote=ra)
    s.at(9.9)
    s.expire(i, hard=False)
    swan_install(s, 0x601, local=la, remote=ra)
    s.delete(o)
    s.at(15)
    assert ["tunnel_up", "rekey_started", "rekey_completed"] == s.types()
    assert (la, ra) == (s.derived()[0]["src"], s.derived()[0]["dst"])


# --- byte lifetimes ------------------------------------------------------------------------------


def test_byte_lifetime_rekey_and_projected_overdue() -> None:
    """strongSwan with rekey_bytes/life_bytes: soft EXPIREs by bytes (outbound first).  With the
    peer gone, rekey_overdue comes from the observed rate, before the hard byte limit."""
    s = Side()
    lt = life(soft_bytes=1_000_000, hard_bytes=2_000_000)
    i = s.add(s.sa(0x400, R, L, lifetime=lt), upd=True)
    o = s.add(s.sa(0x1400, L, R, lifetime=lt))
    for t in range(1, 11):  # 100 kB/s each way
        s.at(float(t))
        s.sample((i, 100_000 * t), (o, 100_000 * t))
    s.expire(o, hard=False, bytes_=1_000_000)
    s.expire(i, hard=False, bytes_=1_000_000)
    started = s.derived("rekey_started")
    assert 1 == len(started) and "bytes" == started[0]["basis"]
    assert started[0]["seconds_to_hard"] == pytest.approx(10.0, abs=0.5)
    for t in range(11, 21):
        s.at(float(t))
        s.sample((o, 100_000 * t))  # the peer is gone: nothing comes in
    assert ["tunnel_up", "rekey_started", "rekey_overdue"] == s.types()[:3]
    overdue = s.derived("rekey_overdue")[0]
    assert "bytes" == overdue["basis"] and 14.5 <= overdue["at"] <= 15.5
    s.expire(o, hard=True, bytes_=2_000_000)
    s.expire(i, hard=True, bytes_=2_000_000)
    s.at(22)
    assert "tunnel_down" == s.types()[-1]


# --- Libreswan ------------------------------------------------------------------------------------


def pluto_install(s: Side, base: int, reqid: int = 16389) -> tuple[ev.SA, ev.SA]:
    """pluto's order: NEWSA outbound, UPDSA inbound; no time lifetime in the kernel; nlmsg_pid 0."""
    vol = msgspec.structs.replace(ZERO, soft_bytes=1 << 61, hard_bytes=1 << 63, soft_packets=1 << 61, hard_packets=1 << 63)
    o = s.add(s.sa(base + 0x1000, L, R, reqid=reqid, lifetime=vol))
    i = s.add(s.sa(base, R, L, reqid=reqid, lifetime=vol), upd=True)
    return i, o


def test_libreswan_rekeys_no_alarm_and_learned_interval() -> None:
    """pluto rekeys every 10 s on its own timer (no EXPIRE ever): one rekey_completed per
    rekey with initiator unknown, no rekey_overdue while the rekeys keep coming."""
    s = Side()
    s.pid = 0
    i, o = pluto_install(s, 0x100)
    for d in ("in", "fwd", "out"):
        s.policy(d, reqid=16389, upd=True)
    for n in range(1, 6):
        s.at(10.0 * n)
        i2, o2 = pluto_install(s, 0x100 + n)
        s.policy("out", reqid=16389, upd=True)
        s.at(10.0 * n + 1)
        s.delete(o)
        s.delete(i)
        i, o = i2, o2
    s.at(62)
    assert ["tunnel_up"] + ["rekey_completed"] * 5 == s.types()
    assert [None] * 5 == [d["initiator"] for d in s.derived("rekey_completed")]
    (v,) = s.model.views()
    assert (10.0, "history") == (v.rekey_interval, v.deadline_basis)


def test_libreswan_dead_peer_survivor() -> None:
    """The peer's pluto dies after two rekeys.  The surviving pluto's rekey fails: the SA
    outlives its learned interval (rekey_overdue, basis history), then pluto switches the out
    policy to a hold template, deletes in/fwd and the SAs: tunnel_down, rekey failed."""
    s = Side()
    s.pid = 0
    i, o = pluto_install(s, 0x100)
    pols = {d: s.policy(d, reqid=16389, upd=True) for d in ("in", "fwd", "out")}
    for n in (1, 2):
        s.at(10.0 * n)
        i2, o2 = pluto_install(s, 0x100 + n)
        s.at(10.0 * n + 1)
        s.delete(o)
        s.delete(i)
        i, o = i2, o2
    s.at(36)  # no third rekey: overdue at 20 + 1.5 x 10
    s.policy("out", index=pols["out"].index, hold=True, upd=True)
    s.delpolicy(pols["in"])
    s.delpolicy(pols["fwd"])
    s.delete(o)
    s.delete(i)
    s.at(40)
    assert ["tunnel_up", "rekey_completed", "rekey_completed", "rekey_overdue", "tunnel_down"] == s.types()
    overdue, down = s.derived("rekey_overdue", "tunnel_down")
    assert ("history", 10.0, 35.0) == (overdue["basis"], overdue["expected_seconds"], overdue["at"])
    assert ("deleted", True, False) == (down["reason"], down["rekey_failed"], down["teardown"])


def test_libreswan_after_one_rekey() -> None:
    """With one rekey seen, the interval from set-up to it is not trusted for warnings (the side
    that installed late sees it short), so no rekey_overdue; an end at 1.5 times it is still a
    failed rekey, an end before that a teardown."""
    for end, failed in ((25.0, True), (12.0, False)):
        s = Side()
        s.pid = 0
        i, o = pluto_install(s, 0x100)
        s.at(10)
        i2, o2 = pluto_install(s, 0x101)
        s.at(11)
        s.delete(o)
        s.delete(i)
        s.at(end)
        s.delete(o2)
        s.delete(i2)
        s.at(end + 1)
        assert ["tunnel_up", "rekey_completed", "tunnel_down"] == s.types(), end
        down = s.derived("tunnel_down")[0]
        assert (failed, not failed) == (down["rekey_failed"], down["teardown"]), end


def test_short_first_interval_is_no_false_alarm() -> None:
    """Libreswan in a loaded guest: this side installed its first Child SA 4.4 s late, so its
    first generation lived 5.2 s while pluto rekeys every 10 s: no rekey_overdue from that."""
    s = Side()
    s.pid = 0
    i, o = pluto_install(s, 0x100)
    t = 5.2
    for n in range(1, 5):
        s.at(t)
        i2, o2 = pluto_install(s, 0x100 + n)
        s.at(t + 1)
        s.delete(o)
        s.delete(i)
        i, o = i2, o2
        t += 10.0
    s.at(t - 5)
    assert ["tunnel_up"] + ["rekey_completed"] * 4 == s.types()


def test_slow_break_before_make_reauth_is_a_teardown() -> None:
    """strongSwan's reauthentication with 2 s between removing the CHILD_SA and installing the
    new one, after reauths every 10 s: the SAs had time limits, so no learned deadline applies:
    a teardown (informational) and a new tunnel_up, not a failed rekey."""
    s = Side()
    i, o = swan_install(s, 0x100, soft_in=60, hard=70)
    pols = swan_policies(s)
    base = 0x100
    for n in range(1, 4):
        s.at(10.0 * n)
        for p in reversed(pols):
            s.delpolicy(p)
        s.delete(i)
        s.delete(o)
        s.at(10.0 * n + (2.0 if n == 3 else 0.1))
        base += 1
        i, o = swan_install(s, base, soft_in=60, hard=70)
        pols = swan_policies(s)
    s.at(40)
    downs = s.derived("tunnel_down")
    assert [(True, False)] == [(d["teardown"], d["rekey_failed"]) for d in downs]

def test_libreswan_terminate_is_a_teardown() -> None:
    s = Side()
    s.pid = 0
    i, o = pluto_install(s, 0x100)
    for d in ("in", "fwd", "out"):
        s.policy(d, reqid=16389, upd=True)
    s.at(4)
    s.delete(o)
    s.delete(i)
    s.at(6)
    down = s.derived("tunnel_down")[0]
    assert (True, False, 0) == (down["teardown"], down["rekey_failed"], down["nlmsg_pid"])


# --- manual keying -------------------------------------------------------------------------------------


def test_manual_key_rotation() -> None:
    """Cilium-style rotation with ip xfrm: a new SA per direction with a new SPI and the same
    reqid, the old ones removed 5 s later: one rekey, no down."""
    s = Side()
    s.pid = 0
    i = s.add(s.sa(0x10, R, L))
    o = s.add(s.sa(0x20, L, R))
    s.policy("out")
    s.at(60)
    s.add(s.sa(0x11, R, L))
    s.add(s.sa(0x21, L, R))
    s.at(65)
    s.delete(i)
    s.delete(o)
    s.at(70)
    assert ["tunnel_up", "rekey_completed"] == s.types()
    assert s.derived("rekey_completed")[0]["initiator"] is None


def test_model_size_stays_flat_over_many_rotations() -> None:
    """Two tunnels rotated 200 times each (ip xfrm, as in bench/soak.py): one rekey_completed
    per rotation, and the model (tunnels, SAs tracked, deadlines queued) no bigger at the end
    than after the first rotations; the state file carries that size."""
    s = Side()
    s.pid = 0
    live = {r: (s.add(s.sa(0x100 * r, R, L, reqid=r)), s.add(s.sa(0x100 * r + 0x80, L, R, reqid=r))) for r in (1, 2)}
    for r in (1, 2):
        s.policy("out", reqid=r)
    sizes = []
    for n in range(1, 201):
        for r in (1, 2):
            s.at(60.0 * n + r)
            new = (s.add(s.sa(0x10000 * n + 0x100 * r, R, L, reqid=r)), s.add(s.sa(0x10000 * n + 0x100 * r + 0x80, L, R, reqid=r)))
            for old in live[r]:
                s.delete(old)
            live[r] = new
        sizes.append(s.model.stats())
    assert len(s.derived("rekey_completed")) == 400 and not s.derived("tunnel_down", "rekey_overdue")
    assert sizes[-1] == {"live": 2, "down": 0, "sas": 4, "timers": sizes[-1]["timers"]}
    assert sizes[-1]["timers"] <= max(x["timers"] for x in sizes[:10])
    assert s.mirror.as_dump()["tunnels"] == sizes[-1]


def test_lone_delete_of_one_live_sa() -> None:
    """`ip xfrm state delete` of the inbound SA of a live tunnel: tunnel_down, partial, neither
    a teardown nor a rekey; putting one back brings it up again."""
    s = Side()
    s.pid = 0
    i = s.add(s.sa(0x10, R, L))
    s.add(s.sa(0x20, L, R))
    s.policy("out")
    s.at(30)
    s.delete(i)
    s.at(31)
    down = s.derived("tunnel_down")[0]
    assert ("deleted", False, False, True) == (down["reason"], down["teardown"], down["rekey_failed"], down["partial"])
    assert ["0x00000010"] == down["spis"]
    s.add(s.sa(0x12, R, L))
    assert ["tunnel_up", "tunnel_down", "tunnel_up"] == s.types()


def test_out_policy_removed_while_sas_remain() -> None:
    """The out policy deleted by hand: traffic no longer enters the tunnel."""
    s = Side()
    s.pid = 0
    s.add(s.sa(0x10, R, L))
    s.add(s.sa(0x20, L, R))
    out = s.policy("out")
    s.at(5)
    s.delpolicy(out)
    s.at(6)
    down = s.derived("tunnel_down")[0]
    assert ("policy_removed", False, False) == (down["reason"], down["teardown"], down["partial"])


def test_flush_ends_every_tunnel() -> None:
    s = Side()
    swan_install(s, 0x100, reqid=1)
    swan_install(s, 0x200, reqid=2)
    s.at(3)
    s.feed(ev.FlushSA(**s.common(0), proto="any"))
    s.at(4)
    downs = s.derived("tunnel_down")
    assert [("flushed", False)] * 2 == [(d["reason"], d["teardown"]) for d in downs]


def test_resync_finds_a_tunnel_gone() -> None:
    """After an overrun, the resync's dump lacks the tunnel's SAs: tunnel_down, reason unknown."""
    s = Side()
    swan_install(s, 0x100)
    s.at(3)
    s.mirror.load([], [], None, s.now, WALL0 + s.now)
    s.feed(ev.Resync(**s.common(0), missing=[], stale=["esp spi 0x00000100"], sas=0, policies=0))
    s.at(4)
    down = s.derived("tunnel_down")[0]
    assert ("unknown", False) == (down["reason"], down["teardown"])


# --- traffic ----------------------------------------------------------------------------------------


def test_traffic_stall_and_resume() -> None:
    """Inbound silent while outbound sends, for stall_after: traffic_stalled; inbound back:
    traffic_resumed.  Outbound-only traffic from the start is no stall."""
    s = Side(stall_after=5.0)
    i, o = swan_install(s, 0x100, soft_in=None, hard=None)
    one_way_i, one_way_o = swan_install(s, 0x200, reqid=2, soft_in=None, hard=None)
    b_in = b_out = 0
    for t in range(1, 21):
        s.at(float(t))
        b_out += 1000
        if t <= 5 or t >= 15:
            b_in += 1000
        s.sample((i, b_in), (o, b_out), (one_way_i, 0), (one_way_o, b_out))
    assert ["traffic_stalled", "traffic_resumed"] == [e["type"] for e in s.derived("traffic_stalled", "traffic_resumed")]
    stalled, resumed = s.derived("traffic_stalled", "traffic_resumed")
    assert (10.0, 1) == (stalled["at"], stalled["reqid"])
    assert stalled["silent_seconds"] >= 5.0 and stalled["out_bytes_since"] == 5000
    assert 15.0 == resumed["at"]


def test_down_tunnel_absorbs_acquires() -> None:
    s = Side()
    i, o = swan_install(s, 0x100)
    s.at(16)
    s.expire(i, hard=True)
    s.expire(o, hard=True)
    s.at(17)
    s.acquire(1)
    assert s.attached[-1] is True
    s.acquire(5)
    assert s.attached[-1] is False


def test_view_orders_by_urgency() -> None:
    s = Side()
    swan_install(s, 0x100, reqid=1, soft_in=50, hard=60)
    swan_install(s, 0x200, reqid=2, soft_in=10, hard=16)
    from xfrmwatch.tunnels import urgency

    views = sorted(s.model.views(), key=lambda v: urgency(v, s.now))
    assert [2, 1] == [v.reqid for v in views]
    assert (10.0, 16.0) == (views[0].soft_expiry, views[0].hard_expiry)


def test_manual_rotation_to_a_new_reqid_is_a_handover() -> None:
    """The second step of a Cilium-style rotation: new SAs under reqid 2, the out policy's
    template switched to reqid 2, the reqid 1 SAs deleted later: reqid 2 comes up, reqid 1
    ends as a teardown that names its heir; nothing says the rotation failed."""
    s = Side(key_manager=False)
    s.pid = 0
    i1 = s.add(s.sa(0x10, R, L, reqid=1))
    o1 = s.add(s.sa(0x20, L, R, reqid=1))
    out = s.policy("out", reqid=1, index=1)
    s.at(30)
    s.add(s.sa(0x11, R, L, reqid=2))
    s.add(s.sa(0x21, L, R, reqid=2))
    s.policy("out", reqid=2, index=out.index, upd=True)
    s.at(33)
    s.delete(o1)
    s.delete(i1)
    s.at(40)
    assert ["tunnel_up", "tunnel_up", "tunnel_down"] == s.types()
    down = s.derived("tunnel_down")[0]
    assert (1, True, False, "esp/2/192.0.2.1/192.0.2.2") == (
        down["reqid"], down["teardown"], down["rekey_failed"], down["replaced_by"],
    )  # fmt: skip


def test_no_learned_deadline_without_a_key_manager() -> None:
    """Manual keying rotates when its operator pleases: with no key manager listening the
    rekey history promises nothing (no rekey_overdue), and a late deletion is a teardown."""
    s = Side(key_manager=False)
    s.pid = 0
    i, o = s.add(s.sa(0x10, R, L)), s.add(s.sa(0x20, L, R))
    s.at(5)
    i2, o2 = s.add(s.sa(0x11, R, L)), s.add(s.sa(0x21, L, R))
    s.delete(i)
    s.delete(o)
    s.at(60)
    s.delete(i2)
    s.delete(o2)
    s.at(62)
    assert ["tunnel_up", "rekey_completed", "tunnel_down"] == s.types()
    assert (True, False) == (s.derived("tunnel_down")[0]["teardown"], s.derived("tunnel_down")[0]["rekey_failed"])


def test_one_spi_both_ways() -> None:
    """Manual keying often uses one SPI in both directions: still two members, one tunnel;
    deleting one of them is a lone deletion (partial), not a no-op."""
    s = Side(key_manager=False)
    s.pid = 0
    i = s.add(s.sa(0x42, R, L))
    s.add(s.sa(0x42, L, R))
    s.at(3)
    up = s.derived("tunnel_up")[0]
    assert ("0x00000042", "0x00000042") == (up["spi_in"], up["spi_out"])
    s.delete(i)
    s.at(4)
    down = s.derived("tunnel_down")[0]
    assert (True, ["0x00000042"]) == (down["partial"], down["spis"])


def test_two_rekeys_in_a_row_are_two() -> None:
    """Two rekeys 0.5 s apart (strongswan-collision's non-colliding round): the first new pair
    retires its predecessor before the second pair comes: two rekey_completed, no collision."""
    s = Side()
    i, o = swan_install(s, 0x100, soft_in=60, hard=70)
    s.at(15)
    i4, o4 = swan_install(s, 0x104, soft_in=60, hard=70)
    s.delete(o)
    s.at(15.5)
    swan_install(s, 0x105, soft_in=60, hard=70)
    s.delete(o4)
    s.at(20.5)
    s.delete(i)
    s.delete(i4)
    s.at(30)
    done = s.derived("rekey_completed")
    assert [(False, ["0x00000104", "0x00001104"]), (False, ["0x00000105", "0x00001105"])] == [
        (d["collision"], d["new_spis"]) for d in done
    ]
