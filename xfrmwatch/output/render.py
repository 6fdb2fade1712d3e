"""Renderers: one small class per output format.

* :class:`JsonRenderer`: one JSON object per line, the event schema as is.
* :class:`TextRenderer`: aligned one-line summaries (colour via rich on a tty).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from .. import events as ev

if TYPE_CHECKING:
    from rich.text import Text


class JsonRenderer:
    """Events as JSON lines (bytes), exactly the documented schema."""

    __slots__ = ("_enc",)

    def __init__(self) -> None:
        self._enc = msgspec.json.Encoder()

    def __call__(self, e: Any) -> bytes:
        return self._enc.encode(e) + b"\n"


def _alg(sa: ev.SA) -> str:
    parts = []
    if sa.aead:
        parts.append(f"aead {sa.aead.name}/{sa.aead.key_bits}/{sa.aead.icv_bits}")
    if sa.enc:
        parts.append(f"enc {sa.enc.name}/{sa.enc.key_bits}")
    if sa.auth:
        trunc = f"/{sa.auth.trunc_bits}" if sa.auth.trunc_bits is not None else ""
        parts.append(f"auth {sa.auth.name}/{sa.auth.key_bits}{trunc}")
    if sa.comp:
        parts.append(f"comp {sa.comp.name}")
    return " ".join(parts)


def sa_summary(sa: ev.SA) -> str:
    s = f"{sa.proto} spi {sa.spi} reqid {sa.reqid} {sa.src} -> {sa.dst} {sa.mode}"
    alg = _alg(sa)
    if alg:
        s += " " + alg
    if sa.mark:
        s += f" mark 0x{sa.mark.value:x}/0x{sa.mark.mask:x}"
    if sa.if_id is not None:
        s += f" if_id {sa.if_id}"
    return s


def sel_summary(sel: ev.Selector) -> str:
    s = f"{sel.src} -> {sel.dst}"
    if sel.proto != "any":
        s += f" {sel.proto}"
        if sel.sport_mask:
            s += f" sport {sel.sport}"
        if sel.dport_mask:
            s += f" dport {sel.dport}"
    if sel.ifindex:
        s += f" ifindex {sel.ifindex}"
    return s


def policy_summary(p: ev.Policy) -> str:
    s = f"{sel_summary(p.sel)} dir {p.dir} {p.action} index {p.index} prio {p.priority}"
    if p.ptype != "main":
        s += f" ptype {p.ptype}"
    if p.mark:
        s += f" mark 0x{p.mark.value:x}/0x{p.mark.mask:x}"
    if p.if_id is not None:
        s += f" if_id {p.if_id}"
    for t in p.tmpl:
        s += f" tmpl {t.proto}/{t.mode} {t.src} -> {t.dst} reqid {t.reqid}"
    return s


def summary(e: Any) -> str:
    """A one-line human summary of an event (no keys: events have none)."""
    short = _SUMMARY_OF.get(type(e))
    if short is not None:
        return short(e)
    if isinstance(e, ev.SaEvent):
        return sa_summary(e.sa)
    if isinstance(e, ev.Expire):
        return ("hard " if e.hard else "soft ") + sa_summary(e.sa)
    if isinstance(e, ev.DelSA):
        if e.sa is not None:
            return sa_summary(e.sa)
        return f"{e.id.proto} spi {e.id.spi} dst {e.id.dst}"
    if isinstance(e, ev.PolicyEvent):
        return policy_summary(e.policy)
    if isinstance(e, ev.PolExpire):
        return ("hard " if e.hard else "soft ") + policy_summary(e.policy)
    if isinstance(e, ev.DelPolicy):
        if e.policy is not None:
            return policy_summary(e.policy)
        return f"{sel_summary(e.policy_id.sel)} dir {e.policy_id.dir} index {e.policy_id.index}"
    if isinstance(e, ev.FlushSA):
        return f"proto {e.proto}"
    if isinstance(e, ev.FlushPolicy):
        return f"ptype {e.ptype}"
    if isinstance(e, ev.AcquireEvent):
        a = e.acquire
        return f"{a.proto} {a.src} -> {a.dst} for {sel_summary(e.sel)} policy index {e.policy.index}"
    if isinstance(e, ev.NewAE):
        ae = e.ae
        s = f"{ae.proto} spi {ae.spi} reqid {ae.reqid} {ae.src} -> {ae.dst} [{','.join(ae.flags)}]"
        if ae.replay:
            s += f" oseq {ae.replay.oseq} seq {ae.replay.seq}"
        if ae.replay_esn:
            s += f" oseq {ae.replay_esn.oseq} seq {ae.replay_esn.seq}"
        if ae.current:
            s += f" bytes {ae.current.bytes} packets {ae.current.packets}"
        return s
    if isinstance(e, ev.Report):
        return f"{e.proto} {sel_summary(e.sel)}" + (f" coaddr {e.coaddr}" if e.coaddr else "")
    if isinstance(e, ev.Migrate):
        moves = "; ".join(
            f"{m.proto}/{m.mode} reqid {m.reqid} {m.old_src} -> {m.old_dst} => {m.new_src} -> {m.new_dst}"
            for m in e.migrate
        )
        return f"{sel_summary(e.policy_id.sel)} dir {e.policy_id.dir}: {moves}"
    if isinstance(e, ev.Mapping):
        return (
            f"{e.id.proto} spi {e.id.spi} reqid {e.reqid} "
            f"{e.old_src}:{e.old_sport} => {e.new_src}:{e.new_sport}"
        )
    if isinstance(e, ev.DefaultPolicy):
        return f"in {e.in_} fwd {e.fwd} out {e.out}"
    if isinstance(e, ev.Overrun):
        return e.detail
    if isinstance(e, ev.Malformed):
        return f"type {e.msg_type} length {e.length}: {e.reason}"
    if isinstance(e, ev.Alert):
        group = " ".join(f"{k}={v}" for k, v in e.group.items())
        more = f" (+{e.suppressed} suppressed)" if e.suppressed else ""
        first = summary(e.events[0]) if e.events else ""
        return f"[{e.rule.level}] {e.rule.title}{' ' + group if group else ''}{more}: {first}"
    if isinstance(e, ev.TunnelEvent):
        return f"{tunnel_name(e)}: {tunnel_summary(e)}"
    if isinstance(e, ev.Resync):
        return f"{e.sas} SAs, {e.policies} policies; missing {len(e.missing)}, stale {len(e.stale)}"
    if isinstance(e, ev.SaState):
        return sa_summary(e.sa)
    if isinstance(e, ev.PolicyState):
        return policy_summary(e.policy)
    if isinstance(e, ev.SadInfo):
        return f"count {e.count}"
    if isinstance(e, ev.SpdInfo):
        c = e.counts
        return "" if c is None else f"policies in {c.in_} out {c.out} fwd {c.fwd}"
    return ""


def _sa_event(e: Any) -> str:
    return sa_summary(e.sa)


def _policy_event(e: Any) -> str:
    return policy_summary(e.policy)


#: the summary of the most frequent classes, found without the chain of isinstance tests
_SUMMARY_OF: dict[type, Callable[[Any], str]] = {
    ev.NewSA: _sa_event, ev.UpdSA: _sa_event, ev.SaState: _sa_event,
    ev.NewPolicy: _policy_event, ev.UpdPolicy: _policy_event, ev.PolicyState: _policy_event,
}  # fmt: skip


def _secs(v: float | None) -> str:
    return "unknown" if v is None else f"{v:g}s"


def _hard(seconds: float | None) -> str:
    return "no hard limit known" if seconds is None else f"hard in {seconds:g}s"


def tunnel_name(e: ev.TunnelEvent) -> str:
    return f"{e.proto} reqid {e.reqid} {e.src} <-> {e.dst}"


def tunnel_summary(e: ev.TunnelEvent) -> str:
    """The tunnel event's own part of a one-line summary."""
    spis = f"in {e.spi_in or '-'} out {e.spi_out or '-'}"
    if isinstance(e, ev.TunnelUp):
        return f"up ({e.mode}), {spis}"
    if isinstance(e, ev.RekeyStarted):
        return f"rekey started: spi {e.spi} reached its soft {e.basis} limit, {_hard(e.seconds_to_hard)}"
    if isinstance(e, ev.RekeyCompleted):
        role = {True: "initiator", False: "responder", None: "initiator unknown"}[e.initiator]
        more = ", collision folded" if e.collision else ""
        return (
            f"rekeyed {','.join(e.old_spis)} => {','.join(e.new_spis)} in {e.duration_seconds:.3f}s "
            f"({role}{more}; rekey #{e.rekeys})"
        )
    if isinstance(e, ev.RekeyOverdue):
        if e.basis == "history":
            why = f"no rekey after {_secs(e.expected_seconds)} (its usual interval, learned)"
        else:
            why = f"{_secs(e.seconds_since_soft)} since the soft {e.basis} limit"
        return f"rekey overdue: spi {e.spi}, {why}, {_hard(e.seconds_to_hard)}"
    if isinstance(e, ev.TunnelDown):
        how = "torn down" if e.teardown else ("rekey failed" if e.rekey_failed else "broken")
        part = ", one direction left" if e.partial else ""
        return f"DOWN ({e.reason}, {how}{part}): {','.join(e.spis) or '-'} gone"
    if isinstance(e, ev.TrafficStalled):
        return f"inbound silent for {e.silent_seconds:g}s while {e.out_bytes_since} bytes went out"
    if isinstance(e, ev.TrafficResumed):
        return f"inbound traffic resumed after {e.silent_seconds:g}s"
    return spis


STYLES = {
    "newsa": "green",
    "updsa": "green",
    "delsa": "red",
    "expire": "yellow",
    "newpolicy": "cyan",
    "updpolicy": "cyan",
    "delpolicy": "magenta",
    "polexpire": "yellow",
    "flushsa": "bold red",
    "flushpolicy": "bold red",
    "acquire": "blue",
    "default_policy": "bold yellow",
    "overrun": "bold white on red",
    "alert": "bold red",
    "rekey_completed": "green",
    "rekey_started": "yellow",
    "rekey_overdue": "bold yellow",
    "tunnel_up": "bold green",
    "tunnel_down": "bold white on red",
    "traffic_stalled": "bold yellow",
    "traffic_resumed": "green",
    "malformed": "bold white on red",
}


def event_type(e: Any) -> str:
    """The event's ``type`` tag (``newsa``, ``alert``, ...)."""
    return str(e.__struct_config__.tag)


def event_label(e: Any) -> str:
    """The event type, with ``/hard`` or ``/soft`` for expiries."""
    t = event_type(e)
    if isinstance(e, (ev.Expire, ev.PolExpire)):
        t += "/hard" if e.hard else "/soft"
    return t


def _document(fmt: str) -> Callable[[ev.Event], dict[str, Any]] | None:
    """The renderer of ``fmt``'s documents: None for "json" (the event itself), ECS or OCSF."""
    if fmt == "json":
        return None
    if fmt == "ecs":
        from .ecs import EcsRenderer

        return EcsRenderer()
    if fmt == "ocsf":
        from .ocsf import OcsfRenderer

        return OcsfRenderer()
    raise ValueError(f"unknown format {fmt!r}")


def json_renderer(fmt: str, *, newline: bool = True) -> Callable[[ev.Event], bytes]:
    """An event -> its JSON for ``fmt``: "json" (the event schema), "ecs" or "ocsf";
    one line with a newline (JSON lines), or the bare document."""
    enc = msgspec.json.Encoder()
    end = b"\n" if newline else b""
    r = _document(fmt)
    if r is None:
        return lambda e: enc.encode(e) + end
    return lambda e: enc.encode(r(e)) + end


def json_lines_renderer(fmt: str) -> Callable[[list[ev.Event]], bytes]:
    """Events -> their JSON lines for ``fmt`` (as :func:`json_renderer` makes them, one
    encoder call for all).  An event that cannot be rendered raises: render those one by one."""
    lines = msgspec.json.Encoder().encode_lines
    r = _document(fmt)
    if r is None:
        return lines

    def documents(events: list[ev.Event]) -> bytes:
        # a few hundred documents at a time: a whole batch of them alive at once would
        # make the garbage collector scan them again and again
        if len(events) <= _CHUNK:
            return lines([r(e) for e in events])
        return b"".join([lines([r(e) for e in events[i : i + _CHUNK]]) for i in range(0, len(events), _CHUNK)])

    return documents


#: documents rendered before they are encoded (see :func:`json_lines_renderer`)
_CHUNK = 256


class TextRenderer:
    """One aligned line per event: time, netns, type, summary."""

    __slots__ = ("show_netns",)

    def __init__(self, show_netns: bool = True) -> None:
        self.show_netns = show_netns

    def parts(self, e: Any) -> tuple[str, str, str, str]:
        return e.time, e.netns or "-", event_label(e), summary(e)

    def __call__(self, e: Any) -> bytes:
        when, netns, t, text = self.parts(e)
        ns = f"{netns:<12} " if self.show_netns else ""
        return f"{when} {ns}{t:<16} {text}\n".encode()

    def rich(self, e: Any) -> Text:
        from rich.text import Text  # a terminal's line: rich only where one is drawn

        when, netns, t, text = self.parts(e)
        line = Text()
        line.append(when[11:23], style="dim")
        if self.show_netns:
            line.append(f" {netns:<12}", style="dim")
        line.append(f" {t:<16}", style=STYLES.get(event_type(e), "white"))
        line.append(" " + text)
        return line
