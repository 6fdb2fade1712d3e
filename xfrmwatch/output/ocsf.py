"""Events as OCSF 1.3.0 events, for SIEM ingestion (Security Lake, Splunk, ...).

:class:`OcsfRenderer` turns one event into one OCSF event (a nested ``dict``;
the caller encodes it).  It is a pure function of the event plus the host name
given at construction.  The class mapping and field table are in
``docs/formats.md``; the JSON Schema of the output is
``xfrmwatch/schema/ocsf.schema.json``.

Classes used (OCSF 1.3.0; Tunnel Activity first appeared in 1.2.0, so 1.1.0
cannot carry SA lifecycle events):

* Tunnel Activity (4014, Network Activity): SA lifecycle and SA-scoped kernel
  messages, rekey tracking (Open 1, Close 2, Renew 3, Other 99);
* Device Config State Change (5019, Discovery): policy changes and the default
  policy (activity Log 1: reported by a kernel notification), ``state_id``
  Enabled 2 / Disabled 1 / Other 99;
* Device Config State (5002, Discovery): audit snapshot records and SAD/SPD
  info replies (activity Collect 2);
* Detection Finding (2004, Findings): alerts (Create 1, status New 1);
* Base Event (0, Uncategorized): REPORT, overrun, malformed, resync (Other 99).

``type_uid`` is ``class_uid * 100 + activity_id``; ``time`` is epoch
milliseconds; ``unmapped`` holds the native event minus ``type``, ``time``,
``kind``, ``rule`` and ``process`` (plus ``nlmsg_pid`` when ``process`` is
set), which are mapped; nested records are kept whole.
"""

from __future__ import annotations

import socket
from typing import Any, NamedTuple

from .. import __version__
from .. import events as ev
from ..levels import severity
from .render import event_type
from .siem import (
    IPSEC_PROTOS,
    SEVERITY_NAMES,
    Net,
    addresses,
    alert_uid,
    epoch_ms,
    iana,
    message,
    native,
    net,
    record_addresses,
)

OCSF_VERSION = "1.3.0"
PRODUCT = "xfrmwatch"

TUNNEL = 4014
CONFIG_CHANGE = 5019
CONFIG_STATE = 5002
DETECTION = 2004
BASE = 0

#: class_uid -> (class_name, category_uid, category_name, {activity_id: activity caption})
CLASSES: dict[int, tuple[str, int, str, dict[int, str]]] = {
    TUNNEL: (
        "Tunnel Activity",
        4,
        "Network Activity",
        {0: "Unknown", 1: "Open", 2: "Close", 3: "Renew", 99: "Other"},
    ),
    CONFIG_CHANGE: (
        "Device Config State Change",
        5,
        "Discovery",
        {0: "Unknown", 1: "Log", 2: "Collect", 99: "Other"},
    ),
    CONFIG_STATE: (
        "Device Config State",
        5,
        "Discovery",
        {0: "Unknown", 1: "Log", 2: "Collect", 99: "Other"},
    ),
    DETECTION: (
        "Detection Finding",
        2,
        "Findings",
        {0: "Unknown", 1: "Create", 2: "Update", 3: "Close", 99: "Other"},
    ),
    BASE: ("Base Event", 0, "Uncategorized", {0: "Unknown", 99: "Other"}),
}


class Spec(NamedTuple):
    """How one event type maps: class, activity, and the class's status/state values."""

    class_uid: int
    activity_id: int
    #: ``activity_name`` when ``activity_id`` is 99 (Other)
    other: str | None = None
    #: (status_id, status)
    status: tuple[int, str] | None = None
    #: (state_id, state) of Device Config State Change
    state: tuple[int, str] | None = None


_SUCCESS, _FAILURE = (1, "Success"), (2, "Failure")
_ENABLED, _DISABLED = (2, "Enabled"), (1, "Disabled")

#: event type (``expire/hard``, ``polexpire/hard`` for hard expiries) -> Spec
OCSF_TYPES: dict[str, Spec] = {
    "newsa": Spec(TUNNEL, 1),
    "updsa": Spec(TUNNEL, 99, "Update"),
    "delsa": Spec(TUNNEL, 2),
    "expire": Spec(TUNNEL, 99, "Soft Expire"),
    "expire/hard": Spec(TUNNEL, 2),
    "flushsa": Spec(TUNNEL, 2),
    "newae": Spec(TUNNEL, 99, "Counters"),
    "acquire": Spec(TUNNEL, 99, "Acquire"),
    "mapping": Spec(TUNNEL, 99, "NAT Mapping Change"),
    "migrate": Spec(TUNNEL, 99, "Migrate"),
    "rekey_started": Spec(TUNNEL, 3, status=(99, "Started")),
    "rekey_completed": Spec(TUNNEL, 3, status=_SUCCESS),
    "rekey_overdue": Spec(TUNNEL, 3, status=(99, "Overdue")),
    "tunnel_up": Spec(TUNNEL, 1, status=_SUCCESS),
    "tunnel_down": Spec(TUNNEL, 2),
    "traffic_stalled": Spec(TUNNEL, 99, "Traffic Stalled", status=_FAILURE),
    "traffic_resumed": Spec(TUNNEL, 99, "Traffic Resumed", status=_SUCCESS),
    "newpolicy": Spec(CONFIG_CHANGE, 1, state=_ENABLED),
    "updpolicy": Spec(CONFIG_CHANGE, 1, state=(99, "Updated")),
    "delpolicy": Spec(CONFIG_CHANGE, 1, state=_DISABLED),
    "polexpire": Spec(CONFIG_CHANGE, 1, state=(99, "Soft Expired")),
    "polexpire/hard": Spec(CONFIG_CHANGE, 1, state=_DISABLED),
    "flushpolicy": Spec(CONFIG_CHANGE, 1, state=_DISABLED),
    "default_policy": Spec(CONFIG_CHANGE, 1, state=(99, "Default Policy Changed")),
    "sadinfo": Spec(CONFIG_STATE, 2),
    "spdinfo": Spec(CONFIG_STATE, 2),
    "sa_state": Spec(CONFIG_STATE, 2),
    "policy_state": Spec(CONFIG_STATE, 2),
    "netns_state": Spec(CONFIG_STATE, 2),
    "report": Spec(BASE, 99, "Report"),
    "overrun": Spec(BASE, 99, "Overrun", status=_FAILURE),
    "malformed": Spec(BASE, 99, "Malformed", status=_FAILURE),
    "resync": Spec(BASE, 99, "Resync"),
    "alert": Spec(DETECTION, 1, status=(1, "New")),
}


def _head(spec: Spec) -> dict[str, Any]:
    cname, cat, catname, acts = CLASSES[spec.class_uid]
    aname = acts[spec.activity_id]
    return {
        "class_uid": spec.class_uid,
        "class_name": cname,
        "category_uid": cat,
        "category_name": catname,
        "activity_id": spec.activity_id,
        "activity_name": spec.other if spec.activity_id == 99 and spec.other else aname,
        "type_uid": spec.class_uid * 100 + spec.activity_id,
        "type_name": f"{cname}: {aname}",
    }


_HEADS = {k: _head(s) for k, s in OCSF_TYPES.items()}
_DATASET = {"event": "xfrmwatch.events", "alert": "xfrmwatch.alerts", "state": "xfrmwatch.state"}
_DIRECTION = {"in": (1, "Inbound"), "out": (2, "Outbound"), "fwd": (99, "Forward")}
_PRODUCT = {"name": PRODUCT, "vendor_name": PRODUCT, "version": __version__}
_IP_VERSION = {"inet": 4, "inet6": 6}


_EXPIRES = frozenset({ev.Expire, ev.PolExpire})
#: see :meth:`OcsfRenderer._fixed`
_Fixed = tuple[str, Spec, dict[str, Any], int, str]


def ocsf_spec(e: ev.Event) -> tuple[str, Spec]:
    """(table key, Spec) of an event; unknown types are Base Events (Other)."""
    t = event_type(e)
    if isinstance(e, (ev.Expire, ev.PolExpire)) and e.hard:
        t += "/hard"
    spec = OCSF_TYPES.get(t)
    if spec is None:
        return t, Spec(BASE, 99, t)
    return t, spec


def _endpoint(ip: str, port: int | None) -> dict[str, Any]:
    d: dict[str, Any] = {"ip": ip}
    if port is not None:
        d["port"] = port
    return d


def connection_info(n: Net | None) -> dict[str, Any]:
    d_id, d_name = _DIRECTION.get(n.dir or "", (0, "Unknown")) if n is not None else (0, "Unknown")
    ci: dict[str, Any] = {"direction_id": d_id, "direction": d_name}
    if n is None:
        return ci
    keyword, number = iana(n.proto)
    if number is not None:
        ci["protocol_num"] = number
    if keyword is not None:
        ci["protocol_name"] = keyword
    if n.family is not None:
        ci["protocol_ver_id"] = _IP_VERSION[n.family]
    return ci


def _endpoints(n: Net, doc: dict[str, Any]) -> None:
    if n.src is not None:
        doc["src_endpoint"] = _endpoint(n.src, n.sport)
    if n.dst is not None:
        doc["dst_endpoint"] = _endpoint(n.dst, n.dport)


class OcsfRenderer:
    """One event -> one OCSF 1.3.0 event (a nested dict)."""

    __slots__ = ("_fixeds", "hostname")

    def __init__(self, hostname: str | None = None) -> None:
        #: ``device.hostname`` (``unmapped.hostname`` on Base Events)
        self.hostname = socket.gethostname() if hostname is None else hostname
        #: (class, kind, hard) -> :meth:`_fixed` of its events
        self._fixeds: dict[tuple[type, str, bool], _Fixed] = {}

    @staticmethod
    def _fixed(e: ev.Event) -> _Fixed:
        """What an event's document takes from its type alone (an alert's: and its rule's
        level): (event type, Spec, the class and activity members, severity_id, log_name)."""
        key, spec = ocsf_spec(e)
        head = _HEADS.get(key)
        return event_type(e), spec, head if head is not None else _head(spec), severity(e).ocsf, _DATASET.get(e.kind, "xfrmwatch.events")

    def __call__(self, e: ev.Event) -> dict[str, Any]:
        cls = type(e)
        if cls is ev.Alert:
            fixed = self._fixed(e)
        else:
            # the same for every event of a class, kind and hardness (an alert's severity
            # is its rule's)
            key = (cls, e.kind, cls in _EXPIRES and e.hard)  # type: ignore[attr-defined]
            fixed = self._fixeds.get(key)  # type: ignore[assignment]
            if fixed is None:
                fixed = self._fixeds[key] = self._fixed(e)
        t, spec, head, sev, log_name = fixed
        doc = dict(head)
        cls_uid = spec.class_uid
        metadata: dict[str, Any] = {
            "version": OCSF_VERSION,
            "product": _PRODUCT,
            "event_code": t,
            "log_name": log_name,
            "log_provider": PRODUCT,
            "original_time": e.time,
        }
        doc["severity_id"] = sev
        doc["severity"] = SEVERITY_NAMES[sev]
        doc["time"] = epoch_ms(e.time)
        doc["timezone_offset"] = 0
        doc["message"] = message(e)
        doc["metadata"] = metadata
        if spec.status is not None:
            doc["status_id"], doc["status"] = spec.status
        unmapped = native(e)
        if cls_uid == BASE:
            if isinstance(e, ev.Malformed):
                doc["status_detail"] = e.reason
            elif isinstance(e, ev.Overrun):
                doc["status_detail"] = e.detail
            unmapped["hostname"] = self.hostname
        else:
            metadata["profiles"] = ["host"]
            doc["device"] = {"hostname": self.hostname, "type_id": 0, "type": "Unknown"}
            if e.process is not None:
                doc["actor"] = {"process": {"name": e.process, "pid": e.nlmsg_pid}}
        if cls_uid == TUNNEL:
            self._tunnel(e, doc)
        elif cls_uid == CONFIG_CHANGE and spec.state is not None:
            doc["state_id"], doc["state"] = spec.state
        elif isinstance(e, ev.Alert):
            self._finding(e, doc)
        found = record_addresses(e)
        obs = [
            {"name": "unmapped." + path, "type_id": 2, "type": "IP Address", "value": a}
            for path, a in (addresses(e) if found is None else found)
        ]
        if obs:
            doc["observables"] = obs
        doc["unmapped"] = unmapped
        return doc

    @staticmethod
    def _tunnel(e: ev.Event, doc: dict[str, Any]) -> None:
        n = net(e)
        doc["connection_info"] = connection_info(n)
        if isinstance(e, ev.RekeyCompleted):
            doc["duration"] = round(e.duration_seconds * 1000)
        if n is None:
            return
        _endpoints(n, doc)
        if n.proto in IPSEC_PROTOS:
            doc["protocol_name"] = "IPsec"
        if n.spi is not None:
            doc["session"] = {"uid": n.spi}
        if n.bytes is not None:
            doc["traffic"] = {"bytes": n.bytes, "packets": n.packets}

    @staticmethod
    def _finding(a: ev.Alert, doc: dict[str, Any]) -> None:
        r = a.rule
        info: dict[str, Any] = {
            "uid": alert_uid(a),
            "title": r.title,
            "analytic": {"uid": r.id, "name": r.title, "type_id": 1, "type": "Rule"},
        }
        if r.tags:
            info["types"] = list(r.tags)
        if a.events:
            times = [epoch_ms(t.time) for t in a.events]
            doc["start_time"] = info["first_seen_time"] = min(times)
            doc["end_time"] = info["last_seen_time"] = max(times)
        doc["finding_info"] = info
        evidences: list[dict[str, Any]] = []
        seen: set[tuple[Any, ...]] = set()
        for trig in a.events:
            n = net(trig)
            if n is None or not (n.src or n.dst) or n.flow() in seen:
                continue
            seen.add(n.flow())
            evidence: dict[str, Any] = {"connection_info": connection_info(n)}
            _endpoints(n, evidence)
            evidences.append(evidence)
        if evidences:
            doc["evidences"] = evidences
