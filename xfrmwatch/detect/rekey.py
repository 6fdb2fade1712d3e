"""Rekey tracking, built in: derived events from the kernel's own sequences.

Per IKE CHILD_SA, i.e. per (reqid, protocol, endpoint pair), following the
sequences in the project notes (ike-rekey.md):

* ``rekey_started``: an SA soft-expires and nothing newer replaces it yet
  (only the side that starts the rekey sees the soft EXPIRE);
* ``rekey_completed``: replacement SAs (same reqid and endpoints, new SPIs)
  appear while older ones live; emitted once, when every direction that had an
  old SA has a new one, when an old SA is deleted, or after a short settle time;
  the later DELSA of the old SAs belongs to the rekey, it is no alarm;
* ``rekey_overdue``: a soft-expired SA still has no replacement when
  ``overdue_share`` of the time from soft expiry to hard expiry has passed;
* ``sa_expired_unreplaced``: a hard EXPIRE of an SA with no live replacement;
  ACQUIREs that follow for its reqid are attached to it (counted), not reported.

Larval states (reqid 0 or SPI 0) are ignored.  Time is the caller's ``now``
(trio's clock), so every window is testable on a mock clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import events as ev
from ..mirror import Mirror, PairKey, SAEntry, pair_key
from ..timestamps import utc_precise


@dataclass
class _Pending:
    started: float | None = None  # soft EXPIRE (initiator side)
    first_new: float | None = None
    soft_spi: str = ""
    soft_src: str = ""
    soft_dst: str = ""
    hard_at: float | None = None
    overdue_at: float | None = None
    overdue_sent: bool = False
    settle_at: float | None = None
    old: dict[str, tuple[str, str]] = field(default_factory=dict)  # spi -> (src, dst)
    new: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass
class _Blackhole:
    spi: str
    acquires: int = 0


class RekeyTracker:
    """Feed it every event with the mirror entry it touched; it returns derived events."""

    #: CHILD_SAs remembered as blackholed (for attaching ACQUIREs); the oldest are forgotten
    MAX_BLACKHOLED = 10_000

    def __init__(
        self, mirror: Mirror, *, overdue_share: float = 0.5, settle_seconds: float = 2.0
    ) -> None:
        if not 0.0 < overdue_share < 1.0:
            raise ValueError("overdue_share must be between 0 and 1")
        self.mirror = mirror
        self.overdue_share = overdue_share
        self.settle_seconds = settle_seconds
        self._pending: dict[PairKey, _Pending] = {}
        self._blackholed: dict[PairKey, _Blackhole] = {}

    # --- helpers -------------------------------------------------------------------

    def _common(self, now: float, wall: float) -> dict[str, Any]:
        return {
            "time": utc_precise(wall),
            "mono": now,
            "netns": self.mirror.netns,
            "nlmsg_pid": 0,
            "nlmsg_seq": 0,
        }

    @staticmethod
    def _larval(sa: ev.SA) -> bool:
        return sa.reqid == 0 or sa.spi == "0x00000000"

    def next_deadline(self) -> float | None:
        times = [
            t
            for p in self._pending.values()
            for t in (None if p.overdue_sent or p.new else p.overdue_at, p.settle_at)
            if t is not None
        ]
        return min(times) if times else None

    def _complete(self, pk: PairKey, p: _Pending, now: float, wall: float) -> ev.Event:
        del self._pending[pk]
        reqid, proto, a, b = pk
        begin = p.started if p.started is not None else (p.first_new if p.first_new is not None else now)
        return ev.RekeyCompleted(
            **self._common(now, wall),
            reqid=reqid,
            proto=proto,
            endpoints=[a, b],
            old_spis=sorted(p.old),
            new_spis=sorted(p.new),
            initiator=p.started is not None,
            duration_seconds=round(max(0.0, now - begin), 6),
        )

    # --- events ----------------------------------------------------------------------

    def observe(
        self, e: ev.Event, entry: SAEntry | None, now: float, wall: float
    ) -> tuple[list[ev.Event], bool]:
        """Derived events caused by ``e``, and whether ``e`` was attached to one
        (an ACQUIRE for a blackholed reqid: rules should not see it again)."""
        out: list[ev.Event] = []
        if isinstance(e, ev.Expire) and entry is not None and not self._larval(e.sa):
            if e.hard:
                out += self._hard_expire(entry, now, wall)
            else:
                out += self._soft_expire(entry, now, wall)
        elif isinstance(e, ev.SaEvent) and entry is not None and not self._larval(e.sa):
            out += self._new_sa(entry, e.mono, now, wall)
        elif isinstance(e, ev.DelSA) and entry is not None:
            pk = pair_key(entry.sa)
            p = self._pending.get(pk)
            if p is not None and p.new and entry.sa.spi in p.old:
                out.append(self._complete(pk, p, now, wall))
            elif p is not None and not p.new:
                # deleted, not rekeyed (IKE_SA closed, reauthentication): nothing is overdue
                p.old.pop(entry.sa.spi, None)
                if entry.sa.spi == p.soft_spi or not p.old:
                    del self._pending[pk]
        elif isinstance(e, ev.FlushSA):
            for pk in [pk for pk in self._pending if e.proto in ("any", pk[1])]:
                del self._pending[pk]
        elif isinstance(e, ev.AcquireEvent):
            return out, self._attach_acquire(e)
        return out, False

    def _soft_expire(self, entry: SAEntry, now: float, wall: float) -> list[ev.Event]:
        if self.mirror.replacement(entry) is not None:
            return []  # an older generation soft-expiring: already replaced
        pk = pair_key(entry.sa)
        p = self._pending.get(pk)
        if p is not None and p.started is not None:
            return []  # the other direction's soft expiry of the same CHILD_SA
        if p is None:
            p = self._pending[pk] = _Pending()
        p.started = now
        p.soft_spi, p.soft_src, p.soft_dst = entry.sa.spi, entry.sa.src, entry.sa.dst
        for s in self.mirror.pair_sas(pk):
            if s.sa.spi not in p.new:
                p.old[s.sa.spi] = (s.sa.src, s.sa.dst)
        hard = entry.hard_deadline
        p.hard_at = hard
        if hard is not None and hard > now:
            p.overdue_at = now + self.overdue_share * (hard - now)
        sa = entry.sa
        return [
            ev.RekeyStarted(
                **self._common(now, wall),
                reqid=sa.reqid,
                proto=sa.proto,
                src=sa.src,
                dst=sa.dst,
                spi=sa.spi,
                seconds_to_hard=None if hard is None else round(hard - now, 3),
            )
        ]

    def _new_sa(self, entry: SAEntry, received: float, now: float, wall: float) -> list[ev.Event]:
        sa = entry.sa
        pk = pair_key(sa)
        self._blackholed.pop(pk, None)  # traffic for this reqid can flow again
        if entry.first_seen != received:
            return []  # an update of an SA we already know
        older = [
            s
            for s in self.mirror.pair_sas(pk)
            if s is not entry and s.sa.src == sa.src and s.sa.dst == sa.dst and s.generation < entry.generation
        ]
        p = self._pending.get(pk)
        if not older and (p is None or p.started is None):
            return []  # a first installation, not a rekey
        if p is None:
            p = self._pending[pk] = _Pending(first_new=now)
            for s in self.mirror.pair_sas(pk):
                if s is not entry:
                    p.old[s.sa.spi] = (s.sa.src, s.sa.dst)
        if p.first_new is None:
            p.first_new = now
        p.old.pop(sa.spi, None)
        p.new[sa.spi] = (sa.src, sa.dst)
        if p.settle_at is None:
            p.settle_at = now + self.settle_seconds
        if set(p.old.values()) <= set(p.new.values()):
            return [self._complete(pk, p, now, wall)]
        return []

    def _hard_expire(self, entry: SAEntry, now: float, wall: float) -> list[ev.Event]:
        if self.mirror.replacement(entry) is not None:
            return []
        pk = pair_key(entry.sa)
        p = self._pending.pop(pk, None)
        if pk in self._blackholed:
            return []  # the other direction of the same CHILD_SA
        self._blackholed[pk] = _Blackhole(spi=entry.sa.spi)
        while len(self._blackholed) > self.MAX_BLACKHOLED:  # oldest first
            del self._blackholed[next(iter(self._blackholed))]
        sa = entry.sa
        return [
            ev.SaExpiredUnreplaced(
                **self._common(now, wall),
                reqid=sa.reqid,
                proto=sa.proto,
                src=sa.src,
                dst=sa.dst,
                spi=sa.spi,
                rekey_started=p is not None and p.started is not None,
            )
        ]

    def _attach_acquire(self, e: ev.AcquireEvent) -> bool:
        for t in e.policy.tmpl:
            a, b = sorted((t.src, t.dst))
            bh = self._blackholed.get((t.reqid, t.proto, a, b))
            if bh is not None:
                bh.acquires += 1
                return True
        return False

    def acquires_attached(self, pk: PairKey) -> int:
        bh = self._blackholed.get(pk)
        return 0 if bh is None else bh.acquires

    # --- timers ------------------------------------------------------------------------

    def on_time(self, now: float, wall: float) -> list[ev.Event]:
        """Fire every deadline that has passed."""
        out: list[ev.Event] = []
        for pk, p in list(self._pending.items()):
            if p.overdue_at is not None and not p.overdue_sent and now >= p.overdue_at and not p.new:
                p.overdue_sent = True
                reqid, proto, _, _ = pk
                out.append(
                    ev.RekeyOverdue(
                        **self._common(now, wall),
                        reqid=reqid,
                        proto=proto,
                        src=p.soft_src,
                        dst=p.soft_dst,
                        spi=p.soft_spi,
                        seconds_since_soft=round(now - (p.started or now), 3),
                        seconds_to_hard=None if p.hard_at is None else round(p.hard_at - now, 3),
                    )
                )
            if p.settle_at is not None and now >= p.settle_at and p.new:
                out.append(self._complete(pk, p, now, wall))
        return out
