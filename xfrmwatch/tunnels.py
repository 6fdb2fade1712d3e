"""The tunnel model: one live record per tunnel, owned by the mirror's stage.

A *tunnel* is one IKE CHILD_SA, or one manually keyed SA pair: the SAs of one
``reqid`` and ``proto`` between two outer addresses, through all its
generations.  Its key is the mirror's :data:`~xfrmwatch.mirror.PairKey`
``(reqid, proto, lower address, higher address)``; one model per namespace.

The model is fed every event right after :meth:`Mirror.apply` (same stage, so
it reads the mirror in the state that event produced, never later), and the
traffic counters of a periodic SA dump (:meth:`TunnelModel.counters`).  It
derives, in the vocabulary of :mod:`xfrmwatch.events`:

``tunnel_up``
    the first generation is installed (both directions, or one direction that
    stayed alone for ``settle`` seconds).
``rekey_started``
    the current generation's SA hit its soft limit (time, bytes or packets).
    Only the side whose SA expires first sees it (strongSwan); Libreswan puts
    no lifetime into the kernel at all, so there it never comes.
``rekey_completed``
    a newer generation (same key, new SPIs) replaced the current one; emitted
    ``settle`` seconds after its first SA so that both directions and the SAs
    of a rekey collision are folded into one event.
``rekey_overdue``
    the generation should have been replaced by now: ``overdue_share`` of the
    way from the soft to the hard limit (time limits, or byte/packet limits
    projected at the observed rate), or, without limits in the kernel, an age of
    ``history_factor`` times the tunnel's own learned rekey interval.
``tunnel_down``
    the last generation went away with no replacement, whatever removed it:
    hard EXPIRE, DELSA, a flush, a resync that found it gone, or its out policy
    deleted or switched to a hold template or to block while SAs remain.
    Decided ``grace`` seconds after the first removal, so that a rekey's
    deletions, a teardown's several messages and a break-before-make
    reauthentication are judged as a whole.
``traffic_stalled`` / ``traffic_resumed``
    from the counters: inbound silent for ``stall_after`` seconds while outbound
    keeps sending, on a tunnel that had inbound traffic before.

Who removed a tunnel is judged by its place in the tunnel's life, not by
``nlmsg_pid`` (Libreswan and ``ip`` both send 0): a rekey's deletions touch
only superseded SAs; a *teardown* deletes every SA of the tunnel while no rekey
is due; a deletion that leaves one direction alone (``partial``) or that hits a
tunnel whose rekey was due (``rekey_failed``) is neither.

Time is the caller's ``now`` (trio's clock) and every deadline is returned by
:meth:`TunnelModel.next_deadline`, so the whole model runs on a mock clock.
"""

from __future__ import annotations

import heapq
import math
import statistics
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from . import events as ev
from .mirror import Mirror, PairKey, SAEntry, pair_key, policy_key

Direction = Literal["in", "out"]
#: an SA within its tunnel: (spi, dst); a manual pair may use one SPI both ways
MemberKey = tuple[str, str]
#: how an out policy names a tunnel: by reqid, or (reqid 0, tunnel mode) by its endpoints
LinkKey = tuple[int, str, str, str]  # (reqid, proto, "", "") or (0, proto, lower, higher)

#: a byte or packet limit this large is no limit (Libreswan sets 2^61..2^63)
VOLUME_UNLIMITED = 1 << 50


@dataclass(frozen=True, slots=True)
class TunnelSettings:
    """The model's knobs.  Their valid ranges are stated once, as the msgspec types of the
    command line (``MonitorOptions``) and of the configuration (``TunnelsConfig``)."""

    #: share of the soft->hard span after which a started rekey is overdue
    overdue_share: float = 0.5
    #: without kernel limits: overdue at this multiple of the learned rekey interval
    history_factor: float = 1.5
    #: rekey_completed / lone-direction tunnel_up are decided after this long
    settle: float = 2.0
    #: removals are judged together this long after the first one (tunnel_down latency)
    grace: float = 0.5
    #: inbound silent this long while outbound sends: traffic_stalled
    stall_after: float = 30.0
    #: how long a tunnel that went down stays listed (state "down")
    keep_down: float = 600.0
    #: at most this many down tunnels are remembered (ACQUIREs attach to them)
    max_down: int = 10_000


def _key(sa: ev.SA) -> MemberKey:
    return (sa.spi, sa.dst)


def larval(sa: ev.SA) -> bool:
    """A state with no keys yet: an ACQUIRE's larval state or a reserved SPI."""
    return sa.spi == "0x00000000" or (sa.aead is None and sa.enc is None and sa.auth is None and sa.comp is None)


def _limit(v: int | None) -> int | None:
    return None if v is None or v >= VOLUME_UNLIMITED else v


@dataclass(slots=True)
class _Member:
    """One SA of a tunnel as the model knows it."""

    spi: str
    dst: str
    dir: Direction
    installed: float  # mono
    generation: int
    # counters of the last sample: bytes, packets, when
    bytes: int = 0
    packets: int = 0
    sampled: float | None = None
    rate_bytes: float | None = None  # bytes/s over the last two samples
    rate_packets: float | None = None


@dataclass(slots=True)
class _Rekey:
    """A rekey under way."""

    started: float | None = None  # soft EXPIRE
    soft_spi: str = ""
    basis: ev.DeadlineBasis = "time"
    hard_at: float | None = None
    overdue_at: float | None = None
    first_new: float | None = None
    last_new: float | None = None
    complete_at: float | None = None
    old: dict[MemberKey, Direction] = field(default_factory=dict)
    new: dict[MemberKey, Direction] = field(default_factory=dict)
    initiator: bool | None = None
    collision: bool = False


@dataclass(slots=True)
class _Removal:
    spi: str
    dst: str
    dir: Direction
    reason: ev.DownReason
    nlmsg_pid: int
    process: str | None


@dataclass(slots=True)
class Tunnel:
    """The live record of one tunnel (owned by the model; read it via :meth:`TunnelModel.view`)."""

    key: PairKey
    tunnel_id: str
    src: str  # local outer address (or the lower one)
    dst: str
    mode: str
    state: ev.TunnelState = "establishing"
    members: dict[MemberKey, _Member] = field(default_factory=dict)
    dirs_seen: set[Direction] = field(default_factory=set)
    created: float = 0.0
    up_at: float | None = None
    up_wall: float | None = None
    up_deadline: float | None = None
    gen_started: float = 0.0
    last_rekey_at: float | None = None
    rekeys: int = 0
    #: rekey intervals learned from the second rekey on (both sides' timers aligned by then)
    intervals: deque[float] = field(default_factory=lambda: deque(maxlen=6))
    #: set-up to first rekey: shorter than the real interval on the side that installed late
    first_interval: float | None = None
    #: whether the current generation's SAs carry limits (the kernel will say when it is due)
    limits: bool = False
    last_completed: float | None = None
    rekey: _Rekey | None = None
    overdue: bool = False
    history_at: float | None = None
    # removals under judgement
    break_at: float | None = None
    removals: list[_Removal] = field(default_factory=list)
    policy_loss: ev.DownReason | None = None
    #: the tunnel that took over this one's out policy (a rotation to a new reqid)
    replaced_by: str | None = None
    out_policy: bool = False
    had_out_policy: bool = False
    # traffic
    in_bytes: int = 0
    out_bytes: int = 0
    in_packets: int = 0
    out_packets: int = 0
    in_seen: bool = False
    last_in_change: float | None = None
    last_out_change: float | None = None
    out_bytes_at_in: int = 0
    stalled_at: float | None = None
    # after it went down
    down_at: float | None = None
    down_reason: ev.DownReason | None = None
    acquires: int = 0

    def current(self, d: Direction) -> _Member | None:
        """The newest live SA of one direction."""
        best = None
        for m in self.members.values():
            if m.dir == d and (best is None or (m.generation, m.installed) > (best.generation, best.installed)):
                best = m
        return best

    def spis(self) -> tuple[str | None, str | None]:
        i, o = self.current("in"), self.current("out")
        return (None if i is None else i.spi, None if o is None else o.spi)


class TunnelView(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An immutable snapshot of one tunnel, for the dashboard, metrics and state files."""

    tunnel_id: str
    netns: str
    reqid: int
    proto: str
    src: str
    dst: str
    mode: str
    state: ev.TunnelState
    spi_in: str | None
    spi_out: str | None
    established: float | None  # mono
    last_rekey: float | None  # mono
    rekeys: int
    rekey_interval: float | None  # learned, seconds
    next_rekey: float | None  # mono: soft limit (time, or projected), or learned
    soft_expiry: float | None  # mono
    hard_expiry: float | None  # mono
    deadline_basis: ev.DeadlineBasis | None
    in_bytes: int
    out_bytes: int
    in_packets: int
    out_packets: int
    in_rate: float | None  # bytes/s
    out_rate: float | None
    stalled: bool
    out_policy: bool
    down_reason: ev.DownReason | None = None
    #: the traffic selectors of the out policies that send into the tunnel ("src -> dst")
    selectors: tuple[str, ...] = ()


#: the most telling reason first, when several removals end a tunnel together
_REASON_ORDER: tuple[ev.DownReason, ...] = ("hard_expire", "flushed", "unknown", "deleted")

_Timer = Literal["up", "complete", "overdue", "history", "break", "forget"]


class TunnelModel:
    """Feed it every event with the mirror entry it touched; it returns derived events."""

    def __init__(
        self, mirror: Mirror, settings: TunnelSettings | None = None, *, key_manager: Callable[[], bool] | None = None
    ) -> None:
        self.mirror = mirror
        self.s = settings or TunnelSettings()
        #: whether a key manager (an IKE daemon) listens in the namespace now; rekey history is
        #: a promise only a key manager's timer keeps (manual keying rotates when it pleases)
        self.key_manager: Callable[[], bool] = key_manager or (lambda: True)
        self.tunnels: dict[PairKey, Tunnel] = {}
        #: down tunnels, oldest first (ACQUIREs for them are attached, not reported)
        self._down: dict[PairKey, Tunnel] = {}
        self._timers: list[tuple[float, int, PairKey, _Timer]] = []
        self._seq = 0
        # out policies and tunnels, each by the link keys that can join them
        self._pol_links: dict[tuple[str, int], frozenset[LinkKey]] = {}
        self._pols_by_link: dict[LinkKey, set[tuple[str, int]]] = {}
        self._tuns_by_link: dict[LinkKey, set[PairKey]] = {}
        mirror.tunnel_stats = self.stats

    # --- set-up from a dump ---------------------------------------------------------------

    def load(self, now: float) -> None:
        """Build the tunnels from the mirror after its initial dump: no events."""
        self.tunnels.clear()
        self._pol_links.clear()
        self._pols_by_link.clear()
        self._tuns_by_link.clear()
        self._timers.clear()
        for p in self.mirror.policies.values():
            self._index_policy(policy_key(p), p)
        for entry in self.mirror.sas.values():
            if larval(entry.sa):
                continue
            t = self._tunnel_for(entry, now)
            self._add_member(t, entry)
        for t in self.tunnels.values():
            t.state = "up"
            # established at the latest when its oldest SA was added (the kernel's add time)
            t.up_at = min((m.installed for m in t.members.values()), default=t.created)
            t.gen_started = max((m.installed for m in t.members.values()), default=now)
        for t in self.tunnels.values():
            self._arm_history(t)

    # --- bookkeeping --------------------------------------------------------------------

    def _at(self, when: float, pk: PairKey, what: _Timer) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, pk, what))

    def next_deadline(self) -> float | None:
        while self._timers:
            when, _, pk, what = self._timers[0]
            if self._timer_valid(when, pk, what):
                return when
            heapq.heappop(self._timers)
        return None

    def _timer_valid(self, when: float, pk: PairKey, what: _Timer) -> bool:
        if what == "forget":
            t = self._down.get(pk)
            return t is not None and t.down_at is not None and when == t.down_at + self.s.keep_down
        t = self.tunnels.get(pk)
        if t is None:
            return False
        r = t.rekey
        if what == "up":
            return t.up_deadline == when
        if what == "complete":
            return r is not None and r.complete_at == when
        if what == "overdue":
            return r is not None and r.overdue_at == when and not t.overdue
        if what == "history":
            return t.history_at == when and not t.overdue
        return t.break_at == when  # "break"

    def _common(self, t: Tunnel, now: float, wall: float) -> dict[str, Any]:
        spi_in, spi_out = t.spis()
        reqid, proto, _, _ = t.key
        return {
            **ev.own_fields(self.mirror.netns, now, wall),
            "tunnel_id": t.tunnel_id,
            "reqid": reqid,
            "proto": proto,
            "src": t.src,
            "dst": t.dst,
            "spi_in": spi_in,
            "spi_out": spi_out,
        }

    def _dir(self, t: Tunnel | None, entry: SAEntry) -> Direction:
        if entry.direction in ("in", "out"):
            return entry.direction  # type: ignore[return-value]
        if t is not None:
            return "out" if entry.sa.src == t.src else "in"
        return "out" if entry.sa.src == pair_key(entry.sa)[2] else "in"

    def _tunnel_for(self, entry: SAEntry, now: float) -> Tunnel:
        pk = pair_key(entry.sa)
        t = self.tunnels.get(pk)
        if t is not None:
            return t
        sa = entry.sa
        reqid, proto, a, b = pk
        if entry.direction == "out":
            src, dst = sa.src, sa.dst
        elif entry.direction == "in":
            src, dst = sa.dst, sa.src
        else:
            src, dst = a, b
        t = Tunnel(key=pk, tunnel_id=f"{proto}/{reqid}/{src}/{dst}", src=src, dst=dst, mode=sa.mode, created=now)
        gone = self._down.pop(pk, None)
        if gone is not None:  # the same CHILD_SA back: keep what was learned of it
            t.intervals = gone.intervals
            t.first_interval = gone.first_interval
            t.rekeys = gone.rekeys
        self.tunnels[pk] = t
        for lk in _tunnel_links(pk):
            self._tuns_by_link.setdefault(lk, set()).add(pk)
        t.out_policy = t.had_out_policy = self._served(t)
        return t

    def _add_member(self, t: Tunnel, entry: SAEntry) -> _Member:
        d = self._dir(t, entry)
        m = _Member(spi=entry.sa.spi, dst=entry.sa.dst, dir=d, installed=entry.age_offset,
                    generation=entry.generation, bytes=entry.sa.current.bytes, packets=entry.sa.current.packets)  # fmt: skip
        t.members[_key(entry.sa)] = m
        t.dirs_seen.add(d)
        if not _older_than(m, t):
            t.limits = _has_limits(entry.sa.lifetime)
        return m

    # --- policies -----------------------------------------------------------------------------

    @staticmethod
    def _links(p: ev.Policy, pk: PairKey) -> bool:
        """Whether an allow policy sends traffic into this tunnel (by reqid, or by endpoints)."""
        if p.action != "allow":
            return False
        reqid, proto, a, b = pk
        for tm in p.tmpl:
            if tm.proto != proto:
                continue
            if tm.reqid and tm.reqid == reqid:
                return True
            if not tm.reqid and tm.mode == "tunnel" and sorted((tm.src, tm.dst)) == [a, b]:
                return True
        return False

    def _index_policy(self, k: tuple[str, int], p: ev.Policy | None) -> frozenset[LinkKey]:
        """(Re)index one policy; return the link keys it had before."""
        before = self._pol_links.pop(k, frozenset())
        for lk in before:
            ks = self._pols_by_link.get(lk)
            if ks is not None:
                ks.discard(k)
                if not ks:
                    del self._pols_by_link[lk]
        if p is not None and p.dir == "out":
            now = _policy_links(p)
            if now:
                self._pol_links[k] = now
                for lk in now:
                    self._pols_by_link.setdefault(lk, set()).add(k)
        return before

    def _served(self, t: Tunnel) -> bool:
        """Whether an allow out policy in the mirror sends traffic into ``t``."""
        for lk in _tunnel_links(t.key):
            for k in self._pols_by_link.get(lk, ()):
                p = self.mirror.policies.get(k)
                if p is not None and self._links(p, t.key):
                    return True
        return False

    def _heir(self, t: Tunnel, p: ev.Policy | None) -> Tunnel | None:
        """A live tunnel between the same endpoints that ``p`` (t's former out policy) now serves."""
        if p is None:
            return None
        _, proto, a, b = t.key
        for lk in _policy_links(p):
            for pk in self._tuns_by_link.get(lk, ()):
                other = self.tunnels[pk]
                if other is not t and pk[1:] == (proto, a, b) and other.members and self._links(p, pk):
                    return other
        return None

    def _policy_changed(self, k: tuple[str, int], p: ev.Policy | None, now: float) -> None:
        """A policy was added, updated or removed (``p`` None): a tunnel that lost its
        last out policy while up is judged after the grace time."""
        if p is not None and p.dir != "out" and k not in self._pol_links:
            return
        before = self._index_policy(k, p)
        after = self._pol_links.get(k, frozenset())
        for lk in before | after:
            for pk in self._tuns_by_link.get(lk, ()):
                t = self.tunnels[pk]
                served = self._served(t)
                if served:
                    t.out_policy = t.had_out_policy = True
                    t.policy_loss = None  # served again (reinstalled within the grace time)
                elif t.out_policy:
                    t.out_policy = False
                    heir = self._heir(t, p)
                    if heir is not None:
                        t.replaced_by = heir.tunnel_id  # a rotation to a new reqid: its end is no outage
                    elif t.state != "establishing":
                        t.policy_loss = (
                            "policy_removed" if p is None else "policy_block" if p.action != "allow" else "policy_hold"
                        )
                        self._schedule_break(t, now)

    # --- events ---------------------------------------------------------------------------------

    def observe(self, e: ev.Event, entry: SAEntry | None, now: float, wall: float) -> tuple[list[ev.Event], bool]:
        """Derived events caused by ``e`` (already applied to the mirror), and whether ``e``
        was attached to one (an ACQUIRE for a tunnel that is down: rules should not see it)."""
        out: list[ev.Event] = []
        if isinstance(e, ev.SaEvent):
            if entry is not None and not larval(entry.sa):
                self._sa_added(entry, now, wall, out)
        elif isinstance(e, ev.Expire):
            if e.hard:
                if entry is not None:
                    self._removed(entry, "hard_expire", e, now)
                    self._retired(entry, now, wall, out)
            elif entry is not None and not larval(entry.sa):
                self._soft_expire(entry, e, now, wall, out)
        elif isinstance(e, ev.DelSA):
            if entry is not None:
                self._removed(entry, "deleted", e, now)
                self._retired(entry, now, wall, out)
        elif isinstance(e, ev.FlushSA):
            self._reconcile((pk for pk in list(self.tunnels) if e.proto in ("any", pk[1])), "flushed", e, now)
        elif isinstance(e, ev.PolicyEvent):
            self._policy_changed(policy_key(e.policy), e.policy, now)
        elif isinstance(e, ev.DelPolicy):
            if e.policy is not None:
                self._policy_changed(policy_key(e.policy), None, now)
            else:
                for k in [k for k in self._pol_links if k not in self.mirror.policies]:
                    self._policy_changed(k, None, now)
        elif isinstance(e, ev.PolExpire):
            if e.hard:
                self._policy_changed(policy_key(e.policy), None, now)
        elif isinstance(e, ev.FlushPolicy):
            for k in [k for k in self._pol_links if k[0] == e.ptype]:
                self._policy_changed(k, None, now)
        elif isinstance(e, ev.Resync):
            self._resynced(e, now, wall, out)
        elif isinstance(e, ev.AcquireEvent):
            return out, self._attach_acquire(e)
        return out, False

    def _sa_added(self, entry: SAEntry, now: float, wall: float, out: list[ev.Event]) -> None:
        sa = entry.sa
        pk = pair_key(sa)
        t = self.tunnels.get(pk)
        if t is not None and _key(sa) in t.members:
            return  # an update of an SA we know (counters, a filled-in reservation)
        fresh = t is None
        t = self._tunnel_for(entry, now)
        d = self._dir(t, entry)
        older = [m for m in t.members.values() if m.dir == d]
        m = self._add_member(t, entry)
        m.installed = now
        if t.break_at is not None and t.removals and not older:
            # what was removed comes back under the same key within the grace time
            # (break-before-make reauthentication): a replacement, judged as a rekey
            self._begin_rekey(t, now, {(r.spi, r.dst): r.dir for r in t.removals})
        if fresh or t.state in ("establishing", "down"):  # "down": one direction was left
            if {"in", "out"} <= {o.dir for o in t.members.values()}:
                self._up(t, now, wall, out)
            elif t.up_deadline is None:
                t.up_deadline = now + self.s.settle
                self._at(t.up_deadline, pk, "up")
            return
        if not older and t.rekey is None:
            return  # a direction that was missing arrives
        r = self._begin_rekey(t, now, {k: o.dir for k, o in t.members.items() if o is not m})
        if r.first_new is None:
            r.first_new = now
            r.complete_at = now + self.s.settle
            self._at(r.complete_at, pk, "complete")
            if r.initiator is None:
                r.initiator = self._responder_evident(t, r, now)
        if any(v == d for v in r.new.values()):
            r.collision = True
        r.new[_key(sa)] = d
        r.last_new = now
        r.old.pop(_key(sa), None)
        if r.old and not (r.old.keys() & t.members.keys()) and set(r.old.values()) <= set(r.new.values()):
            # every old SA was removed before its replacement came (break-before-make
            # reauthentication) and the new generation is whole: done
            self._complete(t, now, wall, out)
        t.state = "rekeying" if not t.overdue else t.state

    def _begin_rekey(self, t: Tunnel, now: float, old: dict[MemberKey, Direction]) -> _Rekey:
        r = t.rekey
        if r is None:
            r = t.rekey = _Rekey()
        r.old.update((k, d) for k, d in old.items() if k not in r.new)
        return r

    def _responder_evident(self, t: Tunnel, r: _Rekey, now: float) -> bool | None:
        """False when the old SAs had time limits whose soft deadline is clearly ahead:
        the kernel did not ask this side to rekey.  None when it cannot tell."""
        if r.started is not None:
            return True
        soft = [
            e.soft_deadline
            for k in r.old
            if (e := self._entry(t, k)) is not None and e.soft_deadline is not None
        ]
        if soft and min(soft) > now + 1.0:
            return False
        return None

    def _entry(self, t: Tunnel, k: MemberKey) -> SAEntry | None:
        for e in self.mirror.pair_sas(t.key):
            if _key(e.sa) == k:
                return e
        return None

    def _up(self, t: Tunnel, now: float, wall: float, out: list[ev.Event]) -> None:
        t.state = "up"
        t.up_at = t.gen_started = now
        t.up_wall = wall
        t.up_deadline = None
        out.append(ev.TunnelUp(**self._common(t, now, wall), mode=t.mode))
        self._arm_history(t)

    def _soft_expire(self, entry: SAEntry, e: ev.Expire, now: float, wall: float, out: list[ev.Event]) -> None:
        pk = pair_key(entry.sa)
        t = self.tunnels.get(pk)
        if t is None:
            t = self._tunnel_for(entry, now)
            self._add_member(t, entry)
            t.state = "up"
        m = t.members.get(_key(entry.sa))
        if m is None:
            m = self._add_member(t, entry)
        newer = [o for o in t.members.values() if o.dir == m.dir and o.generation > m.generation]
        if newer:
            return  # a superseded generation soft-expiring
        r = t.rekey
        if r is not None and (r.started is not None or r.first_new is not None):
            return  # the other direction of the same generation, or already being replaced
        r = self._begin_rekey(t, now, {k: o.dir for k, o in t.members.items()})
        r.started = now
        r.initiator = True
        r.soft_spi = m.spi
        sa = e.sa
        cur, lft = sa.current, sa.lifetime
        m.bytes, m.packets = max(m.bytes, cur.bytes), max(m.packets, cur.packets)
        basis: ev.DeadlineBasis = "time"
        hard_at = entry.hard_deadline
        soft_b, soft_p = _limit(lft.soft_bytes), _limit(lft.soft_packets)
        if soft_b is not None and cur.bytes >= soft_b:
            basis = "bytes"
            hard_at = self._project(m, cur.bytes, _limit(lft.hard_bytes), entry, now, packets=False)
        elif soft_p is not None and cur.packets >= soft_p:
            basis = "packets"
            hard_at = self._project(m, cur.packets, _limit(lft.hard_packets), entry, now, packets=True)
        r.basis, r.hard_at = basis, hard_at
        if hard_at is not None and hard_at > now:
            r.overdue_at = now + self.s.overdue_share * (hard_at - now)
            self._at(r.overdue_at, pk, "overdue")
        t.state = "rekeying"
        out.append(
            ev.RekeyStarted(
                **self._common(t, now, wall),
                spi=m.spi,
                basis=basis,
                seconds_to_hard=None if hard_at is None else round(hard_at - now, 3),
            )
        )

    @staticmethod
    def _project(m: _Member, used: int, hard: int | None, entry: SAEntry, now: float, *, packets: bool) -> float | None:
        """When a volume limit will be reached at the observed rate (None if never)."""
        if hard is None:
            return None
        rate = m.rate_packets if packets else m.rate_bytes
        if rate is None:
            age = entry.age(now)
            rate = used / age if age > 0.5 else None
        if not rate:
            return None
        return now + max(0.0, hard - used) / rate

    # --- removals --------------------------------------------------------------------------------

    def _removed(self, entry: SAEntry, reason: ev.DownReason, e: ev.Event, now: float) -> None:
        pk = pair_key(entry.sa)
        t = self.tunnels.get(pk)
        if t is None:
            return
        k = _key(entry.sa)
        m = t.members.pop(k, None)
        if m is None:
            return
        if t.rekey is not None:
            t.rekey.new.pop(k, None)
        t.removals.append(_Removal(m.spi, m.dst, m.dir, reason, e.nlmsg_pid, e.process))
        self._schedule_break(t, now)

    def _retired(self, entry: SAEntry, now: float, wall: float, out: list[ev.Event]) -> None:
        """An SA of the superseded generation went away.  If the new generation covers every
        direction the old one had, the daemon has finished this rekey: complete it now (a
        second pair that arrives later is the next rekey, not a collision).  strongSwan
        retires the old outbound SA right after the new pair; Libreswan about 1 s later."""
        t = self.tunnels.get(pair_key(entry.sa))
        r = None if t is None else t.rekey
        if t is None or r is None or r.first_new is None or _key(entry.sa) not in r.old:
            return
        if set(r.old.values()) <= set(r.new.values()):
            self._complete(t, now, wall, out)

    def _reconcile(self, keys: Iterable[PairKey], reason: ev.DownReason, e: ev.Event, now: float) -> None:
        """Members the mirror no longer has were removed (a flush, or found at a resync)."""
        for pk in keys:
            t = self.tunnels.get(pk)
            if t is None:
                continue
            live = {_key(s.sa) for s in self.mirror.pair_sas(pk)}
            for k in [k for k in t.members if k not in live]:
                m = t.members.pop(k)
                if t.rekey is not None:
                    t.rekey.new.pop(k, None)
                t.removals.append(_Removal(m.spi, m.dst, m.dir, reason, e.nlmsg_pid, e.process))
            if t.removals:
                self._schedule_break(t, now)

    def _schedule_break(self, t: Tunnel, now: float) -> None:
        if t.break_at is None:
            t.break_at = now + self.s.grace
            self._at(t.break_at, t.key, "break")

    def _judge(self, t: Tunnel, now: float, wall: float, out: list[ev.Event]) -> None:
        """The grace time after a removal is over: is the tunnel down?"""
        t.break_at = None
        removals, t.removals = t.removals, []
        live_dirs = {m.dir for m in t.members.values()}
        if not t.members:
            partial = False
        elif t.dirs_seen - live_dirs and any(r.dir not in live_dirs for r in removals):
            partial = True
        elif t.policy_loss is not None and not t.out_policy:
            r = t.rekey
            settled = max(
                r.complete_at if r is not None and r.complete_at is not None else -math.inf,
                t.last_completed + self.s.settle if t.last_completed is not None else -math.inf,
            )
            if now < settled:
                # a new generation is (being) installed (break-before-make reauthentication):
                # its policies may still come; judge when it has settled
                t.removals = removals + t.removals
                t.break_at = settled
                self._at(t.break_at, t.key, "break")
                return
            partial = False
        else:
            return  # superseded SAs deleted (a rekey), or a policy replaced: still up
        reason: ev.DownReason
        if t.members and not partial:
            reason = t.policy_loss or "policy_removed"
        else:
            why = {r.reason for r in removals if not partial or r.dir not in live_dirs}
            reason = next((x for x in _REASON_ORDER if x in why), "deleted")
        rekey_failed = t.replaced_by is None and self._rekey_was_due(t, now)
        teardown = reason == "deleted" and not t.members and not rekey_failed
        by = next((r for r in removals if r.nlmsg_pid), removals[0] if removals else None)
        common = self._common(t, now, wall)
        if by is not None:
            common["nlmsg_pid"] = by.nlmsg_pid
            common["process"] = by.process
        gone = [r.spi for r in removals]
        age = None if t.up_at is None else round(now - t.up_at, 3)
        out.append(
            ev.TunnelDown(
                **common, reason=reason, teardown=teardown, rekey_failed=rekey_failed,
                partial=partial, spis=gone, age_seconds=age, rekeys=t.rekeys, acquires=t.acquires,
                replaced_by=t.replaced_by,
            )
        )  # fmt: skip
        if partial:
            t.state = "down"
            t.down_reason = reason
        else:
            self._went_down(t, reason, now)

    def _rekey_was_due(self, t: Tunnel, now: float) -> bool:
        r = t.rekey
        if t.overdue or t.stalled_at is not None:
            return True
        if r is not None and r.started is not None and r.first_new is None:
            return True
        if not t.limits and self.key_manager():
            if t.intervals:
                return now - t.gen_started > min(t.intervals)
            if t.first_interval is not None:
                return now - t.gen_started > self.s.history_factor * t.first_interval
        return False

    def _went_down(self, t: Tunnel, reason: ev.DownReason, now: float) -> None:
        del self.tunnels[t.key]
        for lk in _tunnel_links(t.key):
            peers = self._tuns_by_link.get(lk)
            if peers is not None:
                peers.discard(t.key)
                if not peers:
                    del self._tuns_by_link[lk]
        t.state = "down"
        t.down_at = now
        t.down_reason = reason
        t.rekey = None
        t.members.clear()
        self._down.pop(t.key, None)
        self._down[t.key] = t
        self._at(now + self.s.keep_down, t.key, "forget")
        while len(self._down) > self.s.max_down:
            del self._down[next(iter(self._down))]

    def _resynced(self, e: ev.Resync, now: float, wall: float, out: list[ev.Event]) -> None:
        """After an overrun the mirror was rebuilt: tunnels whose SAs vanished ended while
        events were lost; SAs of unknown tunnels are new tunnels."""
        self._reconcile(list(self.tunnels), "unknown", e, now)
        for entry in self.mirror.sas.values():
            if larval(entry.sa):
                continue
            pk = pair_key(entry.sa)
            t = self.tunnels.get(pk)
            if t is None or _key(entry.sa) not in t.members:
                self._sa_added(entry, now, wall, out)
        self._pol_links.clear()
        self._pols_by_link.clear()
        for p in self.mirror.policies.values():
            self._index_policy(policy_key(p), p)
        for t in self.tunnels.values():
            served = self._served(t)
            if t.out_policy and not served:
                t.policy_loss = "policy_removed"
                self._schedule_break(t, now)
            t.out_policy = served
            t.had_out_policy |= served

    def _attach_acquire(self, e: ev.AcquireEvent) -> bool:
        for tm in e.policy.tmpl:
            a, b = sorted((tm.src, tm.dst))
            pk = (tm.reqid, tm.proto, a, b)
            t = self._down.get(pk)
            if t is None and (t := self.tunnels.get(pk)) is not None and t.break_at is None:
                t = None  # a live tunnel: not yet judged down
            if t is not None:
                t.acquires += 1
                return True
        return False

    def acquires_attached(self, pk: PairKey) -> int:
        t = self._down.get(pk) or self.tunnels.get(pk)
        return 0 if t is None else t.acquires

    # --- history -------------------------------------------------------------------------------

    def _arm_history(self, t: Tunnel) -> None:
        if not t.intervals or t.limits or not self.key_manager():
            t.history_at = None
            return
        t.history_at = t.gen_started + self.s.history_factor * statistics.median(t.intervals)
        self._at(t.history_at, t.key, "history")

    # --- timers ---------------------------------------------------------------------------------

    def on_time(self, now: float, wall: float) -> list[ev.Event]:
        """Fire every deadline that has passed."""
        out: list[ev.Event] = []
        while self._timers and self._timers[0][0] <= now:
            when, _, pk, what = heapq.heappop(self._timers)
            if not self._timer_valid(when, pk, what):
                continue
            if what == "forget":
                self._down.pop(pk, None)
                continue
            t = self.tunnels[pk]
            if what == "up":
                self._up(t, now, wall, out)
            elif what == "complete":
                self._complete(t, now, wall, out)
            elif what == "overdue":
                self._overdue_by_limit(t, now, wall, out)
            elif what == "history":
                self._overdue_by_history(t, now, wall, out)
            else:
                self._judge(t, now, wall, out)
        return out

    def _complete(self, t: Tunnel, now: float, wall: float, out: list[ev.Event]) -> None:
        r = t.rekey
        assert r is not None and r.first_new is not None
        t.rekey = None
        if not r.new:
            return  # the new SAs went away again before settling: judged as removals
        interval = max(0.0, r.first_new - t.gen_started)
        if t.rekeys == 0:
            t.first_interval = interval
        else:
            t.intervals.append(interval)
        t.gen_started = r.first_new
        t.rekeys += 1
        t.last_rekey_at = now
        t.last_completed = now
        t.overdue = False
        t.state = "up"
        begin = r.started if r.started is not None else r.first_new
        end = r.last_new if r.last_new is not None else r.first_new
        out.append(
            ev.RekeyCompleted(
                **self._common(t, now, wall),
                old_spis=sorted(spi for spi, _ in r.old),
                new_spis=sorted(spi for spi, _ in r.new),
                initiator=r.initiator,
                duration_seconds=round(max(0.0, end - begin), 6),
                collision=r.collision,
                rekeys=t.rekeys,
            )
        )
        self._arm_history(t)

    def _overdue_by_limit(self, t: Tunnel, now: float, wall: float, out: list[ev.Event]) -> None:
        r = t.rekey
        assert r is not None
        if r.first_new is not None:
            return
        t.overdue = True
        t.state = "overdue"
        out.append(
            ev.RekeyOverdue(
                **self._common(t, now, wall),
                spi=r.soft_spi,
                basis=r.basis,
                seconds_since_soft=None if r.started is None else round(now - r.started, 3),
                seconds_to_hard=None if r.hard_at is None else round(r.hard_at - now, 3),
            )
        )

    def _overdue_by_history(self, t: Tunnel, now: float, wall: float, out: list[ev.Event]) -> None:
        if t.rekey is not None and t.rekey.first_new is not None:
            return
        t.overdue = True
        t.state = "overdue"
        spi_in, spi_out = t.spis()
        out.append(
            ev.RekeyOverdue(
                **self._common(t, now, wall),
                spi=spi_out or spi_in or "",
                basis="history",
                expected_seconds=round(statistics.median(t.intervals), 3),
            )
        )

    # --- traffic --------------------------------------------------------------------------------

    def counters(self, sas: Iterable[ev.SA], now: float, wall: float) -> list[ev.Event]:
        """Take a sample of every SA's counters (a GETSA dump): rates, and inbound silence."""
        out: list[ev.Event] = []
        touched: set[PairKey] = set()
        for sa in sas:
            t = self.tunnels.get(pair_key(sa))
            m = None if t is None else t.members.get(_key(sa))
            if t is None or m is None:
                continue
            db, dp = max(0, sa.current.bytes - m.bytes), max(0, sa.current.packets - m.packets)
            if m.sampled is not None and now > m.sampled:
                m.rate_bytes = db / (now - m.sampled)
                m.rate_packets = dp / (now - m.sampled)
            m.bytes, m.packets, m.sampled = sa.current.bytes, sa.current.packets, now
            if m.dir == "in":
                t.in_bytes += db
                t.in_packets += dp
                if db:
                    t.in_seen = True
                    t.last_in_change = now
            else:
                t.out_bytes += db
                t.out_packets += dp
                if db:
                    t.last_out_change = now
            touched.add(t.key)
        for pk in touched:
            t = self.tunnels[pk]
            if t.last_in_change == now:
                t.out_bytes_at_in = t.out_bytes
            if t.stalled_at is not None:
                if t.last_in_change is not None and t.last_in_change >= t.stalled_at:
                    silent = t.last_in_change - t.stalled_at + self.s.stall_after
                    t.stalled_at = None
                    out.append(ev.TrafficResumed(**self._common(t, now, wall), silent_seconds=round(silent, 3)))
                continue
            if (
                t.in_seen
                and t.last_in_change is not None
                and t.last_out_change == now
                and now - t.last_in_change >= self.s.stall_after
            ):
                t.stalled_at = now
                out.append(
                    ev.TrafficStalled(
                        **self._common(t, now, wall),
                        silent_seconds=round(now - t.last_in_change, 3),
                        out_bytes_since=t.out_bytes - t.out_bytes_at_in,
                    )
                )
        return out

    # --- views -----------------------------------------------------------------------------------

    def view(self, t: Tunnel) -> TunnelView:
        spi_in, spi_out = t.spis()
        reqid, proto, _, _ = t.key
        soft = hard = nxt = None
        basis: ev.DeadlineBasis | None = None
        entries = {_key(e.sa): e for e in self.mirror.pair_sas(t.key)}
        cur = [entries[(m.spi, m.dst)] for m in (t.current("in"), t.current("out"))
               if m is not None and (m.spi, m.dst) in entries]  # fmt: skip
        softs = [e.soft_deadline for e in cur if e.soft_deadline is not None]
        hards = [e.hard_deadline for e in cur if e.hard_deadline is not None]
        if softs or hards:
            basis = "time"
            soft = min(softs) if softs else None
            hard = min(hards) if hards else None
            nxt = soft
        if t.rekey is not None and t.rekey.basis != "time" and t.rekey.hard_at is not None:
            basis, hard = t.rekey.basis, t.rekey.hard_at
        elif nxt is None and (t.intervals or t.first_interval is not None):
            basis, nxt = "history", t.gen_started + _interval(t)
        rates = [(m.dir, m.rate_bytes) for m in t.members.values() if m.rate_bytes is not None]
        return TunnelView(
            tunnel_id=t.tunnel_id, netns=self.mirror.netns, reqid=reqid, proto=proto, src=t.src, dst=t.dst,
            mode=t.mode, state=t.state, spi_in=spi_in, spi_out=spi_out, established=t.up_at,
            last_rekey=t.last_rekey_at, rekeys=t.rekeys,
            rekey_interval=_interval(t) if t.intervals or t.first_interval is not None else None,
            next_rekey=nxt, soft_expiry=soft, hard_expiry=hard, deadline_basis=basis,
            in_bytes=t.in_bytes, out_bytes=t.out_bytes, in_packets=t.in_packets, out_packets=t.out_packets,
            in_rate=sum(r for d, r in rates if d == "in") if any(d == "in" for d, _ in rates) else None,
            out_rate=sum(r for d, r in rates if d == "out") if any(d == "out" for d, _ in rates) else None,
            stalled=t.stalled_at is not None, out_policy=t.out_policy, down_reason=t.down_reason,
            selectors=self._selectors(t),
        )  # fmt: skip

    def _selectors(self, t: Tunnel) -> tuple[str, ...]:
        out: list[str] = []
        for lk in _tunnel_links(t.key):
            for k in self._pols_by_link.get(lk, ()):
                p = self.mirror.policies.get(k)
                if p is not None and self._links(p, t.key):
                    sel = p.sel
                    text = f"{sel.src} -> {sel.dst}" + ("" if sel.proto == "any" else f" {sel.proto}")
                    if text not in out:
                        out.append(text)
        return tuple(sorted(out))

    def find(self, pk: PairKey) -> Tunnel | None:
        """The tunnel with this key, live or recently down."""
        return self.tunnels.get(pk) or self._down.get(pk)

    def size(self) -> int:
        """How many tunnels :meth:`tunnel_keys` lists."""
        return len(self.tunnels) + len(self._down)

    def stats(self) -> dict[str, int]:
        """How much the model holds (a long run must not see it grow with the rekeys): live
        tunnels, recently down ones, the SAs they track, deadlines queued (stale ones included)."""
        return {
            "live": len(self.tunnels),
            "down": len(self._down),
            "sas": sum(len(t.members) for t in self.tunnels.values()),
            "timers": len(self._timers),
        }

    def tunnel_keys(self) -> list[PairKey]:
        """Every tunnel's key: the live ones, then those that went down recently."""
        return [*self.tunnels, *self._down]

    def views(self, *, include_down: bool = True) -> list[TunnelView]:
        """Every tunnel (and, by default, those that went down recently)."""
        live = [self.view(t) for t in self.tunnels.values()]
        if include_down:
            live += [self.view(t) for t in self._down.values()]
        return live


def _interval(t: Tunnel) -> float:
    """The tunnel's learned rekey interval (the first one only while no other is known)."""
    return statistics.median(t.intervals) if t.intervals else (t.first_interval or 0.0)


def _has_limits(lft: ev.Lifetime) -> bool:
    """Whether an SA has a limit the kernel will announce (EXPIRE); volume limits near
    2^61..2^63 (Libreswan's) are none."""
    return any(
        v is not None
        for v in (lft.soft_add_seconds, lft.hard_add_seconds, lft.soft_use_seconds, lft.hard_use_seconds,
                  _limit(lft.soft_bytes), _limit(lft.hard_bytes), _limit(lft.soft_packets), _limit(lft.hard_packets))
    )  # fmt: skip


def _older_than(m: _Member, t: Tunnel) -> bool:
    """Whether another member of ``t`` in m's direction is newer than m."""
    return any(o is not m and o.dir == m.dir and o.generation > m.generation for o in t.members.values())


def _tunnel_links(pk: PairKey) -> tuple[LinkKey, ...]:
    reqid, proto, a, b = pk
    by_ends: LinkKey = (0, proto, a, b)
    return ((reqid, proto, "", ""), by_ends) if reqid else (by_ends,)


def _policy_links(p: ev.Policy) -> frozenset[LinkKey]:
    out: set[LinkKey] = set()
    for tm in p.tmpl:
        if tm.reqid:
            out.add((tm.reqid, tm.proto, "", ""))
        elif tm.mode == "tunnel":
            a, b = sorted((tm.src, tm.dst))
            out.add((0, tm.proto, a, b))
    return frozenset(out)


#: how urgent each state is, most urgent first
STATE_RANK: dict[str, int] = {"down": 0, "overdue": 1, "rekeying": 2, "establishing": 3, "up": 4}


def next_deadline(v: TunnelView) -> float:
    """The soonest of the view's next rekey and hard expiry (trio's clock); inf if none."""
    return min((d for d in (v.next_rekey, v.hard_expiry) if d is not None), default=math.inf)


def urgency_key(v: TunnelView) -> tuple[int, float]:
    """Sort key that does not depend on the time: down first, then overdue or stalled (inbound
    silent: a dead peer), then rekeying, then the soonest deadline."""
    rank = STATE_RANK[v.state]
    if v.stalled:
        rank = min(rank, STATE_RANK["overdue"])
    return rank, next_deadline(v)


def urgency(v: TunnelView, now: float) -> float:
    """Sort key: down first, then overdue, then the soonest deadline."""
    rank, deadline = urgency_key(v)
    return rank * 1e12 + (deadline - now if deadline != math.inf else 1e11)
