"""Tables for the snapshot commands on a terminal: SAs and policies streamed row by row,
the rest (info, audit findings) with rich."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, BinaryIO

from .. import events as ev
from .render import _alg, sel_summary


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def _lim(v: int | None) -> str:
    return "-" if v is None else str(v)


SEP = "  "  # between columns


class StreamTable:
    """A table written as its rows arrive (bounded memory for any number of rows): the
    column widths come from the first batch of rows (later, longer cells push the line
    out), and the count closes the table."""

    def __init__(self, title: str, columns: Sequence[str], out: BinaryIO, *, style: bool = False) -> None:
        self.title = title
        self.columns = list(columns)
        self.out = out
        self.style = style
        self.fmt = ""
        self.widths: list[int] = []
        self.count = 0

    def _start(self, first: list[list[str]]) -> None:
        widths = [len(c) for c in self.columns]
        for row in first[:1000]:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], len(cell))
        widths[-1] = 0  # the last column is never padded
        self.widths = widths
        self.fmt = SEP.join(f"{{:<{w}}}" for w in widths) + "\n"
        head = self.fmt.format(*self.columns).rstrip() + "\n"
        if self.style:
            head = f"\x1b[1m{head.rstrip()}\x1b[0m\n"
        self.out.write(f"{self.title}\n{head}".encode())

    def rows(self, rows: list[list[str]]) -> None:
        if not rows:
            return
        if not self.fmt:
            self._start(rows)
        fmt = self.fmt.format
        self.out.write("".join([fmt(*r) for r in rows]).encode())
        self.count += len(rows)

    def line(self, row: list[str]) -> str:
        """One row as :meth:`rows` writes it (the widths known)."""
        return self.fmt.format(*row)

    def template(self, cells: Sequence[str | None], *, ints: Sequence[int] = ()) -> str:
        """A row as a %-format (the widths known): each None cell a hole taking its value
        (``%-{width}s``; ``%-{width}d`` for the cells numbered in ``ints``), every other
        cell as :meth:`rows` writes it."""
        parts = [
            (f"%-{w}d" if i in ints else f"%-{w}s") if c is None else f"{c:<{w}}".replace("%", "%%")
            for i, (c, w) in enumerate(zip(cells, self.widths, strict=True))
        ]
        return SEP.join(parts) + "\n"

    def close(self, noun: str) -> None:
        if not self.fmt:
            self._start([])
        self.out.write(f"({self.count} {noun})\n".encode())
        self.out.flush()


SA_COLUMNS = ("src", "dst", "proto", "spi", "reqid", "mode", "algorithms", "bytes", "packets", "added", "hard life")
POLICY_COLUMNS = ("selector", "dir", "action", "prio", "index", "ptype", "mark", "templates")


def sa_row(sa: ev.SA, ae: ev.AeInfo | None = None) -> list[str]:
    life = sa.lifetime
    hard = []
    if life.hard_add_seconds is not None:
        hard.append(f"{life.hard_add_seconds}s")
    if life.hard_bytes is not None:
        hard.append(f"{life.hard_bytes}B")
    if life.hard_packets is not None:
        hard.append(f"{life.hard_packets}p")
    row = [
        sa.src, sa.dst, sa.proto, sa.spi, str(sa.reqid), sa.mode, _alg(sa) or "-",
        str(sa.current.bytes), str(sa.current.packets), sa.current.add_time or "-",
        " ".join(hard) or "none",
    ]  # fmt: skip
    if ae is not None:
        r = ae.replay_esn or ae.replay
        row.insert(-1, f"{r.oseq}/{r.seq}" if r else "-")
    return row


def policy_row(p: ev.Policy) -> list[str]:
    tmpl = "; ".join(f"{x.proto}/{x.mode} {x.src} -> {x.dst} reqid {x.reqid}" for x in p.tmpl)
    mark = f"0x{p.mark.value:x}/0x{p.mark.mask:x}" if p.mark else "-"
    return [sel_summary(p.sel), p.dir, p.action, str(p.priority), str(p.index), p.ptype, mark, tmpl or "-"]


def sa_table(out: BinaryIO, *, stats: bool = False, style: bool = False) -> StreamTable:
    cols = list(SA_COLUMNS)
    if stats:
        cols.insert(-1, "oseq/seq")
    return StreamTable("SAs", cols, out, style=style)


def policy_table(out: BinaryIO, *, style: bool = False) -> StreamTable:
    return StreamTable("Policies", POLICY_COLUMNS, out, style=style)


def print_info(info: dict[str, Any]) -> None:
    from rich.table import Table

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
    from ..subject import subject

    for e in a.events:
        if isinstance(e, ev.NetnsState):
            return ", ".join(e.xfrm_stat_nonzero) or "namespace"
    return subject(a).describe()


def print_findings(findings: list[ev.Alert], netns: str) -> None:
    from rich.table import Table

    styles = {"critical": "bold white on red", "high": "bold red", "medium": "yellow", "low": "cyan"}
    t = Table(title=f"Audit{' of ' + netns if netns else ''}: {len(findings)} findings", title_justify="left")
    for col in ("level", "finding", "subject"):
        t.add_column(col)
    for a in findings:
        t.add_row(a.rule.level, a.rule.title, _subject(a), style=styles.get(a.rule.level))
    _console().print(t)
