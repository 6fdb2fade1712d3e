"""Event filters in the spirit of ``ip xfrm``: ``--src/--dst/--proto/--spi/...``.

Each given dimension must match (AND); within a dimension, an event matches
when any of its values does (an SA's endpoint or its selector, a policy's
selector or one of its templates...).  ``overrun`` and ``malformed`` events
always pass: a filter never hides a loss.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import events as ev
from .errors import UsageError
from .netlink import xfrm as x

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ALWAYS_SHOWN = (ev.Overrun, ev.Malformed)


def parse_cidr(text: str, opt: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise UsageError(f"{opt}: {text!r} is not an address or CIDR prefix (e.g. 10.0.0.0/24)") from None


def parse_int(text: str, opt: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise UsageError(f"{opt}: {text!r} is not a number (decimal or 0x hex)") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise UsageError(f"{opt}: {text!r} is out of range (0 to 0xffffffff)")
    return value


def parse_mark(text: str, opt: str = "--mark") -> tuple[int, int]:
    value, _, mask = text.partition("/")
    return parse_int(value, opt), parse_int(mask, opt) if mask else 0xFFFFFFFF


def parse_proto(text: str, opt: str = "--proto") -> str:
    name = text.lower()
    if name == "ipcomp":
        name = "comp"
    if name not in x.XFRM_PROTO_NUMBERS:
        raise UsageError(f"{opt}: {text!r} is not an XFRM protocol (esp, ah, comp, route2, hao, any)")
    return name


def parse_dir(text: str, opt: str = "--dir") -> str:
    if text not in x.DIR_NUMBERS:
        raise UsageError(f"{opt}: {text!r} is not a direction (in, out, fwd)")
    return text


def parse_type(text: str, opt: str = "--type") -> str:
    if text not in ev.EVENT_TYPES:
        raise UsageError(f"{opt}: {text!r} is not an event type ({', '.join(ev.EVENT_TYPES)})")
    return text


def _in(addr_or_cidr: str, net: Network) -> bool:
    try:
        other = ipaddress.ip_network(addr_or_cidr, strict=False)
    except ValueError:
        return False
    return other.version == net.version and other.subnet_of(net)  # type: ignore[arg-type]


# --- what each event offers per dimension -------------------------------------------


def _sas(e: ev.Event) -> Iterator[ev.SA]:
    sa = getattr(e, "sa", None)
    if isinstance(sa, ev.SA):
        yield sa


def _policies(e: ev.Event) -> Iterator[ev.Policy]:
    pol = getattr(e, "policy", None)
    if isinstance(pol, ev.Policy):
        yield pol


def _selectors(e: ev.Event) -> Iterator[ev.Selector]:
    for sa in _sas(e):
        yield sa.sel
    for pol in _policies(e):
        yield pol.sel
    for name in ("policy_id",):
        pid = getattr(e, name, None)
        if isinstance(pid, ev.PolicyId):
            yield pid.sel
    sel = getattr(e, "sel", None)
    if isinstance(sel, ev.Selector):
        yield sel


def _endpoints(e: ev.Event, side: str) -> Iterator[str]:
    """Addresses on one side (``src`` or ``dst``): SA endpoints, then selectors."""
    for sa in _sas(e):
        yield getattr(sa, side)
    for pol in _policies(e):
        for t in pol.tmpl:
            yield getattr(t, side)
    for sel in _selectors(e):
        yield getattr(sel, side)
    if isinstance(e, ev.DelSA) and side == "dst":
        yield e.id.dst
    if isinstance(e, ev.AcquireEvent):
        yield getattr(e.acquire, side)
    if isinstance(e, ev.NewAE):
        yield getattr(e.ae, side)
    if isinstance(e, ev.Mapping):
        if side == "dst":
            yield e.id.dst
        else:
            yield e.old_src
            yield e.new_src
    if isinstance(e, ev.Migrate):
        for m in e.migrate:
            yield getattr(m, "old_" + side)
            yield getattr(m, "new_" + side)


def _protos(e: ev.Event) -> Iterator[str]:
    for sa in _sas(e):
        yield sa.proto
    for pol in _policies(e):
        for t in pol.tmpl:
            yield t.proto
    if isinstance(e, ev.DelSA):
        yield e.id.proto
    if isinstance(e, ev.FlushSA):
        yield e.proto
    if isinstance(e, ev.AcquireEvent):
        yield e.acquire.proto
    if isinstance(e, ev.NewAE):
        yield e.ae.proto
    if isinstance(e, ev.Mapping):
        yield e.id.proto
    if isinstance(e, ev.Report):
        yield e.proto
    if isinstance(e, ev.Migrate):
        for m in e.migrate:
            yield m.proto


def _spis(e: ev.Event) -> Iterator[str]:
    for sa in _sas(e):
        yield sa.spi
    for pol in _policies(e):
        for t in pol.tmpl:
            yield t.spi
    if isinstance(e, ev.DelSA):
        yield e.id.spi
    if isinstance(e, ev.AcquireEvent):
        yield e.acquire.spi
    if isinstance(e, ev.NewAE):
        yield e.ae.spi
    if isinstance(e, ev.Mapping):
        yield e.id.spi


def _reqids(e: ev.Event) -> Iterator[int]:
    for sa in _sas(e):
        yield sa.reqid
    for pol in _policies(e):
        for t in pol.tmpl:
            yield t.reqid
    if isinstance(e, (ev.NewAE,)):
        yield e.ae.reqid
    if isinstance(e, ev.Mapping):
        yield e.reqid
    if isinstance(e, ev.Migrate):
        for m in e.migrate:
            yield m.reqid


def _marks(e: ev.Event) -> Iterator[ev.Mark]:
    for sa in _sas(e):
        if sa.mark is not None:
            yield sa.mark
    for pol in _policies(e):
        if pol.mark is not None:
            yield pol.mark
    if isinstance(e, ev.NewAE) and e.ae.mark is not None:
        yield e.ae.mark


def _ifindexes(e: ev.Event) -> Iterator[int]:
    for sel in _selectors(e):
        if sel.ifindex:
            yield sel.ifindex
    for sa in _sas(e):
        if sa.offload is not None:
            yield sa.offload.ifindex


def _dirs(e: ev.Event) -> Iterator[str]:
    for pol in _policies(e):
        yield pol.dir
    pid = getattr(e, "policy_id", None)
    if isinstance(pid, ev.PolicyId):
        yield pid.dir
    for sa in _sas(e):
        if sa.dir is not None:
            yield sa.dir


@dataclass(frozen=True)
class Filter:
    """A conjunction of ``ip xfrm``-style conditions; empty matches everything."""

    src: Network | None = None
    dst: Network | None = None
    proto: str | None = None
    spi: int | None = None
    reqid: int | None = None
    mark: tuple[int, int] | None = None
    ifindex: int | None = None
    dir: str | None = None
    types: frozenset[str] = field(default_factory=frozenset)

    def match(self, e: ev.Event) -> bool:
        if isinstance(e, ALWAYS_SHOWN):
            return True
        if self.types and e.__struct_config__.tag not in self.types:
            return False
        src, dst = self.src, self.dst
        if src is not None and not any(_in(a, src) for a in _endpoints(e, "src")):
            return False
        if dst is not None and not any(_in(a, dst) for a in _endpoints(e, "dst")):
            return False
        if self.proto is not None and not any(
            p == self.proto or p == "any" for p in _protos(e)
        ):
            return False
        if self.spi is not None and not any(int(s, 16) == self.spi for s in _spis(e)):
            return False
        if self.reqid is not None and self.reqid not in _reqids(e):
            return False
        if self.mark is not None:
            value, mask = self.mark
            if not any(m.value & mask == value & mask for m in _marks(e)):
                return False
        if self.ifindex is not None and self.ifindex not in _ifindexes(e):
            return False
        return self.dir is None or self.dir in _dirs(e)
