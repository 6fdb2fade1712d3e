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

What ECS shares with OCSF (network endpoints, addresses, times) is in
:mod:`xfrmwatch.output.siem`; severities are :mod:`xfrmwatch.levels`'.
"""

from __future__ import annotations

import functools
import socket
from typing import Any

import msgspec

from .. import events as ev
from ..levels import severity
from .render import event_type, policy_summary, sa_summary
from .siem import (
    POLICY_CLASSES,
    SA_CLASSES,
    alert_uid,
    host_of,
    iana,
    ip_family,
    ips,
    message,
    native,
    net,
    record_hosts,
    sa_net,
    trigger_span,
)

ECS_VERSION = "8.11.0"
MODULE = "xfrmwatch"

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
_ECS = msgspec.Raw(msgspec.json.encode({"version": ECS_VERSION}))
_EXPIRES = frozenset({ev.Expire, ev.PolExpire})
#: classes whose ``event`` object has more than their type says
_SPECIAL = frozenset({ev.Malformed, ev.Overrun, ev.RekeyCompleted, ev.Alert})
_FAMILIES = frozenset({"inet", "inet6"})


def ecs_class(e: ev.Event) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    """(event.category, event.type, event.outcome) of an event."""
    t = event_type(e)
    if isinstance(e, (ev.Expire, ev.PolExpire)) and e.hard:
        t += "/hard"
    return ECS_TYPES.get(t, _FALLBACK)


class EcsRenderer:
    """One event -> one ECS 8.11.0 document: a nested dict ready to encode with msgspec (its
    parts that are the same for every event of a type are pre-encoded :class:`msgspec.Raw`
    JSON, and its ``xfrm`` part holds the event's records as they are)."""

    __slots__ = ("_heads", "_host", "hostname")

    def __init__(self, hostname: str | None = None) -> None:
        #: ``host.hostname`` and ``host.name`` of every document
        self.hostname = socket.gethostname() if hostname is None else hostname
        self._host = msgspec.Raw(msgspec.json.encode({"hostname": self.hostname, "name": self.hostname}))
        #: (class, kind, hard) -> the ``event`` object, as far as it follows from them
        #: (pre-encoded, or a dict to complete for the classes that add to it), and the
        #: ``message``'s start for the classes rendered the short way
        self._heads: dict[tuple[type, str, bool], tuple[msgspec.Raw | dict[str, Any], str]] = {}

    def _head(self, e: ev.Event, hard: bool) -> msgspec.Raw | dict[str, Any]:
        t = event_type(e)
        kind = e.kind if e.kind in ECS_KINDS else "event"
        category, etype, outcome = ECS_TYPES.get(t + "/hard" if hard else t, _FALLBACK)
        head: dict[str, Any] = {
            "kind": kind,
            "category": category,
            "type": etype,
            "action": "xfrm-" + t.replace("_", "-"),
            "module": MODULE,
            "dataset": _DATASET.get(kind, "xfrmwatch.events"),
            "severity": severity(e).ocsf,
        }
        if outcome is not None:
            head["outcome"] = outcome
        return head if type(e) in _SPECIAL else msgspec.Raw(msgspec.json.encode(head))

    def __call__(self, e: ev.Event) -> dict[str, Any]:
        cls = type(e)
        hard = cls in _EXPIRES and e.hard  # type: ignore[attr-defined]
        key = (cls, e.kind, hard)
        cached = self._heads.get(key)
        if cached is None:
            t = event_type(e)
            cached = self._heads[key] = (self._head(e, hard), t + (" hard " if hard else " soft ") if cls in _EXPIRES else t + " ")
        head, start = cached
        if cls in POLICY_CLASSES:
            short = self._policy(e, head, start)
            if short is not None:
                return short
        elif cls in SA_CLASSES:
            short = self._sa(e, head, start)
            if short is not None:
                return short
        doc: dict[str, Any] = {
            "@timestamp": e.time,
            "ecs": _ECS,
            "message": message(e),
            "event": head,
            "host": self._host,
        }
        if type(head) is dict:
            doc["event"] = event = dict(head)
            if isinstance(e, ev.Malformed):
                event["reason"] = e.reason
            elif isinstance(e, ev.Overrun):
                event["reason"] = e.detail
            elif isinstance(e, ev.RekeyCompleted):
                event["duration"] = round(e.duration_seconds * 1e9)
            elif isinstance(e, ev.Alert):
                event["severity"] = severity(e).ocsf
                self._alert(e, doc, event)
        if e.process is not None:
            doc["process"] = {"name": e.process, "pid": e.nlmsg_pid}
        n = net(e)
        if n is not None:
            _net(doc, *n)
        addrs = ips(e)
        if addrs:
            doc["related"] = {"ip": addrs}
        doc["xfrm"] = native(e)
        return doc

    def _policy(self, e: Any, head: msgspec.Raw | dict[str, Any], start: str) -> dict[str, Any] | None:
        """The document of an event about one policy, as the general way makes it (its
        ``message`` ``start`` + the policy's summary, ``related.ip`` from
        :func:`~xfrmwatch.output.siem.record_hosts`); None for a record of another shape
        than the decoder makes (the general way judges it)."""
        found = record_hosts(e)
        if found is None:
            return None
        p = e.policy
        sel = p.sel
        src = sel.src
        doc = self._start(e, head, start + policy_summary(p))
        family = sel.family
        _net(
            doc, sel.proto, host_of(src), host_of(sel.dst), sel.sport if sel.sport_mask == 0xFFFF else None,
            sel.dport if sel.dport_mask == 0xFFFF else None,
            family if family in _FAMILIES else ip_family(family, src.partition("/")[0]), p.dir,
        )  # fmt: skip
        return self._end(e, doc, found)

    def _sa(self, e: Any, head: msgspec.Raw | dict[str, Any], start: str) -> dict[str, Any] | None:
        """:meth:`_policy` for an event about one SA."""
        sa = e.sa
        if type(sa) is not ev.SA or type(sa.current) is not ev.Current:
            return None
        found = record_hosts(e)
        if found is None:
            return None
        doc = self._start(e, head, start + sa_summary(sa))
        _net(doc, *sa_net(sa))
        return self._end(e, doc, found)

    def _start(self, e: Any, head: msgspec.Raw | dict[str, Any], text: str) -> dict[str, Any]:
        """A document's first members (the short way)."""
        doc: dict[str, Any] = {
            "@timestamp": e.time,
            "ecs": _ECS,
            "message": text,
            "event": head,
            "host": self._host,
        }
        if e.process is not None:
            doc["process"] = {"name": e.process, "pid": e.nlmsg_pid}
        return doc

    @staticmethod
    def _end(e: Any, doc: dict[str, Any], found: dict[str, None]) -> dict[str, Any]:
        """A document's last members (the short way)."""
        if found:
            doc["related"] = {"ip": list(found)}
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



def _net(
    doc: dict[str, Any], proto: str, src: str | None = None, dst: str | None = None, sport: int | None = None,
    dport: int | None = None, family: str | None = None, direction: str | None = None, spi: str | None = None,
    nbytes: int | None = None, packets: int | None = None,
) -> None:  # fmt: skip
    """``source``, ``destination`` and ``network`` of a document, from a :class:`Net`'s fields."""
    del spi  # (not an ECS field)
    if src is not None:
        doc["source"] = {"ip": src} if sport is None else {"ip": src, "port": sport}
    if dst is not None:
        doc["destination"] = {"ip": dst} if dport is None else {"ip": dst, "port": dport}
    if nbytes is None:
        network = _network(proto, family, direction)
        if network is not None:
            doc["network"] = network
    else:
        doc["network"] = {**_network_fields(proto, family, direction), "bytes": nbytes, "packets": packets}


def _network_fields(proto: str, family: str | None, direction: str | None) -> dict[str, Any]:
    network: dict[str, Any] = {}
    keyword, number = iana(proto)
    if keyword is not None:
        network["transport"] = keyword
    if number is not None:
        network["iana_number"] = str(number)
    if family is not None:
        network["type"] = _NETWORK_TYPE[family]
    d = _DIRECTION.get(direction) if direction is not None else None
    if d is not None:
        network["direction"] = d
    return network


@functools.lru_cache(maxsize=1024)
def _network(proto: str, family: str | None, direction: str | None) -> msgspec.Raw | None:
    """The ``network`` object without counters, pre-encoded (a few distinct values)."""
    network = _network_fields(proto, family, direction)
    return msgspec.Raw(msgspec.json.encode(network)) if network else None
