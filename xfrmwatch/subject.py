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
import typing
from collections.abc import Callable
from typing import Any

import msgspec

from . import events as ev

__all__ = ["DIMENSIONS", "Subject", "addresses", "host", "hosts", "subject"]

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
    """The address of a plain address or a single-host prefix (/32, /128), else None.
    An address exactly as inet_ntop writes it (every address the decoder makes) is told
    valid by a round trip through inet_pton, quicker than :func:`ipaddress.ip_address`,
    which judges the rest."""
    addr, _, plen = value.partition("/")
    if addr in _UNSPECIFIED:  # (so is any value in it)
        return None
    if plen and not ((plen == "32" and ":" not in addr) or plen == "128"):
        return None
    family = _AF_INET6 if ":" in addr else _AF_INET
    try:
        if _ntop(family, _pton(family, addr)) == addr:
            return addr
    except (OSError, ValueError):
        pass
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        return None
    return addr


_AF_INET, _AF_INET6, _pton, _ntop = socket.AF_INET, socket.AF_INET6, socket.inet_pton, socket.inet_ntop


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


_ADDRESS_DIMS = frozenset({"src", "dst", "address"})
#: what a walk collects: every dimension and the addresses with their paths; the addresses
#: alone (with their paths); the addresses alone, without paths
_EVERYTHING, _ADDRESSES, _HOSTS = 0, 1, 2
_ALL_DIMS = (*DIMENSIONS, "mark", "ifindex")

#: one step of a walk: (field name, dimension or None for a record to descend into, the
#: nested records' flags (selector, in a template) or the value's (address, dimension kept))
_Step = tuple[str, str | None, bool, bool]


@functools.cache
def _plan(cls: type[msgspec.Struct], selector: bool, mode: int) -> tuple[_Step, ...]:
    """What the walk does with a record of ``cls``, decided once per class and context:
    ``selector``: the record is a selector (its ``proto`` is not the XFRM protocol);
    ``mode``: :data:`_EVERYTHING`, or only the fields that can lead to an address."""
    steps: list[_Step] = []
    for name in _fields(cls):
        if name in _NESTED:
            steps.append((name, None, name == "sel", name in ("tmpl", "migrate")))
            continue
        dim = _VALUE_FIELDS[name]
        if selector and name in _SELECTOR_SKIP:
            continue
        is_address = dim in _ADDRESS_DIMS
        if mode and not is_address:
            continue
        steps.append((name, dim, is_address, not mode and dim != "address"))
    return tuple(steps)


#: value -> :func:`_host` of it, for the values seen lately (emptied when full: cheaper than an
#: LRU when nearly every address is new, as in a burst, and as quick when they repeat)
_HOSTS_SEEN: dict[str, str | None] = {}
_HOSTS_SEEN_MAX = 4096
_UNSEEN = object()


def host(value: str) -> str | None:
    """The host address a field's value names (a plain address or a /32 or /128 prefix, not
    unspecified), else None: what the walk puts in :attr:`Subject.addresses` (remembered)."""
    h = _HOSTS_SEEN.get(value, _UNSEEN)
    if h is _UNSEEN:
        return _host_seen(value)
    return h  # type: ignore[return-value]


def _host_seen(value: str) -> str | None:
    """:func:`_host`, remembered."""
    if len(_HOSTS_SEEN) >= _HOSTS_SEEN_MAX:
        _HOSTS_SEEN.clear()
    h = _HOSTS_SEEN[value] = _host(value)
    return h


#: the walk of one class in one context, compiled (see :func:`_compile`)
_Dims = dict[str, dict[Any, None]]
#: addresses found: (path, host) pairs, or (mode _HOSTS) hosts
_Addresses = dict[Any, None]
_Walker = Callable[[Any, str, _Dims, _Addresses], None]
_WALKERS: dict[tuple[type, bool, bool, int], _Walker] = {}


def _walker(cls: type, selector: bool, in_template: bool, mode: int) -> _Walker:
    key = (cls, selector, in_template, mode)
    walk = _WALKERS.get(key)
    if walk is None:
        walk = _WALKERS[key] = _compile(cls, selector, in_template, mode)
    return walk


def _compile(cls: type, selector: bool, in_template: bool, mode: int) -> _Walker:
    """The steps of :func:`_plan` for ``cls`` as one function of straight-line code (as
    :mod:`dataclasses` makes its methods): an event is read field by field without a loop
    over field names per record.  The common value (one string, one number) is handled
    inline; anything else (lists, a reqid or ifindex that may mean "none") by
    :func:`_value`."""
    body: list[str] = []
    scope: dict[str, Any] = {
        "_descend": _descend, "_value": _value, "_seen": _HOSTS_SEEN.get, "_host": _host_seen, "_UNSEEN": _UNSEEN,
    }  # fmt: skip
    hints = typing.get_type_hints(cls) if isinstance(cls, type) and issubclass(cls, msgspec.Struct) else {}
    for name, dim, flag_a, flag_b in _plan(cls, selector, mode):
        body += [f"    v = obj.{name}", "    if v is not None:"]
        if dim is None:
            sub, many = _record_class(hints.get(name))
            call = f"(v, path + {name + '.'!r}, dims, addrs, {flag_a}, {flag_b}, {mode})"
            if sub is None:
                body.append(f"        _descend{call}")
                continue
            # the record's class is known: its own walk, directly
            scope[f"W_{name}"] = _walker(sub, flag_a, flag_b, mode)
            scope[f"C_{name}"] = sub
            item = f"(x, path + {name + '.'!r}, dims, addrs)"
            if many:
                body += [
                    "        if type(v) is list:",
                    "            for x in v:",
                    f"                if type(x) is C_{name}:",
                    f"                    W_{name}{item}",
                    "                else:",
                    f"                    _descend{call.replace('(v,', '([x],')}",
                    "        else:",
                    f"            _descend{call}",
                ]
            else:
                body += [
                    f"        if type(v) is C_{name}:",
                    f"            W_{name}{item.replace('(x,', '(v,')}",
                    "        else:",
                    f"            _descend{call}",
                ]
        elif flag_a:
            body += [
                "        if type(v) is str:",
                "            h = _seen(v, _UNSEEN)",
                "            if h is _UNSEEN:",
                "                h = _host(v)",
                "            if h is not None:",
                f"                addrs[{'h' if mode == _HOSTS else f'(path + {name!r}, h)'}] = None",
                f"            {f'dims[{dim!r}][v] = None' if flag_b else 'pass'}",
                "        else:",
                f"            _value(dims, addrs, {dim!r}, {name!r}, path, v, {in_template}, True, {flag_b}, {mode})",
            ]
        elif dim in ("reqid", "ifindex"):
            body.append(f"        _value(dims, addrs, {dim!r}, {name!r}, path, v, {in_template}, False, True)")
        else:
            body += [
                "        if type(v) is str or type(v) is int:",
                f"            dims[{dim!r}][v] = None",
                "        else:",
                f"            _value(dims, addrs, {dim!r}, {name!r}, path, v, {in_template}, False, True)",
            ]
    src = "def walk(obj, path, dims, addrs):\n" + ("\n".join(body) or "    pass") + "\n"
    exec(compile(src, f"<subject walk of {cls.__name__}>", "exec"), scope)
    walk: _Walker = scope["walk"]
    return walk


def _record_class(hint: Any) -> tuple[type | None, bool]:
    """The record class a field holds, if one (``X``, ``X | None``), and whether a list of them."""
    many = typing.get_origin(hint) is list
    if many:
        (hint,) = typing.get_args(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) else [hint]
    if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], msgspec.Struct):
        return args[0], many
    return None, False


def _descend(
    v: Any, path: str, dims: _Dims, addrs: _Addresses, selector: bool, in_template: bool, mode: int
) -> None:
    """Read the record (or each record of the list) ``v`` found at ``path``."""
    for item in v if isinstance(v, list) else (v,):
        if isinstance(item, msgspec.Struct):
            _walker(type(item), selector, in_template, mode)(item, path, dims, addrs)


def _value(
    dims: _Dims, addrs: _Addresses, dim: str, name: str, path: str, v: Any, in_template: bool, is_address: bool,
    keep: bool, mode: int = 0,
) -> None:  # fmt: skip
    """Note the value ``v`` of field ``name`` (at ``path``) in its dimension (``keep``) and, for an
    address field (``is_address``), its host address (with its path, unless ``mode`` is
    :data:`_HOSTS`)."""
    if isinstance(v, (list, tuple)):
        for x in v:
            if x is not None:
                _value(dims, addrs, dim, name, path, x, in_template, is_address, keep, mode)
        return
    if not v and (dim == "ifindex" or (dim == "reqid" and in_template)):
        return  # no interface; a template's reqid 0 means "any"
    if is_address and isinstance(v, str):
        h = host(v)
        if h is not None:
            addrs[h if mode == _HOSTS else (path + name, h)] = None
    if keep:
        dims[dim][v] = None


def _read(e: Any, path: str, dims: _Dims, addrs: _Addresses, mode: int) -> None:
    """Walk one event: every value per dimension (``mode`` :data:`_EVERYTHING`) and every
    address, in the order met."""
    if type(e) is not ev.Alert:
        _walker(type(e), False, False, mode)(e, path, dims, addrs)
        return
    for t in e.events:
        _read(t, path + "events.", dims, addrs, mode)
    if not e.events:
        for key, value in e.group.items():
            dim = _VALUE_FIELDS.get(key.rsplit(".", 1)[-1])
            if dim is not None and dim not in ("mark", "ifindex", "address"):
                if mode and dim not in _ADDRESS_DIMS:
                    continue
                v = int(value) if dim == "reqid" and value.isdigit() else value
                _value(dims, addrs, dim, key, "group.", v, False, dim in _ADDRESS_DIMS, not mode, mode)


_NO_DIMS: _Dims = {}


def addresses(e: ev.Event) -> tuple[tuple[str, str], ...]:
    """:attr:`Subject.addresses` of ``e`` alone (a walk of the fields that can hold one)."""
    addrs: _Addresses = {}
    _read(e, "", _NO_DIMS, addrs, _ADDRESSES)
    return tuple(addrs)


def hosts(e: ev.Event) -> list[str]:
    """The addresses of :attr:`Subject.addresses` without their paths, each once, in order."""
    found: dict[str, None] = {}
    _read(e, "", _NO_DIMS, found, _HOSTS)
    return list(found)


def subject(e: ev.Event) -> Subject:
    """What ``e`` is about (see the module's description)."""
    d: _Dims = {dim: {} for dim in _ALL_DIMS}
    addrs: _Addresses = {}
    _read(e, "", d, addrs, _EVERYTHING)
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
        addresses=tuple(addrs),
    )
