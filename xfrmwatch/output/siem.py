"""What the SIEM formats (ECS, OCSF) share: the native copy of an event, its
message, times, a stable alert id, protocol numbers, and the network view and
addresses of an event."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import msgspec

from .. import events as ev
from ..subject import addresses as subject_addresses
from ..subject import host, hosts, subject
from .render import event_type, summary


@functools.cache
def _plain(cls: type[msgspec.Struct]) -> bool:
    """Whether ``cls``'s fields are named in JSON as in Python (no ``in_`` -> ``in``)."""
    return bool(cls.__struct_encode_fields__ == cls.__struct_fields__)


def native(e: ev.Event) -> dict[str, Any]:
    """The event as the native schema's JSON object, minus the fields both
    formats map: ``type``, ``time``, ``kind``, ``rule``, ``process``, and
    ``nlmsg_pid`` when ``process`` names the requester.  Ready to encode: its
    records (``sa``, ``policy``...) stay records, encoded as the native output
    encodes them."""
    if _plain(type(e)):
        d: dict[str, Any] = msgspec.structs.asdict(e)
    else:
        d = msgspec.to_builtins(e)
        del d["type"]
    del d["time"], d["kind"]
    if "rule" in d:
        del d["rule"]
    if d.pop("process") is not None:
        del d["nlmsg_pid"]
    return d


def message(e: ev.Event) -> str:
    """A one-line human summary: the event type and the text renderer's summary."""
    s = summary(e)
    t = event_type(e)
    return f"{t} {s}" if s else t


#: OCSF severity_id captions (ECS event.severity uses the same numbers, see xfrmwatch.levels)
SEVERITY_NAMES = {0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical"}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(iso: str) -> int:
    """An ISO 8601 time (``...Z``, any precision) as integer milliseconds since the epoch.
    The events' own form (``YYYY-MM-DDTHH:MM:SS.ffffffZ``) is read from its second, parsed
    once for all the events of that second, and its digits."""
    if len(iso) == 27 and iso[26] == "Z" and iso[19] == ".":
        frac = iso[20:26]
        if frac.isdigit() and frac.isascii():
            second = iso[:19]
            ms = _SECONDS_MS.get(second)
            if ms is None:
                if len(_SECONDS_MS) >= 1024:
                    _SECONDS_MS.clear()
                ms = _SECONDS_MS[second] = _epoch_ms(second + "Z")
            return ms + int(frac[:3])
    return _epoch_ms(iso)


#: ``YYYY-MM-DDTHH:MM:SS`` -> :func:`epoch_ms` of that second (those seen lately)
_SECONDS_MS: dict[str, int] = {}


def _epoch_ms(iso: str) -> int:
    dt = datetime.fromisoformat(iso)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _MS


_ALERT_NS = uuid.uuid5(uuid.NAMESPACE_URL, "urn:xfrmwatch:alert")


def alert_uid(a: ev.Alert) -> str:
    """A stable unique id for one alert (UUIDv5 of rule, namespace, time, clock and group)."""
    group = "\x1f".join(f"{k}={v}" for k, v in sorted(a.group.items()))
    return str(uuid.uuid5(_ALERT_NS, f"{a.rule.id}\x1e{a.netns}\x1e{a.time}\x1e{a.mono!r}\x1e{group}"))


#: Protocol names used by the event model (XFRM and IP selector protocols) ->
#: (IANA keyword in lower case, IANA protocol number).
IANA: dict[str, tuple[str, int]] = {
    "icmp": ("icmp", 1),
    "ipip": ("ipv4", 4),
    "tcp": ("tcp", 6),
    "udp": ("udp", 17),
    "ipv6": ("ipv6", 41),
    "route2": ("ipv6-route", 43),
    "gre": ("gre", 47),
    "esp": ("esp", 50),
    "ah": ("ah", 51),
    "ipv6-icmp": ("ipv6-icmp", 58),
    "hao": ("ipv6-opts", 60),
    "comp": ("ipcomp", 108),
    "ipcomp": ("ipcomp", 108),
    "sctp": ("sctp", 132),
    "mh": ("mobility header", 135),
    "udplite": ("udplite", 136),
}
IPSEC_PROTOS = frozenset({"esp", "ah", "comp"})


def iana(proto: str) -> tuple[str | None, int | None]:
    """(keyword, number) of a protocol name; (None, N) for a bare number; (None, None) for ``any``."""
    known = IANA.get(proto)
    if known is not None:
        return known
    if proto.isdigit():
        return None, int(proto)
    return None, None


_UNSPECIFIED = frozenset({"0.0.0.0", "::"})


def _ip(a: str | None) -> str | None:
    return None if a is None or a in _UNSPECIFIED else a


def host_of(cidr: str) -> str | None:
    """The address of a single-host selector (``/32``, ``/128``), else None."""
    a, _, plen = cidr.partition("/")
    if (plen == "32" and ":" not in a) or plen == "128":
        return _ip(a)
    return None


class Net(NamedTuple):
    """The network view of an event: the SA's outer endpoints, or a policy's selector."""

    proto: str  # a protocol name of the event model ("esp", "udp", "any", ...)
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    family: str | None = None  # "inet" / "inet6"
    dir: str | None = None  # "in" / "out" / "fwd"
    spi: str | None = None
    bytes: int | None = None
    packets: int | None = None

    def flow(self) -> tuple[str | None, str | None, int | None, int | None, str]:
        return self.src, self.dst, self.sport, self.dport, self.proto


def ip_family(family: str, addr: str | None) -> str | None:
    """``family`` when it is ``inet`` or ``inet6``, else the family of ``addr`` (if specified)."""
    if family in ("inet", "inet6"):
        return family
    if addr is None or addr in _UNSPECIFIED:
        return None
    return "inet6" if ":" in addr else "inet"


def sa_net(sa: ev.SA) -> Net:
    """The network view of an SA: its outer endpoints, ports, counters."""
    enc = sa.encap
    cur = sa.current
    # (positional: Net's fields in order; made for every rendered SA event)
    return Net(
        sa.proto, _ip(sa.src), _ip(sa.dst), enc.sport if enc else None, enc.dport if enc else None,
        ip_family(sa.family, sa.dst), sa.dir, sa.spi, cur.bytes, cur.packets,
    )  # fmt: skip


def sel_net(sel: ev.Selector, direction: str | None) -> Net:
    """The network view of a policy's selector (``direction``: the policy's)."""
    # (positional: Net's fields in order; made for every rendered policy event)
    return Net(
        sel.proto, host_of(sel.src), host_of(sel.dst), sel.sport if sel.sport_mask == 0xFFFF else None,
        sel.dport if sel.dport_mask == 0xFFFF else None, ip_family(sel.family, sel.src.partition("/")[0]), direction,
    )  # fmt: skip


def _net_sa(e: Any) -> Net:
    return sa_net(e.sa)


def _net_delsa(e: ev.DelSA) -> Net:
    if e.sa is not None:
        return sa_net(e.sa)
    i = e.id
    return Net(i.proto, dst=_ip(i.dst), family=ip_family(i.family, i.dst), spi=i.spi)


def _net_policy(e: Any) -> Net:
    return sel_net(e.policy.sel, e.policy.dir)


def _net_delpolicy(e: ev.DelPolicy) -> Net:
    if e.policy is not None:
        return sel_net(e.policy.sel, e.policy.dir)
    return sel_net(e.policy_id.sel, e.policy_id.dir)


def _net_acquire(e: ev.AcquireEvent) -> Net:
    a = e.acquire
    return Net(
        a.proto,
        src=_ip(a.src),
        dst=_ip(a.dst),
        family=ip_family(a.family, a.dst),
        dir=e.policy.dir,
        spi=None if a.spi == "0x00000000" else a.spi,  # none allocated yet
    )


def _net_newae(e: ev.NewAE) -> Net:
    a = e.ae
    cur = a.current
    return Net(
        a.proto,
        src=_ip(a.src),
        dst=_ip(a.dst),
        family=ip_family(a.family, a.dst),
        spi=a.spi,
        bytes=cur.bytes if cur else None,
        packets=cur.packets if cur else None,
    )


def _net_mapping(e: ev.Mapping) -> Net:
    # the peer's new NAT mapping of an inbound ESP-in-UDP SA: the new source address and port
    i = e.id
    return Net(
        i.proto,
        src=_ip(e.new_src),
        dst=_ip(i.dst),
        sport=e.new_sport,
        family=ip_family(i.family, i.dst),
        dir="in",
        spi=i.spi,
    )


def _net_migrate(e: ev.Migrate) -> Net | None:
    if not e.migrate:
        return None
    m = e.migrate[0]
    return Net(
        m.proto,
        src=_ip(m.new_src),
        dst=_ip(m.new_dst),
        family=ip_family(m.new_family, m.new_dst),
        dir=e.policy_id.dir,
    )


def _net_tunnel(e: ev.TunnelEvent) -> Net:
    spis = subject(e).spi
    return Net(e.proto, src=_ip(e.src), dst=_ip(e.dst), family=ip_family("", e.dst), spi=spis[0] if spis else None)


def _net_flushsa(e: ev.FlushSA) -> Net | None:
    return None if e.proto == "any" else Net(e.proto)


def _net_report(e: ev.Report) -> Net:
    return sel_net(e.sel, None)


_NET: dict[type, Callable[[Any], Net | None]] = {
    ev.NewSA: _net_sa,
    ev.UpdSA: _net_sa,
    ev.Expire: _net_sa,
    ev.SaState: _net_sa,
    ev.DelSA: _net_delsa,
    ev.NewPolicy: _net_policy,
    ev.UpdPolicy: _net_policy,
    ev.PolExpire: _net_policy,
    ev.PolicyState: _net_policy,
    ev.DelPolicy: _net_delpolicy,
    ev.AcquireEvent: _net_acquire,
    ev.NewAE: _net_newae,
    ev.Mapping: _net_mapping,
    ev.Migrate: _net_migrate,
    **{cls: _net_tunnel for cls in ev.TUNNEL_EVENTS},
    ev.FlushSA: _net_flushsa,
    ev.Report: _net_report,
}


def net(e: ev.Event) -> Net | None:
    """The network view of an event (an alert: of its first triggering event that has one)."""
    if isinstance(e, ev.Alert):
        for t in e.events:
            n = net(t)
            if n is not None and (n.src or n.dst):
                return n
        return None
    f = _NET.get(type(e))
    return f(e) if f is not None else None


def addresses(e: ev.Event) -> tuple[tuple[str, str], ...]:
    """Every specified host address the event names, as (native field path, address):
    SA and template endpoints, single-host selectors, ACQUIRE/MAPPING/MIGRATE addresses;
    an alert's are those of its triggering events (paths ``events.*``).
    :attr:`xfrmwatch.subject.Subject.addresses`."""
    return subject_addresses(e)


#: classes about one policy (``policy``) or one SA (``sa``) and nothing else the walk of
#: :mod:`xfrmwatch.subject` reads for an address
POLICY_CLASSES = frozenset({ev.NewPolicy, ev.UpdPolicy, ev.PolicyState, ev.PolExpire})
SA_CLASSES = frozenset({ev.NewSA, ev.UpdSA, ev.SaState, ev.Expire})


_POLICY_PATHS = ("policy.sel.src", "policy.sel.dst")
_TMPL_PATHS = ("policy.tmpl.src", "policy.tmpl.dst")
_SA_PATHS = ("sa.src", "sa.dst", "sa.sel.src", "sa.sel.dst", "sa.coaddr")


def _record_values(e: Any) -> tuple[tuple[str, ...], list[Any]] | None:
    """The fields of an event of :data:`POLICY_CLASSES` or :data:`SA_CLASSES` that can hold an
    address, in the order the walk of :mod:`xfrmwatch.subject` meets them: (paths, values);
    None for any other event, or a record of another shape than the decoder makes."""
    cls = type(e)
    if cls in POLICY_CLASSES:
        p = e.policy
        if type(p) is not ev.Policy:
            return None
        sel = p.sel
        tmpl = p.tmpl
        if type(sel) is not ev.Selector or type(tmpl) is not list:
            return None
        values = [sel.src, sel.dst]
        if not tmpl:
            return _POLICY_PATHS, values
        for t in tmpl:
            if type(t) is not ev.Template:
                return None
            values += (t.src, t.dst)
        return _POLICY_PATHS + _TMPL_PATHS * len(tmpl), values
    if cls in SA_CLASSES:
        sa = e.sa
        if type(sa) is not ev.SA:
            return None
        sel = sa.sel
        off = sa.offload
        if type(sel) is not ev.Selector or not (off is None or type(off) is ev.Offload):
            return None
        return _SA_PATHS, [sa.src, sa.dst, sel.src, sel.dst, sa.coaddr]
    return None


def record_hosts(e: Any) -> dict[str, None] | None:
    """:func:`ips` of an event of :data:`POLICY_CLASSES` or :data:`SA_CLASSES`, read from its
    record directly (as dict keys); None when the walk must judge (see :func:`_record_values`)."""
    return _record_found(e, False)


def record_addresses(e: Any) -> dict[tuple[str, str], None] | None:
    """:func:`addresses` of an event of :data:`POLICY_CLASSES` or :data:`SA_CLASSES` (as dict
    keys), as :func:`record_hosts` reads them."""
    return _record_found(e, True)


def _record_found(e: Any, paths: bool) -> dict[Any, None] | None:
    fields = _record_values(e)
    if fields is None:
        return None
    found: dict[Any, None] = {}
    for path, a in zip(*fields, strict=True):
        if type(a) is str:
            h = host(a)
            if h is not None:
                found[(path, h) if paths else h] = None
        elif a is not None:
            return None
    return found


def ips(e: ev.Event) -> list[str]:
    """Every specified address the event names, without duplicates, in order."""
    return hosts(e)


def trigger_span(a: ev.Alert) -> tuple[str, str] | None:
    """(earliest, latest) ``time`` of an alert's triggering events."""
    if not a.events:
        return None
    times = sorted((epoch_ms(t.time), t.time) for t in a.events)
    return times[0][1], times[-1][1]
