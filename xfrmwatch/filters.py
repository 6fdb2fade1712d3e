"""Event filters in the spirit of ``ip xfrm``: ``--src/--dst/--proto/--spi/...``.

Each given dimension must match (AND); within a dimension, an event matches
when any of its values does (an SA's endpoint or its selector, a policy's
selector or one of its templates...), as :func:`xfrmwatch.subject.subject`
says: a derived tunnel event or an alert is about the reqid, SPIs and
endpoints it names (an alert: those of its triggering events), so
``--reqid 7`` shows the tunnel events and alerts of reqid 7.  ``overrun`` and
``malformed`` events always pass: a filter never hides a loss.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from . import events as ev
from .errors import UsageError
from .netlink import xfrm as x
from .subject import Subject, subject
from .tunnels import TunnelView

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
        """Whether ``e`` passes; each dimension is asked of :func:`~xfrmwatch.subject.subject`
        (so derived events and alerts are judged by what they are about)."""
        if isinstance(e, ALWAYS_SHOWN):
            return True
        if self.types and e.__struct_config__.tag not in self.types:
            return False
        if not (self.src or self.dst or self.proto or self.spi is not None or self.reqid is not None
                or self.mark or self.ifindex is not None or self.dir):  # fmt: skip
            return True
        return self._about(subject(e))

    def match_tunnel(self, v: TunnelView) -> bool:
        """Whether a tunnel is one the filter names, by its endpoints, protocol, current SPIs
        and reqid (``--type`` is about events, and a tunnel has both directions: both are
        ignored; a tunnel has no mark or interface, so ``--mark`` and ``--dev`` match none)."""
        spis = tuple(s for s in (v.spi_in, v.spi_out) if s)
        about = Subject(netns=v.netns, tunnel_id=(v.tunnel_id,), reqid=(v.reqid,), spi=spis, proto=(v.proto,),
                        src=(v.src,), dst=(v.dst,), dir=("in", "out"))  # fmt: skip
        return self._about(about)

    def _about(self, s: Subject) -> bool:
        src, dst = self.src, self.dst
        if src is not None and not any(_in(a, src) for a in s.src):
            return False
        if dst is not None and not any(_in(a, dst) for a in s.dst):
            return False
        if self.proto is not None and not any(p == self.proto or p == "any" for p in s.proto):
            return False
        if self.spi is not None and not any(int(x, 16) == self.spi for x in s.spi):
            return False
        if self.reqid is not None and self.reqid not in s.reqid:
            return False
        if self.mark is not None:
            value, mask = self.mark
            if not any(m.value & mask == value & mask for m in s.mark):
                return False
        if self.ifindex is not None and self.ifindex not in s.ifindex:
            return False
        return self.dir is None or self.dir in s.dir
