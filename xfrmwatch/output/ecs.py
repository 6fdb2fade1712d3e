"""Events as Elastic Common Schema (ECS 8.11.0) documents, for SIEM ingestion.

:class:`EcsRenderer` turns one event into one ECS document (a nested ``dict``;
the caller encodes it, e.g. ``msgspec.json.encode``).  It is a pure function of
the event plus the host name given at construction.  The field table is in
``docs/formats.md``; the JSON Schema of the output is
``xfrmwatch/schema/ecs.schema.json``.

In short: ``@timestamp`` is the event's ``time``; ``event.kind`` is the event's
``kind`` (event, alert, state); ``event.category``/``event.type`` come from a
fixed table per event type (only ECS 8.11 allowed values; every ``event.type``
is one that ECS expects for one of the listed categories); ``source``,
``destination`` and ``network`` describe the SA's outer packets (for policies:
the selector, when it names single hosts); ``related.ip`` lists every address
of the event; ``xfrm`` holds the native event minus ``type``, ``time``,
``kind``, ``rule`` and ``process`` (plus ``nlmsg_pid`` when ``process`` is set),
which are mapped; nested records (``xfrm.sa``, ``xfrm.policy``, ...) are kept
whole.

Elastic's ``ecs-logging`` package is not used: it is a *log record* formatter
(``StructlogFormatter(logger, method, event_dict) -> str``) that moves
structlog's ``event`` key into ``message``, adds ``log.level``, stamps a missing
``@timestamp`` with the current time, serializes with ``json.dumps`` (sorted
keys, ``repr`` fallback), and adds its own ``ecs.version`` (1.6.0 in 2.3.0) as a
dotted key next to any nested ``ecs.version``.  None of that fits a renderer of
already-structured events; its only reusable part, dotted-key expansion, is not
needed when the document is built nested.

The helpers below the renderer (network endpoints, addresses, severities,
times) are shared with :mod:`xfrmwatch.output.ocsf`.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import msgspec

from .. import events as ev
from .render import summary

ECS_VERSION = "8.11.0"
MODULE = "xfrmwatch"

# --- shared helpers (also used by the OCSF renderer) ---------------------------------


def event_type(e: ev.Event) -> str:
    """The event's ``type`` tag (``newsa``, ``alert``, ...)."""
    return str(e.__struct_config__.tag)


#: Mapped top-level fields: removed from the native copy (``xfrm`` / ``unmapped``).
MAPPED = ("type", "time", "kind", "rule")


def native(e: ev.Event) -> dict[str, Any]:
    """The event as the native schema's JSON object, minus the fields both
    formats map: ``type``, ``time``, ``kind``, ``rule``, ``process``, and
    ``nlmsg_pid`` when ``process`` names the requester."""
    d: dict[str, Any] = msgspec.to_builtins(e)
    for k in MAPPED:
        d.pop(k, None)
    if d.pop("process", None) is not None:
        del d["nlmsg_pid"]
    return d


def message(e: ev.Event) -> str:
    """A one-line human summary: the event type and the text renderer's summary."""
    s = summary(e)
    t = event_type(e)
    return f"{t} {s}" if s else t


#: Sigma rule levels on the OCSF severity scale (ECS ``event.severity`` uses the same numbers).
LEVEL_SEVERITY = {"informational": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
#: Events (not alerts) whose severity is not informational.
TYPE_SEVERITY = {
    "overrun": 4,  # events were lost
    "tunnel_down": 4,  # the tunnel's traffic is dropped or unprotected
    "traffic_stalled": 3,
    "malformed": 3,
    "rekey_overdue": 3,
}
SEVERITY_NAMES = {0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical"}


def severity(e: ev.Event) -> int:
    """1 informational .. 5 critical; an alert's from its rule level (0 if the level is unknown)."""
    if isinstance(e, ev.Alert):
        return LEVEL_SEVERITY.get(e.rule.level, 0)
    return TYPE_SEVERITY.get(event_type(e), 1)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(iso: str) -> int:
    """An ISO 8601 time (``...Z``, any precision) as integer milliseconds since the epoch."""
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


def _family(family: str, addr: str | None) -> str | None:
    if family in ("inet", "inet6"):
        return family
    if addr is None or addr in _UNSPECIFIED:
        return None
    return "inet6" if ":" in addr else "inet"


def _sa_net(sa: ev.SA) -> Net:
    enc = sa.encap
    return Net(
        sa.proto,
        src=_ip(sa.src),
        dst=_ip(sa.dst),
        sport=enc.sport if enc else None,
        dport=enc.dport if enc else None,
        family=_family(sa.family, sa.dst),
        dir=sa.dir,
        spi=sa.spi,
        bytes=sa.current.bytes,
        packets=sa.current.packets,
    )


def _sel_net(sel: ev.Selector, direction: str | None) -> Net:
    return Net(
        sel.proto,
        src=host_of(sel.src),
        dst=host_of(sel.dst),
        sport=sel.sport if sel.sport_mask == 0xFFFF else None,
        dport=sel.dport if sel.dport_mask == 0xFFFF else None,
        family=_family(sel.family, sel.src.partition("/")[0]),
        dir=direction,
    )


def _net_sa(e: Any) -> Net:
    return _sa_net(e.sa)


def _net_delsa(e: ev.DelSA) -> Net:
    if e.sa is not None:
        return _sa_net(e.sa)
    i = e.id
    return Net(i.proto, dst=_ip(i.dst), family=_family(i.family, i.dst), spi=i.spi)


def _net_policy(e: Any) -> Net:
    return _sel_net(e.policy.sel, e.policy.dir)


def _net_delpolicy(e: ev.DelPolicy) -> Net:
    if e.policy is not None:
        return _sel_net(e.policy.sel, e.policy.dir)
    return _sel_net(e.policy_id.sel, e.policy_id.dir)


def _net_acquire(e: ev.AcquireEvent) -> Net:
    a = e.acquire
    return Net(
        a.proto,
        src=_ip(a.src),
        dst=_ip(a.dst),
        family=_family(a.family, a.dst),
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
        family=_family(a.family, a.dst),
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
        family=_family(i.family, i.dst),
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
        family=_family(m.new_family, m.new_dst),
        dir=e.policy_id.dir,
    )


def _net_tunnel(e: ev.TunnelEvent) -> Net:
    spi = getattr(e, "spi", None) or e.spi_out or e.spi_in
    return Net(e.proto, src=_ip(e.src), dst=_ip(e.dst), family=_family("", e.dst), spi=spi)


def _net_flushsa(e: ev.FlushSA) -> Net | None:
    return None if e.proto == "any" else Net(e.proto)


def _net_report(e: ev.Report) -> Net:
    return _sel_net(e.sel, None)


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


Addrs = list[tuple[str, str]]


def _sel_addrs(prefix: str, sel: ev.Selector, out: Addrs) -> None:
    for k, cidr in (("src", sel.src), ("dst", sel.dst)):
        h = host_of(cidr)
        if h:
            out.append((f"{prefix}sel.{k}", h))


def _policy_addrs(prefix: str, p: ev.Policy, out: Addrs) -> None:
    _sel_addrs(prefix, p.sel, out)
    for t in p.tmpl:
        out += ((f"{prefix}tmpl.src", t.src), (f"{prefix}tmpl.dst", t.dst))


def _a_sa(e: Any, pre: str, out: Addrs) -> None:
    out += ((pre + "sa.src", e.sa.src), (pre + "sa.dst", e.sa.dst))


def _a_delsa(e: ev.DelSA, pre: str, out: Addrs) -> None:
    if e.sa is not None:
        _a_sa(e, pre, out)
    else:
        out.append((pre + "id.dst", e.id.dst))


def _a_policy(e: Any, pre: str, out: Addrs) -> None:
    _policy_addrs(pre + "policy.", e.policy, out)


def _a_delpolicy(e: ev.DelPolicy, pre: str, out: Addrs) -> None:
    if e.policy is not None:
        _policy_addrs(pre + "policy.", e.policy, out)
    else:
        _sel_addrs(pre + "policy_id.", e.policy_id.sel, out)


def _a_acquire(e: ev.AcquireEvent, pre: str, out: Addrs) -> None:
    out += ((pre + "acquire.src", e.acquire.src), (pre + "acquire.dst", e.acquire.dst))
    _policy_addrs(pre + "policy.", e.policy, out)


def _a_newae(e: ev.NewAE, pre: str, out: Addrs) -> None:
    out += ((pre + "ae.src", e.ae.src), (pre + "ae.dst", e.ae.dst))


def _a_mapping(e: ev.Mapping, pre: str, out: Addrs) -> None:
    out += ((pre + "old_src", e.old_src), (pre + "new_src", e.new_src), (pre + "id.dst", e.id.dst))


def _a_migrate(e: ev.Migrate, pre: str, out: Addrs) -> None:
    for m in e.migrate:
        out += (
            (pre + "migrate.old_src", m.old_src),
            (pre + "migrate.old_dst", m.old_dst),
            (pre + "migrate.new_src", m.new_src),
            (pre + "migrate.new_dst", m.new_dst),
        )
    if e.kmaddress is not None:
        out += ((pre + "kmaddress.local", e.kmaddress.local), (pre + "kmaddress.remote", e.kmaddress.remote))


def _a_tunnel(e: Any, pre: str, out: Addrs) -> None:
    out += ((pre + "src", e.src), (pre + "dst", e.dst))


def _a_report(e: ev.Report, pre: str, out: Addrs) -> None:
    _sel_addrs(pre, e.sel, out)
    if e.coaddr:
        out.append((pre + "coaddr", e.coaddr))


def _a_alert(e: ev.Alert, pre: str, out: Addrs) -> None:
    for t in e.events:
        f = _ADDRS.get(type(t))
        if f is not None:
            f(t, "events.", out)


_ADDRS: dict[type, Callable[[Any, str, Addrs], None]] = {
    ev.NewSA: _a_sa,
    ev.UpdSA: _a_sa,
    ev.Expire: _a_sa,
    ev.SaState: _a_sa,
    ev.DelSA: _a_delsa,
    ev.NewPolicy: _a_policy,
    ev.UpdPolicy: _a_policy,
    ev.PolExpire: _a_policy,
    ev.PolicyState: _a_policy,
    ev.DelPolicy: _a_delpolicy,
    ev.AcquireEvent: _a_acquire,
    ev.NewAE: _a_newae,
    ev.Mapping: _a_mapping,
    ev.Migrate: _a_migrate,
    **{cls: _a_tunnel for cls in ev.TUNNEL_EVENTS},
    ev.Report: _a_report,
    ev.Alert: _a_alert,
}


def addresses(e: ev.Event) -> Addrs:
    """Every specified address the event names, as (native field path, address): SA and
    template endpoints, single-host selectors, ACQUIRE/MAPPING/MIGRATE addresses.
    An alert's are those of its triggering events (paths ``events.*``)."""
    f = _ADDRS.get(type(e))
    if f is None:
        return []
    out: Addrs = []
    f(e, "", out)
    return [pa for pa in dict.fromkeys(out) if pa[1] not in _UNSPECIFIED]


def ips(e: ev.Event) -> list[str]:
    """Every specified address the event names, without duplicates, in order."""
    return list(dict.fromkeys(a for _, a in addresses(e)))


def trigger_span(a: ev.Alert) -> tuple[str, str] | None:
    """(earliest, latest) ``time`` of an alert's triggering events."""
    if not a.events:
        return None
    times = sorted((epoch_ms(t.time), t.time) for t in a.events)
    return times[0][1], times[-1][1]


# --- ECS ---------------------------------------------------------------------------------

#: ECS 8.11 allowed values (schemas/event.yml), also enforced by the JSON Schema.
ECS_KINDS = ("alert", "asset", "enrichment", "event", "metric", "state", "pipeline_error", "signal")

_CFG_NET = ("configuration", "network")
_CFG = ("configuration",)
_NETW = ("network",)
_HOST = ("host",)

#: event type -> (event.category, event.type, event.outcome); expire/polexpire: (soft, hard).
ECS_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...], str | None]] = {
    "newsa": (_CFG_NET, ("creation", "start"), None),
    "updsa": (_CFG_NET, ("change",), None),
    "delsa": (_CFG_NET, ("deletion", "end"), None),
    "expire": (_CFG_NET, ("info",), None),
    "expire/hard": (_CFG_NET, ("deletion", "end"), None),
    "flushsa": (_CFG_NET, ("deletion", "end"), None),
    "newpolicy": (_CFG, ("creation",), None),
    "updpolicy": (_CFG, ("change",), None),
    "delpolicy": (_CFG, ("deletion",), None),
    "polexpire": (_CFG, ("info",), None),
    "polexpire/hard": (_CFG, ("deletion",), None),
    "flushpolicy": (_CFG, ("deletion",), None),
    "default_policy": (_CFG, ("change",), None),
    "acquire": (_NETW, ("info",), None),
    "newae": (_NETW, ("info",), None),
    "report": (_NETW, ("info",), None),
    "migrate": (_CFG_NET, ("change",), None),
    "mapping": (_CFG_NET, ("change",), None),
    "sadinfo": (_CFG, ("info",), None),
    "spdinfo": (_CFG, ("info",), None),
    "overrun": (_HOST, ("info",), "failure"),
    "malformed": (_HOST, ("info",), "failure"),
    "resync": (_CFG, ("info",), None),
    "rekey_started": (_CFG_NET, ("start",), None),
    "rekey_completed": (_CFG_NET, ("change",), "success"),
    "rekey_overdue": (_CFG_NET, ("info",), None),
    "tunnel_up": (_CFG_NET, ("start",), "success"),
    "tunnel_down": (_CFG_NET, ("end",), None),
    "traffic_stalled": (_CFG_NET, ("info",), "failure"),
    "traffic_resumed": (_CFG_NET, ("info",), "success"),
    "sa_state": (_CFG_NET, ("info",), None),
    "policy_state": (_CFG, ("info",), None),
    "netns_state": (_CFG, ("info",), None),
    "alert": (("intrusion_detection",), ("info",), None),
}
_FALLBACK = (_CFG, ("info",), None)

_DIRECTION = {"in": "ingress", "out": "egress"}
_NETWORK_TYPE = {"inet": "ipv4", "inet6": "ipv6"}
_DATASET = {"event": "xfrmwatch.events", "alert": "xfrmwatch.alerts", "state": "xfrmwatch.state"}


def ecs_class(e: ev.Event) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    """(event.category, event.type, event.outcome) of an event."""
    t = event_type(e)
    if isinstance(e, (ev.Expire, ev.PolExpire)) and e.hard:
        t += "/hard"
    return ECS_TYPES.get(t, _FALLBACK)


class EcsRenderer:
    """One event -> one ECS 8.11.0 document (a nested dict)."""

    __slots__ = ("hostname",)

    def __init__(self, hostname: str | None = None) -> None:
        #: ``host.hostname`` and ``host.name`` of every document
        self.hostname = socket.gethostname() if hostname is None else hostname

    def __call__(self, e: ev.Event) -> dict[str, Any]:
        t = event_type(e)
        kind = e.kind if e.kind in ECS_KINDS else "event"
        category, etype, outcome = ecs_class(e)
        event: dict[str, Any] = {
            "kind": kind,
            "category": list(category),
            "type": list(etype),
            "action": "xfrm-" + t.replace("_", "-"),
            "module": MODULE,
            "dataset": _DATASET.get(kind, "xfrmwatch.events"),
            "severity": severity(e),
        }
        doc: dict[str, Any] = {
            "@timestamp": e.time,
            "ecs": {"version": ECS_VERSION},
            "message": message(e),
            "event": event,
            "host": {"hostname": self.hostname, "name": self.hostname},
        }
        if outcome is not None:
            event["outcome"] = outcome
        if isinstance(e, ev.Malformed):
            event["reason"] = e.reason
        elif isinstance(e, ev.Overrun):
            event["reason"] = e.detail
        elif isinstance(e, ev.RekeyCompleted):
            event["duration"] = round(e.duration_seconds * 1e9)
        elif isinstance(e, ev.Alert):
            self._alert(e, doc, event)
        if e.process is not None:
            doc["process"] = {"name": e.process, "pid": e.nlmsg_pid}
        n = net(e)
        if n is not None:
            self._net(n, doc)
        addrs = ips(e)
        if addrs:
            doc["related"] = {"ip": addrs}
        doc["xfrm"] = native(e)
        return doc

    @staticmethod
    def _alert(a: ev.Alert, doc: dict[str, Any], event: dict[str, Any]) -> None:
        cats = dict.fromkeys(event["category"])
        for trig in a.events:
            cats.update(dict.fromkeys(ecs_class(trig)[0]))
        event["category"] = list(cats)
        event["id"] = alert_uid(a)
        span = trigger_span(a)
        if span is not None:
            event["start"], event["end"] = span
        r = a.rule
        rule: dict[str, Any] = {"id": r.id, "name": r.title}
        if r.tags:
            rule["category"] = r.tags[0]
            doc["tags"] = list(r.tags)
        doc["rule"] = rule

    @staticmethod
    def _net(n: Net, doc: dict[str, Any]) -> None:
        if n.src is not None:
            src: dict[str, Any] = {"ip": n.src}
            if n.sport is not None:
                src["port"] = n.sport
            doc["source"] = src
        if n.dst is not None:
            dst: dict[str, Any] = {"ip": n.dst}
            if n.dport is not None:
                dst["port"] = n.dport
            doc["destination"] = dst
        network: dict[str, Any] = {}
        keyword, number = iana(n.proto)
        if keyword is not None:
            network["transport"] = keyword
        if number is not None:
            network["iana_number"] = str(number)
        if n.family is not None:
            network["type"] = _NETWORK_TYPE[n.family]
        d = _DIRECTION.get(n.dir) if n.dir is not None else None
        if d is not None:
            network["direction"] = d
        if n.bytes is not None:
            network["bytes"] = n.bytes
            network["packets"] = n.packets
        if network:
            doc["network"] = network
