"""Stage 3 of the pipeline, before the rules: who made a change (nlmsg_pid -> process name).

A ``tunnel_down`` carries the nlmsg_pid of the request that removed the tunnel."""

from __future__ import annotations

from typing import Protocol

import msgspec

from .. import events as ev

#: Events whose nlmsg_pid names the requester (the kernel's own events carry 0).
CHANGE_EVENTS = (ev.SaEvent, ev.DelSA, ev.PolicyEvent, ev.DelPolicy, ev.FlushSA, ev.FlushPolicy, ev.TunnelDown)


class Enricher(Protocol):
    """Adds who made a change to the events that carry its nlmsg_pid."""

    def enrich(self, e: ev.Event, now: float) -> ev.Event: ...


class ProcessNames:
    """Maps a netlink port id to the process name while the process runs.

    A process's first netlink socket gets its PID as port id, and IKE daemons
    put their PID in nlmsg_pid (charon does).  The result is cached briefly per
    pid; a pid that does not exist maps to None.
    """

    def __init__(self, proc: str = "/proc", ttl: float = 5.0) -> None:
        self.proc = proc
        self.ttl = ttl
        self._cache: dict[int, tuple[float, str | None]] = {}

    def name(self, pid: int, now: float) -> str | None:
        hit = self._cache.get(pid)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        try:
            with open(f"{self.proc}/{pid}/comm", encoding="utf-8", errors="replace") as f:
                name: str | None = f.read().strip() or None
        except OSError:
            name = None
        if len(self._cache) > 1024:
            self._cache.clear()
        self._cache[pid] = (now, name)
        return name

    def enrich(self, e: ev.Event, now: float) -> ev.Event:
        if e.nlmsg_pid and isinstance(e, CHANGE_EVENTS):
            name = self.name(e.nlmsg_pid, now)
            if name is not None:
                return msgspec.structs.replace(e, process=name)
        return e
