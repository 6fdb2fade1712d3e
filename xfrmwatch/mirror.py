"""Stage 2 of the pipeline: an exact mirror of one namespace's SAD and SPD.

Built from a dump, then kept current from events (NEWSA/UPDSA/DELSA, hard
EXPIRE as the deletion, POLEXPIRE hard, NEW/UPD/DELPOLICY, flushes, default
policy).  After a netlink overrun the mirror is rebuilt from a fresh dump and
the differences are reported (:meth:`Mirror.reconcile`).

Times: every entry records ``mono`` (trio's clock) when it was first seen, and
its soft/hard deadlines on that clock, computed from the kernel's add time and
the lifetimes (age at the event = event wall time - add time).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from . import events as ev
from .timestamps import seconds

#: An SA is identified by (dst, spi, proto, mark value, mark mask).
SAKey = tuple[str, str, str, int, int]
#: A policy by (ptype, index); index is unique per namespace and encodes dir.
PolicyKey = tuple[str, int]
#: SAs of one IKE CHILD_SA pair: (reqid, proto, lower endpoint, higher endpoint).
PairKey = tuple[int, str, str, str]


def sa_key(sa: ev.SA) -> SAKey:
    m = sa.mark
    return (sa.dst, sa.spi, sa.proto, m.value if m else 0, m.mask if m else 0)


def sa_id_key(sa_id: ev.SaId, mark: ev.Mark | None) -> SAKey:
    return (sa_id.dst, sa_id.spi, sa_id.proto, mark.value if mark else 0, mark.mask if mark else 0)


def pair_key(sa: ev.SA) -> PairKey:
    a, b = sorted((sa.src, sa.dst))
    return (sa.reqid, sa.proto, a, b)


def policy_key(p: ev.Policy) -> PolicyKey:
    return (p.ptype, p.index)


_epochs: dict[str, float | None] = {}


def _epoch(iso: str | None) -> float | None:
    """UNIX time of an ISO 8601 string (remembered: add times repeat, within a second)."""
    if not iso:
        return None
    try:
        return _epochs[iso]
    except KeyError:
        pass
    t = seconds(iso)
    if len(_epochs) > 4096:
        _epochs.clear()
    _epochs[iso] = t
    return t


@dataclass(slots=True)
class SAEntry:
    """One SA as the mirror knows it."""

    sa: ev.SA
    first_seen: float  # mono
    age_offset: float  # mono time of the kernel's add_time
    generation: int
    soft_expired: float | None = None  # mono of the soft EXPIRE
    direction: str = "unknown"  # "in", "out" or "unknown" (relative to local addresses)

    @property
    def soft_deadline(self) -> float | None:
        t = self.sa.lifetime.soft_add_seconds
        return None if t is None else self.age_offset + t

    @property
    def hard_deadline(self) -> float | None:
        t = self.sa.lifetime.hard_add_seconds
        return None if t is None else self.age_offset + t

    def age(self, now: float) -> float:
        return now - self.age_offset


@dataclass
class Mirror:
    """The SAD and SPD of one namespace."""

    netns: str = ""
    sas: dict[SAKey, SAEntry] = field(default_factory=dict)
    policies: dict[PolicyKey, ev.Policy] = field(default_factory=dict)
    default: tuple[str, str, str] | None = None  # in, fwd, out
    local_addrs: frozenset[str] = frozenset()
    #: True while the mirror is known to equal the kernel (as of the events applied): false
    #: before the first dump, and from an overrun until a resync succeeded
    synced: bool = False
    #: the size of the tunnel model that reads this mirror (set by the model), for the state file
    tunnel_stats: Callable[[], dict[str, int]] | None = field(default=None, repr=False, compare=False)
    _generations: dict[tuple[int, str, str, str], int] = field(default_factory=dict)
    _pairs: dict[PairKey, dict[SAKey, SAEntry]] = field(default_factory=dict)

    # --- the SA table and its index by CHILD_SA pair ------------------------------

    def _put(self, k: SAKey, entry: SAEntry) -> None:
        old = self.sas.get(k)
        if old is not None and old is not entry:
            self._unindex(k, old)
        self.sas[k] = entry
        self._pairs.setdefault(pair_key(entry.sa), {})[k] = entry

    def _pop(self, k: SAKey) -> SAEntry | None:
        entry = self.sas.pop(k, None)
        if entry is not None:
            self._unindex(k, entry)
        return entry

    def _unindex(self, k: SAKey, entry: SAEntry) -> None:
        pk = pair_key(entry.sa)
        members = self._pairs.get(pk)
        if members is not None:
            members.pop(k, None)
            if not members:
                del self._pairs[pk]
        gkey = (entry.sa.reqid, entry.sa.proto, entry.sa.src, entry.sa.dst)
        if not any(
            (s.sa.src, s.sa.dst) == (entry.sa.src, entry.sa.dst) for s in (members or {}).values()
        ):
            self._generations.pop(gkey, None)  # no SA of that reqid and direction is left

    def _reindex(self) -> None:
        self._pairs = {}
        for k, entry in self.sas.items():
            self._pairs.setdefault(pair_key(entry.sa), {})[k] = entry

    # --- building ------------------------------------------------------------

    def _direction(self, sa: ev.SA) -> str:
        if sa.dir is not None:
            return sa.dir
        if sa.dst in self.local_addrs:
            return "in"
        if sa.src in self.local_addrs:
            return "out"
        return "unknown"

    def _entry(
        self, sa: ev.SA, mono: float, wall: float | None, previous: SAEntry | None, fresh: bool = False
    ) -> SAEntry:
        added = _epoch(sa.current.add_time)
        age = 0.0 if added is None or wall is None else max(0.0, wall - added)
        if fresh and age < 2.0:
            # Announced as it was added: our clock is more precise than the
            # kernel's add_time (whole seconds).
            age = 0.0
        if previous is not None and previous.sa.reqid == sa.reqid:
            # UPDSA of a known SA: keep its identity, clock and soft-expiry mark
            # (a reserved SPI filled in with a reqid is a new SA, with a new generation)
            previous.sa = sa
            previous.direction = self._direction(sa)
            return previous
        gkey = (sa.reqid, sa.proto, sa.src, sa.dst)
        gen = self._generations.get(gkey, 0) + 1
        self._generations[gkey] = gen
        return SAEntry(
            sa=sa, first_seen=mono, age_offset=mono - age, generation=gen, direction=self._direction(sa)
        )

    def load(
        self,
        sas: Iterable[ev.SA],
        policies: Iterable[ev.Policy],
        default: tuple[str, str, str] | None,
        mono: float,
        wall: float,
    ) -> None:
        """Replace the contents with a dump."""
        old = self.sas
        self.sas = {}
        self._generations = {}
        # oldest first, so generations within a reqid follow the kernel's add times
        for sa in sorted(sas, key=lambda s: _epoch(s.current.add_time) or 0.0):
            k = sa_key(sa)
            self.sas[k] = self._entry(sa, mono, wall, old.get(k))
        self._reindex()
        self.policies = {policy_key(p): p for p in policies}
        self.default = default

    # --- applying events --------------------------------------------------------

    def apply(self, e: ev.Event) -> SAEntry | None:
        """Apply one event; return the SA entry it removed or touched, if any."""
        handler = _handler(type(e))
        return None if handler is None else handler(self, e)

    def _sa_event(self, e: ev.SaEvent) -> SAEntry | None:
        k = sa_key(e.sa)
        entry = self._entry(e.sa, e.mono, _epoch(e.time), self.sas.get(k), fresh=True)
        self._put(k, entry)
        return entry

    def _expire(self, e: ev.Expire) -> SAEntry | None:
        k = sa_key(e.sa)
        if e.hard:
            return self._pop(k)
        known = self.sas.get(k)
        if known is None:
            known = self._entry(e.sa, e.mono, _epoch(e.time), None)
            self._put(k, known)
        else:
            # EXPIRE carries no algorithm attributes: keep what NEWSA/UPDSA said,
            # take the fresher counters
            known.sa = msgspec.structs.replace(known.sa, current=e.sa.current, stats=e.sa.stats)
        if known.soft_expired is None:
            known.soft_expired = e.mono
        return known

    def _delsa(self, e: ev.DelSA) -> SAEntry | None:
        mark = e.sa.mark if e.sa is not None else None
        return self._pop(sa_id_key(e.id, mark))

    def _flushsa(self, e: ev.FlushSA) -> None:
        for k, v in list(self.sas.items()):
            if e.proto == "any" or v.sa.proto == e.proto:
                self._pop(k)

    def _policy_event(self, e: ev.PolicyEvent) -> None:
        self.policies[policy_key(e.policy)] = e.policy

    def _delpolicy(self, e: ev.DelPolicy) -> None:
        if e.policy is not None:
            self.policies.pop(policy_key(e.policy), None)
        else:
            self._drop_policy_by_id(e.policy_id)

    def _polexpire(self, e: ev.PolExpire) -> None:
        if e.hard:
            self.policies.pop(policy_key(e.policy), None)

    def _flushpolicy(self, e: ev.FlushPolicy) -> None:
        self.policies = {k: p for k, p in self.policies.items() if p.ptype != e.ptype}

    def _default_policy(self, e: ev.DefaultPolicy) -> None:
        self.default = (e.in_, e.fwd, e.out)

    def _drop_policy_by_id(self, pid: ev.PolicyId) -> None:
        for k, p in list(self.policies.items()):
            if (pid.index and p.index == pid.index) or (
                not pid.index and p.dir == pid.dir and p.sel == pid.sel
            ):
                del self.policies[k]

    # --- queries ------------------------------------------------------------------

    def pair_sas(self, pk: PairKey) -> list[SAEntry]:
        return list(self._pairs.get(pk, {}).values())

    def replacement(self, entry: SAEntry) -> SAEntry | None:
        """A live, newer SA for the same reqid, protocol and direction, if any."""
        for s in self._pairs.get(pair_key(entry.sa), {}).values():
            sa = s.sa
            if (
                s is not entry
                and sa.reqid == entry.sa.reqid
                and sa.proto == entry.sa.proto
                and sa.src == entry.sa.src
                and sa.dst == entry.sa.dst
                and sa.spi != entry.sa.spi
                and s.generation > entry.generation
            ):
                return s
        return None

    def as_dump(self) -> dict[str, object]:
        """The mirror as plain data: the shape of `xfrmwatch dump --format json`, plus ``synced``
        (false from an overrun until the resync that repaired it) and, with a tunnel model,
        ``tunnels`` (its size: :meth:`TunnelModel.stats`)."""
        out: dict[str, object] = {
            "netns": self.netns,
            "sa": [s.sa for s in self.sas.values()],
            "policy": list(self.policies.values()),
            "synced": self.synced,
        }
        if self.tunnel_stats is not None:
            out["tunnels"] = self.tunnel_stats()
        return out

    def differences(self, sas: Iterable[ev.SA], policies: Iterable[ev.Policy]) -> dict[str, list[str]]:
        """What a dump has that the mirror lacks, and the reverse (identities only)."""
        dump_sa = {sa_key(s) for s in sas}
        dump_pol = {policy_key(p) for p in policies}

        def fmt_sa(k: SAKey) -> str:
            return f"{k[2]} spi {k[1]} dst {k[0]}"

        def fmt_pol(k: PolicyKey) -> str:
            return f"policy index {k[1]} ({k[0]})"
        return {
            "missing": sorted([fmt_sa(k) for k in dump_sa - self.sas.keys()])
            + sorted([fmt_pol(k) for k in dump_pol - self.policies.keys()]),
            "stale": sorted([fmt_sa(k) for k in self.sas.keys() - dump_sa])
            + sorted([fmt_pol(k) for k in self.policies.keys() - dump_pol]),
        }


_Apply = Callable[[Mirror, Any], "SAEntry | None"]

#: What each kind of event does to the mirror; other events change nothing.
_BY_BASE: tuple[tuple[type, _Apply], ...] = (
    (ev.SaEvent, Mirror._sa_event),
    (ev.Expire, Mirror._expire),
    (ev.DelSA, Mirror._delsa),
    (ev.FlushSA, Mirror._flushsa),
    (ev.PolicyEvent, Mirror._policy_event),
    (ev.DelPolicy, Mirror._delpolicy),
    (ev.PolExpire, Mirror._polexpire),
    (ev.FlushPolicy, Mirror._flushpolicy),
    (ev.DefaultPolicy, Mirror._default_policy),
)
#: The same, per concrete type, filled as types are met: one lookup per event instead of a
#: chain of isinstance tests.
_APPLY: dict[type, _Apply | None] = {}


def _handler(t: type) -> _Apply | None:
    try:
        return _APPLY[t]
    except KeyError:
        h = _APPLY[t] = next((f for base, f in _BY_BASE if issubclass(t, base)), None)
        return h
