"""Rich tables for the snapshot commands on a terminal."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from .. import events as ev
from ..subject import subject
from .render import _alg, sel_summary


def _console() -> Console:
    return Console(highlight=False)


def _lim(v: int | None) -> str:
    return "-" if v is None else str(v)


def print_sas(sas: list[ev.SA], stats: list[ev.AeInfo] | None) -> None:
    t = Table(title=f"SAs ({len(sas)})", title_justify="left")
    for col in ("src", "dst", "proto", "spi", "reqid", "mode", "algorithms", "bytes", "packets", "added", "hard life"):
        t.add_column(col, no_wrap=col not in ("algorithms",))
    if stats:
        t.add_column("oseq/seq")
    for i, sa in enumerate(sas):
        life = sa.lifetime
        hard = []
        if life.hard_add_seconds is not None:
            hard.append(f"{life.hard_add_seconds}s")
        if life.hard_bytes is not None:
            hard.append(f"{life.hard_bytes}B")
        if life.hard_packets is not None:
            hard.append(f"{life.hard_packets}p")
        row = [
            sa.src, sa.dst, sa.proto, sa.spi, str(sa.reqid), sa.mode, _alg(sa),
            str(sa.current.bytes), str(sa.current.packets), sa.current.add_time or "-",
            " ".join(hard) or "none",
        ]  # fmt: skip
        if stats:
            ae = stats[i]
            r = ae.replay_esn or ae.replay
            row.append(f"{r.oseq}/{r.seq}" if r else "-")
        t.add_row(*row)
    _console().print(t)


def print_policies(pols: list[ev.Policy]) -> None:
    t = Table(title=f"Policies ({len(pols)})", title_justify="left")
    for col in ("selector", "dir", "action", "prio", "index", "ptype", "templates", "mark"):
        t.add_column(col, no_wrap=col != "templates")
    for p in pols:
        tmpl = "\n".join(f"{x.proto}/{x.mode} {x.src} -> {x.dst} reqid {x.reqid}" for x in p.tmpl)
        mark = f"0x{p.mark.value:x}/0x{p.mark.mask:x}" if p.mark else "-"
        t.add_row(sel_summary(p.sel), p.dir, p.action, str(p.priority), str(p.index), p.ptype, tmpl or "-", mark)
    _console().print(t)


def print_info(info: dict[str, Any]) -> None:
    t = Table(title="XFRM" + (f" in {info['netns']}" if info["netns"] else ""), title_justify="left")
    t.add_column("what")
    t.add_column("value", justify="right")
    sad = info["sad"]
    t.add_row("SAs", str(sad["count"]))
    if sad["hash"]:
        t.add_row("SAD hash buckets (max)", f"{sad['hash']['buckets']} ({sad['hash']['max_buckets']})")
    spd = info["spd"]
    if spd["counts"]:
        c = spd["counts"]
        t.add_row("policies in/out/fwd", f"{c['in']}/{c['out']}/{c['fwd']}")
        t.add_row("socket policies in/out/fwd", f"{c['in_socket']}/{c['out_socket']}/{c['fwd_socket']}")
    if spd["hash"]:
        t.add_row("SPD hash buckets (max)", f"{spd['hash']['buckets']} ({spd['hash']['max_buckets']})")
    d = info["default_policy"]
    if d:
        t.add_row("default policy in/fwd/out", f"{d['in']}/{d['fwd']}/{d['out']}")
    for name, value in (info["xfrm_stat"] or {}).items():
        t.add_row(name, str(value), style="bold red" if value else None)
    _console().print(t)


def _subject(a: ev.Alert) -> str:
    for e in a.events:
        if isinstance(e, ev.NetnsState):
            return ", ".join(e.xfrm_stat_nonzero) or "namespace"
    return subject(a).describe()


def print_findings(findings: list[ev.Alert], netns: str) -> None:
    styles = {"critical": "bold white on red", "high": "bold red", "medium": "yellow", "low": "cyan"}
    t = Table(title=f"Audit{' of ' + netns if netns else ''}: {len(findings)} findings", title_justify="left")
    for col in ("level", "finding", "subject"):
        t.add_column(col)
    for a in findings:
        t.add_row(a.rule.level, a.rule.title, _subject(a), style=styles.get(a.rule.level))
    _console().print(t)
