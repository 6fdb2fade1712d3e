"""What an event is about: ONE answer, used by every consumer.

:func:`subject` reads an event once and returns its :class:`Subject`: the
namespace, and per dimension every value the event names, in the order met:
tunnel ids, reqids, SPIs, XFRM protocols, source and destination addresses
(SA endpoints, selectors, template endpoints, NAT and migration addresses),
directions, marks, interface indexes, and every address with the field path
it came from.  An alert is about what its triggering events are about (an alert
without events: what its ``group`` names).

The walk goes by field *name*, not by event class, so derived events are read
the same way whatever fields they carry (the tunnel events' flat ``reqid``,
``proto``, ``src``, ``dst``, ``tunnel_id``, ``spi``, ``spi_in``, ``spi_out``,
``old_spis``, ``new_spis``, ``spis``), and records nested under ``sa``, ``id``,
``policy``, ``policy_id``, ``sel``, ``acquire``, ``ae``, ``migrate``, ``tmpl``,
``offload`` and ``kmaddress`` are read by the names of their fields.

Consumers: ``monitor``'s filters (:mod:`xfrmwatch.filters`), the journal fields
and the syslog SD-PARAMs (:meth:`Subject.values`), the webhook, exec and
Alertmanager fields (:meth:`Subject.first`), the ECS ``related.ip`` and OCSF
observables (:attr:`Subject.addresses`), the audit table (:meth:`Subject.describe`).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from typing import Any

import msgspec

from . import events as ev

__all__ = ["DIMENSIONS", "Subject", "subject"]

#: the dimensions a consumer prints, in this order (journal fields, SD-PARAMs)
DIMENSIONS = ("spi", "reqid", "src", "dst", "proto", "dir", "tunnel_id")

#: field name -> dimension, for the values an event (or a record in it) carries
_VALUE_FIELDS: dict[str, str] = {
    "tunnel_id": "tunnel_id",
    "reqid": "reqid",
    "spi": "spi", "spi_in": "spi", "spi_out": "spi", "new_spis": "spi", "old_spis": "spi", "spis": "spi",
    "proto": "proto",
    "src": "src", "old_src": "src", "new_src": "src",
    "dst": "dst", "old_dst": "dst", "new_dst": "dst",
    "dir": "dir",
    "mark": "mark",
    "ifindex": "ifindex",
    "coaddr": "address", "local": "address", "remote": "address",
}  # fmt: skip
#: read first, so the SA an event is about leads (then the outbound SA of a tunnel)
_FIELD_ORDER = {"spi": 0, "spi_out": 1, "spi_in": 2}
#: fields holding records (or lists of records) to read in turn
_NESTED = frozenset({"sa", "id", "policy", "policy_id", "sel", "acquire", "ae", "migrate", "tmpl", "offload", "kmaddress"})
#: in a selector, ``proto`` is the IP protocol of the traffic, not the XFRM protocol
_SELECTOR_SKIP = frozenset({"proto"})
_UNSPECIFIED = frozenset({"", "0.0.0.0", "::", "0.0.0.0/0", "::/0"})
_ZERO_SPI = "0x00000000"


def _host(value: str) -> str | None:
    """The address of a plain address or a single-host prefix (/32, /128), else None."""
    addr, _, plen = value.partition("/")
    if value in _UNSPECIFIED or addr in _UNSPECIFIED:
        return None
    if plen and not ((plen == "32" and ":" not in addr) or plen == "128"):
        return None
    if _canonical(addr):
        return addr
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        return None
    return addr


def _canonical(addr: str) -> bool:
    """An address exactly as inet_ntop writes it (every address the decoder makes): valid,
    and quicker to tell than by :func:`ipaddress.ip_address`, which judges the rest."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, addr)) == addr
    except (OSError, ValueError):
        return False


class Subject(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What one event is about; each dimension lists distinct values in the order met.
    (A frozen struct: made for every event an output renders, it must be cheap to build.)"""

    netns: str
    tunnel_id: tuple[str, ...] = ()
    reqid: tuple[int, ...] = ()
    spi: tuple[str, ...] = ()
    proto: tuple[str, ...] = ()
    src: tuple[str, ...] = ()
    dst: tuple[str, ...] = ()
    dir: tuple[str, ...] = ()
    mark: tuple[ev.Mark, ...] = ()
    ifindex: tuple[int, ...] = ()
    #: every specified host address, with the event field path it came from
    addresses: tuple[tuple[str, str], ...] = ()

    def values(self) -> dict[str, list[str]]:
        """Per dimension of :data:`DIMENSIONS`, the values as strings, leaving out what names
        nothing in particular: zero SPIs, zero template reqids, wildcard addresses."""
        out: dict[str, list[str]] = {}
        for dim in DIMENSIONS:
            vals = [str(v) for v in getattr(self, dim)]
            if dim in ("src", "dst"):
                vals = [v for v in vals if v not in _UNSPECIFIED]
            elif dim == "spi":
                vals = [v for v in vals if v != _ZERO_SPI]
            out[dim] = vals
        return out

    def first(self) -> dict[str, str]:
        """``netns``, and the first value of each dimension the event names (for one-value
        fields: webhook and exec variables, Alertmanager labels)."""
        out = {"netns": self.netns}
        for dim, vals in self.values().items():
            if vals:
                out[dim] = vals[0]
        return out

    def describe(self) -> str:
        """One line: ``esp spi 0x... 192.0.2.1 -> 192.0.2.2 reqid 1 dir out`` (what is known)."""
        f = self.first()
        parts = [f["proto"]] if "proto" in f else []
        if "spi" in f:
            parts.append(f"spi {f['spi']}")
        if "src" in f or "dst" in f:
            parts.append(f"{f.get('src', '*')} -> {f.get('dst', '*')}")
        for dim in ("reqid", "dir"):
            if dim in f:
                parts.append(f"{dim} {f[dim]}")
        return " ".join(parts) or "-"


@functools.cache
def _fields(cls: type[msgspec.Struct]) -> tuple[str, ...]:
    """The fields of ``cls`` the walk reads (records to descend into, values of a dimension)."""
    names = [n for n in cls.__struct_fields__ if n in _NESTED or n in _VALUE_FIELDS]
    return tuple(sorted(names, key=lambda n: _FIELD_ORDER.get(n, len(_FIELD_ORDER))))


class _Walk:
    __slots__ = ("addresses", "dims")

    def __init__(self) -> None:
        self.dims: dict[str, dict[Any, None]] = {d: {} for d in (*DIMENSIONS, "mark", "ifindex")}
        self.addresses: dict[tuple[str, str], None] = {}

    def value(self, dim: str, name: str, path: str, v: Any, in_template: bool) -> None:
        if v is None:
            return
        if isinstance(v, (list, tuple)):
            for x in v:
                self.value(dim, name, path, x, in_template)
            return
        if dim == "reqid" and in_template and not v:
            return  # a template's reqid 0 means "any"
        if dim == "ifindex" and not v:
            return
        if dim in ("src", "dst", "address") and isinstance(v, str):
            host = _host(v)
            if host is not None:
                self.addresses[(path + name, host)] = None
            if dim == "address":
                return
        self.dims[dim][v] = None

    def record(self, obj: msgspec.Struct, path: str, *, selector: bool = False, in_template: bool = False) -> None:
        for name in _fields(type(obj)):
            v = getattr(obj, name)
            if v is None:
                continue
            if name in _NESTED:
                sub = f"{path}{name}."
                items = v if isinstance(v, list) else [v]
                for item in items:
                    if isinstance(item, msgspec.Struct):
                        self.record(item, sub, selector=name == "sel", in_template=name in ("tmpl", "migrate"))
                continue
            dim = _VALUE_FIELDS.get(name)
            if dim is None or (selector and name in _SELECTOR_SKIP):
                continue
            self.value(dim, name, path, v, in_template)

    def event(self, e: Any, path: str = "") -> None:
        if isinstance(e, ev.Alert):
            for t in e.events:
                self.event(t, path + "events.")
            if not e.events:
                for key, value in e.group.items():
                    dim = _VALUE_FIELDS.get(key.rsplit(".", 1)[-1])
                    if dim is not None and dim not in ("mark", "ifindex", "address"):
                        self.value(dim, key, "group.", int(value) if dim == "reqid" and value.isdigit() else value, False)
            return
        self.record(e, path)


def subject(e: ev.Event) -> Subject:
    """What ``e`` is about (see the module's description)."""
    w = _Walk()
    w.event(e)
    d = w.dims
    return Subject(
        netns=e.netns,
        tunnel_id=tuple(d["tunnel_id"]),
        reqid=tuple(d["reqid"]),
        spi=tuple(d["spi"]),
        proto=tuple(d["proto"]),
        src=tuple(d["src"]),
        dst=tuple(d["dst"]),
        dir=tuple(d["dir"]),
        mark=tuple(d["mark"]),
        ifindex=tuple(d["ifindex"]),
        addresses=tuple(w.addresses),
    )
