"""What an event is about: the tunnel, SAs, policies and endpoints it names.

:func:`attributes` lists, per dimension, every value an event names (an
alert: those of its triggering events).
"""

from __future__ import annotations

from typing import Any

from . import events as ev

__all__ = ["ATTRIBUTES", "attributes", "subject_fields"]

_UNSPEC_ADDRS = frozenset({"", "0.0.0.0", "::", "0.0.0.0/0", "::/0"})
_ZERO_SPI = "0x00000000"


#: the attribute names :func:`attributes` returns, in order
ATTRIBUTES = ("spi", "reqid", "src", "dst", "proto", "dir")


class _Attrs:
    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[str, list[str]] = {k: [] for k in ATTRIBUTES}

    def add(self, key: str, value: object) -> None:
        if value is None:
            return
        s = str(value)
        if key in ("src", "dst") and s in _UNSPEC_ADDRS:
            return
        if key == "spi" and s == _ZERO_SPI:
            return
        if s and s not in self.values[key]:
            self.values[key].append(s)

    def sa(self, sa: ev.SA) -> None:
        self.add("spi", sa.spi)
        self.add("reqid", sa.reqid)
        self.add("src", sa.src)
        self.add("dst", sa.dst)
        self.add("proto", sa.proto)
        self.add("dir", sa.dir)

    def sel(self, sel: ev.Selector) -> None:
        self.add("src", sel.src)
        self.add("dst", sel.dst)

    def policy(self, p: ev.Policy) -> None:
        self.sel(p.sel)
        self.add("dir", p.dir)
        for t in p.tmpl:
            self.add("proto", t.proto)
            if t.reqid:
                self.add("reqid", t.reqid)
            self.add("spi", t.spi)
            self.add("src", t.src)
            self.add("dst", t.dst)

    def event(self, e: Any) -> None:
        if isinstance(e, (ev.SaEvent, ev.Expire, ev.SaState)):
            self.sa(e.sa)
        elif isinstance(e, (ev.DelSA, ev.Mapping)):
            self.add("spi", e.id.spi)
            self.add("dst", e.id.dst)
            self.add("proto", e.id.proto)
            if isinstance(e, ev.DelSA):
                if e.sa is not None:
                    self.sa(e.sa)
            else:
                self.add("reqid", e.reqid)
                self.add("src", e.old_src)
                self.add("src", e.new_src)
        elif isinstance(e, (ev.PolicyEvent, ev.PolExpire, ev.PolicyState)):
            self.policy(e.policy)
        elif isinstance(e, ev.DelPolicy):
            if e.policy is not None:
                self.policy(e.policy)
            else:
                self.sel(e.policy_id.sel)
                self.add("dir", e.policy_id.dir)
        elif isinstance(e, ev.AcquireEvent):
            a = e.acquire
            self.add("spi", a.spi)
            self.add("src", a.src)
            self.add("dst", a.dst)
            self.add("proto", a.proto)
            self.policy(e.policy)
        elif isinstance(e, ev.NewAE):
            ae = e.ae
            self.add("spi", ae.spi)
            self.add("reqid", ae.reqid)
            self.add("src", ae.src)
            self.add("dst", ae.dst)
            self.add("proto", ae.proto)
        elif isinstance(e, ev.Report):
            self.add("proto", e.proto)
            self.sel(e.sel)
        elif isinstance(e, ev.Migrate):
            self.add("dir", e.policy_id.dir)
            for m in e.migrate:
                self.add("proto", m.proto)
                if m.reqid:
                    self.add("reqid", m.reqid)
                for addr in (m.old_src, m.new_src):
                    self.add("src", addr)
                for addr in (m.old_dst, m.new_dst):
                    self.add("dst", addr)
        elif isinstance(e, ev.FlushSA):
            self.add("proto", e.proto)
        elif isinstance(e, ev.TunnelEvent):
            for spi in tunnel_spis(e):
                self.add("spi", spi)
            self.add("reqid", e.reqid)
            self.add("src", e.src)
            self.add("dst", e.dst)
            self.add("proto", e.proto)
        elif isinstance(e, ev.Alert):
            for sub in e.events:
                self.event(sub)


def tunnel_spis(e: ev.TunnelEvent) -> list[str]:
    """The SPIs a tunnel event names, the one it is about first (``spi``), then the
    current ones, then those it lists (old, new, gone)."""
    out: list[str] = []
    for spi in (
        getattr(e, "spi", None), e.spi_out, e.spi_in,
        *getattr(e, "new_spis", ()), *getattr(e, "old_spis", ()), *getattr(e, "spis", ()),
    ):  # fmt: skip
        if spi and spi not in out:
            out.append(spi)
    return out


def attributes(e: ev.Event) -> dict[str, list[str]]:
    """What an event is about: SPIs, reqids, addresses (SA endpoints, selectors,
    non-wildcard template endpoints), protocols, directions.  Each a list of
    distinct strings (possibly empty); an alert has those of its events.  Zero
    SPIs, zero template reqids and wildcard addresses are left out."""
    a = _Attrs()
    a.event(e)
    return a.values


def subject_fields(e: ev.Event) -> dict[str, str]:
    """What an event (for an alert: its first triggering event) is about:
    ``netns`` always, and ``spi``, ``reqid``, ``src``, ``dst`` where it has them."""
    out: dict[str, str] = {"netns": e.netns}
    first: Any = e
    if isinstance(e, ev.Alert):
        if not e.events:
            for key in ("reqid", "spi", "src", "dst"):
                for gk, gv in e.group.items():
                    if gk == key or gk.endswith("." + key):
                        out.setdefault(key, gv)
            return out
        first = e.events[0]
    sa = getattr(first, "sa", None)
    if isinstance(sa, ev.SA):
        out.update(spi=sa.spi, reqid=str(sa.reqid), src=sa.src, dst=sa.dst)
    elif isinstance(first, ev.TunnelEvent):
        out.update(reqid=str(first.reqid), src=first.src, dst=first.dst, tunnel_id=first.tunnel_id)
        spis = tunnel_spis(first)
        if spis:
            out["spi"] = spis[0]
    elif isinstance(first, ev.DelSA):
        out.update(spi=first.id.spi, dst=first.id.dst)
    elif isinstance(first, ev.NewAE):
        a = first.ae
        out.update(spi=a.spi, reqid=str(a.reqid), src=a.src, dst=a.dst)
    elif isinstance(first, ev.Mapping):
        out.update(spi=first.id.spi, reqid=str(first.reqid), src=first.new_src, dst=first.id.dst)
    elif isinstance(first, ev.AcquireEvent):
        out.update(src=first.acquire.src, dst=first.acquire.dst)
    return out
