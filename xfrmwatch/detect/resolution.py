"""Which events end which alerts: one table for every consumer of alerts (Alertmanager's
``endsAt``, the dashboard's alerts panel).

An alert is *resolvable* when its first triggering event is about a tunnel's trouble; a
later event of the same namespace and reqid that shows the trouble over resolves it:

* ``rekey_overdue``: resolved by a ``rekey_completed``;
* ``tunnel_down``: resolved by a ``tunnel_up``;
* ``traffic_stalled``: resolved by a ``traffic_resumed`` or a ``rekey_completed``.
"""

from __future__ import annotations

from .. import events as ev
from ..subject import subject

__all__ = ["RESOLVED_BY", "RESOLVERS", "ResolverKey", "resolved_by", "resolver_of"]

#: (type of the alert's first event, netns, reqid)
ResolverKey = tuple[str, str, int]

#: first-event type of an alert -> the event types that resolve it
RESOLVED_BY: dict[str, tuple[type[ev.Event], ...]] = {
    "rekey_overdue": (ev.RekeyCompleted,),
    "traffic_stalled": (ev.TrafficResumed, ev.RekeyCompleted),
    "tunnel_down": (ev.TunnelUp,),
}
#: every event type that resolves some alert
RESOLVERS: tuple[type[ev.TunnelEvent], ...] = (ev.RekeyCompleted, ev.TrafficResumed, ev.TunnelUp)


def resolver_of(a: ev.Alert) -> ResolverKey | None:
    """What would resolve this alert (None: nothing does)."""
    if not a.events:
        return None
    first = a.events[0]
    tag = str(first.__struct_config__.tag)
    reqids = subject(first).reqid
    if tag in RESOLVED_BY and reqids:
        return (tag, first.netns, reqids[0])
    return None


def resolved_by(e: ev.Event) -> list[ResolverKey]:
    """The alerts (by :func:`resolver_of`) that ``e`` resolves."""
    if not isinstance(e, RESOLVERS):
        return []
    return [(tag, e.netns, e.reqid) for tag, kinds in RESOLVED_BY.items() if isinstance(e, kinds)]
