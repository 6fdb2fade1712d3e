"""One frame of the dashboard, from immutable data to text: :class:`Frame` -> lines.

Nothing here reads live state: a :class:`Frame` holds the namespaces' boards (answered by
their state stages), the alert rows, the events of the feed and the header's figures, and
:func:`render` turns it into exactly ``height`` lines of ``width`` columns (rich), so that
the terminal writer can redraw only the lines that changed.  :func:`layout` says how many
tunnel rows fit, which is what the dashboard asks the state stages for.

The layout adapts to the size: at 80x24 the tunnels table keeps its most telling columns
(tunnel, state, next rekey, hard expiry, endpoints) and the alerts and events are stacked;
from 110 columns alerts and events sit side by side, and the table gains SPIs, age, soft
expiry, rates, last rekey and rekey count as the width allows.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.text import Text

from ..board import Board, BoardRow
from ..tunnels import TunnelView
from .alerts import AlertRow

STATE_STYLES = {
    "up": "green",
    "establishing": "cyan",
    "rekeying": "yellow",
    "overdue": "bold black on yellow",
    "down": "bold white on red",
}
LEVEL_STYLES = {
    "critical": "bold white on red",
    "high": "bold red",
    "medium": "yellow",
    "low": "cyan",
    "informational": "dim",
}
HELP = """\
Keys
  q            quit (also Ctrl-C)
  /            filter tunnels and events by text (Enter keeps it, Esc clears it)
  s            next sort order: urgency, name, age, rekeys, traffic
  Tab          next namespace (Shift-Tab: previous); "all" shows every one
  a            alerts only: tunnels that need attention, alerts and events of level medium and above
  Up/Down, PgUp/PgDn, Home/End    scroll the tunnels
  ?            this help (any key closes it)

Columns
  STATE        up, establishing, rekeying, overdue (the rekey should have happened), down;
               "stalled": inbound silent while outbound sends
  REKEY        time to the next rekey: the soft limit, ~ when projected from the traffic
               rate (byte/packet limits) or learned from the tunnel's own rekey history
  SOFT, HARD   time to the soft and hard expiry of the current SAs (~ projected)
  IN/OUT       bytes per second, from the SA counters read every --liveness-interval
  LAST, #      time since the last rekey, rekeys seen

Everything is read-only and key-free, as with `xfrmwatch monitor`."""


@dataclass(frozen=True, slots=True)
class Sizes:
    """Where everything goes in a width x height frame."""

    width: int
    height: int
    tunnel_rows: int
    bottom: int
    side_by_side: bool


def layout(width: int, height: int) -> Sizes:
    """The frame's regions: 2 header lines, the tunnels (a title, column heads, rows), the
    alerts and events below, 1 footer line."""
    rest = max(4, height - 3)
    bottom = max(3, rest * 2 // 5) if rest >= 14 else max(2, rest // 3)
    tunnels = rest - bottom
    return Sizes(width, height, max(1, tunnels - 2), bottom, width >= 110)


@dataclass(frozen=True)
class Frame:
    """Everything one frame shows (immutable)."""

    width: int
    height: int
    #: trio's clock (countdowns and ages are relative to it)
    now: float
    title: str
    namespaces: tuple[str, ...]
    #: the namespace shown (None: all)
    selected: str | None
    boards: tuple[Board, ...]
    #: the tunnel rows shown (merged across namespaces, in order)
    rows: tuple[BoardRow, ...]
    matching: int
    offset: int = 0
    key_managers: tuple[str, ...] = ()
    stat_moved: tuple[tuple[str, int], ...] = ()
    overruns: int = 0
    resyncs: int = 0
    rate: float = 0.0
    alerts: tuple[AlertRow, ...] = ()
    open_alerts: tuple[tuple[str, int], ...] = ()
    #: the latest events' lines, newest last
    feed: tuple[Text, ...] = ()
    sort: str = "urgency"
    text: str = ""
    attention: bool = False
    #: the filter being typed after "/" (None: not typing)
    prompt: str | None = None
    help: bool = False
    notice: str = ""
    #: what the demo explains now (a few wrapped lines above the footer)
    narration: str = ""
    ready: bool = True
    extra: dict[str, str] = field(default_factory=dict)


# --- small formatters ----------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    """A compact duration: 9s, 1m40s, 2h05m, 3d04h; negative ones with a minus sign."""
    if seconds is None or math.isnan(seconds) or math.isinf(seconds):
        return "-"
    sign = "-" if seconds < 0 else ""
    s = int(abs(seconds))
    if s < 60:
        return f"{sign}{s}s"
    if s < 3600:
        return f"{sign}{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{sign}{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{sign}{s // 86400}d{s % 86400 // 3600:02d}h"


def rate(v: float | None) -> str:
    """Bytes per second, short: 0, 512, 1.2k, 3.4M, 1.1G."""
    if v is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= size:
            return f"{v / size:.1f}{unit}"
    return f"{v:.0f}"


def _spi(s: str | None) -> str:
    return "-" if not s else s.removeprefix("0x")


def countdown(deadline: float | None, now: float, projected: bool) -> Text:
    """Time left to ``deadline`` (``~``: projected or learned); "-" when there is none."""
    if deadline is None:
        return Text("-", style="dim")
    left = deadline - now
    style = "bold red" if left < 0 else "yellow" if left < 30 else ""
    # a countdown shows the whole seconds still to go: 9.99 s left is 10s, 0.2 s past is -1s
    shown = math.ceil(left) if left >= 0 else -math.ceil(-left)
    return Text(("~" if projected else "") + duration(shown), style=style)


def tunnel_name(v: TunnelView) -> str:
    sel = ", ".join(v.selectors)
    return f"{v.reqid} {sel}" if sel else f"{v.reqid} {v.proto} {v.mode}"


def state_text(v: TunnelView) -> Text:
    t = Text(v.state, style=STATE_STYLES.get(v.state, ""))
    if v.stalled:
        t.append(" stalled", style="bold magenta")
    if v.state == "down" and v.down_reason:
        t.append(f" {v.down_reason}", style="red")
    return t


# --- the tunnels table ---------------------------------------------------------------------------

Cell = Callable[[TunnelView, float], "Text | str"]


@dataclass(frozen=True, slots=True)
class Column:
    head: str
    width: int
    #: lower is kept first when the terminal is narrow
    priority: int
    cell: Cell
    justify: str = "left"


def _live(v: TunnelView, deadline: float | None) -> float | None:
    """A down tunnel has no deadlines left."""
    return None if v.state == "down" else deadline


def _projected(v: TunnelView) -> bool:
    return v.deadline_basis in ("bytes", "packets", "history")


COLUMNS: tuple[Column, ...] = (
    Column("NETNS", 10, 6, lambda v, now: v.netns or "(own)"),
    Column("TUNNEL", 16, 0, lambda v, now: tunnel_name(v)),
    Column("ENDPOINTS", 27, 3, lambda v, now: f"{v.src} <-> {v.dst}"),
    Column("SPI IN/OUT", 17, 4, lambda v, now: f"{_spi(v.spi_in)}/{_spi(v.spi_out)}"),
    Column("STATE", 16, 0, lambda v, now: state_text(v)),
    Column("AGE", 6, 5, lambda v, now: duration(None if v.established is None else now - v.established), "right"),
    Column("REKEY", 7, 1, lambda v, now: countdown(_live(v, v.next_rekey), now, v.deadline_basis == "history"),
           "right"),
    Column("SOFT", 7, 7, lambda v, now: countdown(_live(v, v.soft_expiry), now, False), "right"),
    Column("HARD", 7, 2, lambda v, now: countdown(_live(v, v.hard_expiry), now, _projected(v)), "right"),
    Column("IN/OUT B/s", 11, 5, lambda v, now: f"{rate(v.in_rate)}/{rate(v.out_rate)}", "right"),
    Column("LAST", 6, 8, lambda v, now: duration(None if v.last_rekey is None else now - v.last_rekey), "right"),
    Column("#", 3, 6, lambda v, now: str(v.rekeys), "right"),
)


def columns_for(width: int, namespaces: int) -> list[Column]:
    """The columns that fit in ``width`` (the tunnel column takes what is left)."""
    chosen: set[str] = set()
    used = 0
    for c in sorted(COLUMNS, key=lambda c: c.priority):
        if c.head == "NETNS" and namespaces < 2:
            continue
        if used + c.width + 1 <= width:
            chosen.add(c.head)
            used += c.width + 1
    return [c for c in COLUMNS if c.head in chosen]


def fit(t: Text | str, width: int, justify: str = "left") -> Text:
    """``t`` cut (with an ellipsis) or padded to exactly ``width`` cells."""
    t = Text(t) if isinstance(t, str) else t.copy()
    if t.cell_len > width:
        t.truncate(width, overflow="ellipsis")
    gap = width - t.cell_len
    if gap > 0:
        if justify == "right":
            t = Text(" " * gap) + t
        else:
            t.append(" " * gap)
    return t


def tunnel_lines(f: Frame, rows: int) -> list[Text]:
    """The column heads and one line per tunnel row (the tunnel column takes the width left)."""
    cols = columns_for(f.width, len(f.namespaces))
    fixed = sum(c.width + 1 for c in cols if c.head != "TUNNEL")
    widths = [max(c.width, f.width - fixed - 1) if c.head == "TUNNEL" else c.width for c in cols]
    head = Text(style="bold reverse")
    for c, w in zip(cols, widths, strict=True):
        head.append_text(fit(c.head, w, c.justify))
        head.append(" ")
    out = [head]
    for r in f.rows[:rows]:
        line = Text()
        for c, w in zip(cols, widths, strict=True):
            line.append_text(fit(c.cell(r.view, f.now), w, c.justify))
            line.append(" ")
        out.append(line)
    return out


# --- header, panels, footer ----------------------------------------------------------------------


def _counts(boards: Sequence[Board]) -> tuple[int, int, dict[str, int]]:
    sas = sum(b.sas for b in boards)
    pols = sum(b.policies for b in boards)
    states: dict[str, int] = {}
    for b in boards:
        for s, n in b.states:
            states[s] = states.get(s, 0) + n
    return sas, pols, states


def header(f: Frame) -> list[Text]:
    sas, pols, states = _counts(f.boards)
    line1 = Text()
    line1.append(f" {f.title} ", style="bold reverse")
    shown = f.selected if f.selected is not None or len(f.namespaces) != 1 else f.namespaces[0]
    ns = "all" if shown is None else (shown or "(own)")
    line1.append(f" netns {ns}", style="bold")
    if len(f.namespaces) > 1:
        names = "" if shown is not None else ": " + ", ".join(n or "(own)" for n in f.namespaces)
        line1.append(f" [{len(f.namespaces)}{names}]", style="dim")
    line1.append(f"  SAs {sas}  policies {pols}  tunnels {sum(states.values())}")
    for s in ("up", "establishing", "rekeying", "overdue", "down"):
        if states.get(s):
            line1.append(" ")
            line1.append(f"{states[s]} {s}", style=STATE_STYLES[s])
    line1.append(f"  {f.rate:.1f} ev/s")
    line1.append(f"  overruns {f.overruns}", style="bold red" if f.overruns else "")
    line1.append(f"  resyncs {f.resyncs}", style="yellow" if f.resyncs else "")
    if any(not b.synced for b in f.boards):
        line1.append("  RESYNCING", style="bold white on red")
    line2 = Text(" key managers: ", style="dim")
    line2.append(", ".join(f.key_managers) or "none", style="" if f.key_managers else "yellow")
    line2.append("   xfrm_stat: ", style="dim")
    if f.stat_moved:
        line2.append(", ".join(f"{k} +{v}" for k, v in f.stat_moved), style="bold red")
    else:
        line2.append("no error counter moved", style="green")
    return [line1, line2]


def title_line(text: str, right: str = "") -> Text:
    t = Text(f" {text} ", style="bold reverse")
    if right:
        t.append(f" {right}", style="dim")
    return t


def alerts_panel(f: Frame, height: int) -> list[Text]:
    opened = " ".join(f"{n} {lvl}" for lvl, n in f.open_alerts) or "none open"
    lines = [title_line("Alerts", opened)]
    for a in f.alerts[: max(0, height - 1)]:
        t = Text()
        style = "dim" if a.resolved is not None else LEVEL_STYLES.get(a.level, "")
        t.append(f"{a.level[:4]:<4} ", style=style)
        t.append(a.title, style="dim" if a.resolved is not None else "bold")
        if a.count > 1:
            t.append(f" x{a.count}")
        if a.subject:
            t.append(f" {a.subject}", style="dim")
        if len(f.namespaces) > 1:
            t.append(f" [{a.netns or '(own)'}]", style="dim")
        when = f"resolved {duration(f.now - a.resolved)} ago" if a.resolved is not None else duration(f.now - a.first)
        t.append(f" {when}", style="dim")
        lines.append(t)
    if not f.alerts:
        lines.append(Text(" no alerts", style="dim green"))
    return lines[:height]


def events_panel(f: Frame, height: int) -> list[Text]:
    lines = [title_line("Events", "newest last")]
    if height > 1:
        lines += f.feed[-(height - 1) :]
    return lines[:height]


def footer(f: Frame) -> Text:
    t = Text()
    if f.prompt is not None:
        t.append(" filter: ", style="bold reverse")
        t.append(f" {f.prompt}")
        t.append("_", style="blink")
        t.append("   Enter keep, Esc clear", style="dim")
        return t
    if f.notice and not f.text:  # a narration, or the latest warning: it takes the line
        t.append(" ?", style="bold reverse")
        t.append(" keys  ")
        t.append(f.notice, style="bold cyan")
        return t
    for key, what in (("q", "quit"), ("/", "filter"), ("s", f"sort:{f.sort}"), ("Tab", "netns"),
                      ("a", "alerts only" + (" [on]" if f.attention else "")), ("?", "help")):  # fmt: skip
        t.append(f" {key}", style="bold reverse")
        t.append(f" {what} ")
    if f.text:
        t.append(f"  /{f.text}", style="bold yellow")
    return t


def _block(lines: Sequence[Text], height: int, width: int) -> list[Text]:
    """``height`` lines of ``width`` cells: ``lines`` cut or padded."""
    out = [fit(t, width) for t in lines[:height]]
    return out + [Text(" " * width)] * (height - len(out))


def render(f: Frame) -> list[Text]:
    """The whole frame: exactly ``f.height`` lines of ``f.width`` cells."""
    sz = layout(f.width, f.height)
    w = f.width
    lines = _block(header(f), 2, w)
    body_h = sz.tunnel_rows + 2
    if f.help:
        body = [title_line("Help"), *Text(HELP).split("\n")]
        return lines + _block(body, f.height - 3, w) + [fit(footer(f), w)]
    first = f.offset + 1 if f.rows else 0
    where = f"{first}-{f.offset + len(f.rows)} of {f.matching}" if f.rows else f"0 of {f.matching}"
    right = f"{where}  sort {f.sort}"
    if f.text:
        right += f"  filter /{f.text}"
    if f.attention:
        right += "  alerts only"
    table: list[Text] = [title_line("Tunnels", right)]
    if not f.ready:
        table.append(Text(" reading the SAD and SPD...", style="dim"))
    elif f.rows:
        table += tunnel_lines(f, sz.tunnel_rows)
    else:
        table.append(Text(" no tunnels" + (" match" if f.text or f.attention else ""), style="dim"))
    lines += _block(table, body_h, w)
    if sz.side_by_side:
        left_w = w * 2 // 5
        right_w = w - left_w - 1
        left = _block(alerts_panel(f, sz.bottom), sz.bottom, left_w)
        right_lines = _block(events_panel(f, sz.bottom), sz.bottom, right_w)
        lines += [a + Text(" ") + b for a, b in zip(left, right_lines, strict=True)]
    else:
        n_alerts = min(max(len(f.alerts), 1) + 1, max(2, sz.bottom // 2))
        lines += _block(alerts_panel(f, n_alerts), n_alerts, w)
        lines += _block(events_panel(f, sz.bottom - n_alerts), sz.bottom - n_alerts, w)
    lines.append(fit(footer(f), w))
    if f.narration:  # over the last lines of the events
        told = _narration(f.narration, w, min(3, max(1, sz.bottom - 2)))
        lines[-1 - len(told) : -1] = told
    return lines


def _narration(text: str, width: int, most: int) -> list[Text]:
    """``text`` wrapped to ``width`` on at most ``most`` lines, on a highlighted background."""
    from rich.console import Console

    console = Console(width=width, file=io.StringIO(), force_terminal=True, color_system="truecolor")
    t = Text(text, style="bold white on dark_blue")
    wrapped = list(t.wrap(console, width - 2))[:most]
    return [fit(Text(" ", style="on dark_blue") + line, width) for line in wrapped]


class Painter:
    """Renders frames to lines of terminal text (ANSI) and tells which lines changed."""

    def __init__(self, color_system: str | None = "auto") -> None:
        self._color = color_system
        self._last: list[str] = []
        self.console: Console | None = None

    def lines(self, f: Frame) -> list[str]:
        """The frame as exactly ``height`` lines of text (with ANSI styles)."""
        self.console = console = Console(
            width=f.width, height=f.height, file=io.StringIO(), force_terminal=self._color is not None,
            color_system=self._color, legacy_windows=False,  # type: ignore[arg-type]
            highlight=False, emoji=False, markup=False,
        )  # fmt: skip
        with console.capture() as cap:
            console.print(Text("\n").join(render(f)), end="", no_wrap=True, crop=True, overflow="crop")
        out = cap.get().split("\n")[: f.height]
        out += [""] * (f.height - len(out))
        return out

    def svg(self, f: Frame, title: str = "xfrmwatch top") -> str:
        """The frame as an SVG picture (rich's export_svg), for documents and reports."""
        console = Console(width=f.width, height=f.height, file=io.StringIO(), force_terminal=True,
                          color_system="truecolor", record=True, highlight=False, emoji=False, markup=False)  # fmt: skip
        console.print(Text("\n").join(render(f)), end="", no_wrap=True, crop=True, overflow="crop")
        return console.export_svg(title=title)

    def changes(self, f: Frame) -> list[tuple[int, str]]:
        """(line number, text) of each line that differs from the previous frame."""
        new = self.lines(f)
        old = self._last if len(self._last) == len(new) else []
        self._last = new
        return [(i, line) for i, line in enumerate(new) if i >= len(old) or old[i] != line]

    def forget(self) -> None:
        """The screen was cleared (resize): the next frame redraws every line."""
        self._last = []
