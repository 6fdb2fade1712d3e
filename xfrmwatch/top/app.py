"""``xfrmwatch top``: the live dashboard over the same pipeline as ``monitor``.

One pipeline per watched namespace (``--netns``, or ``--all-netns``: our own namespace and
every one under /run/netns, followed as they come and go).  The dashboard never reads a
pipeline's state: it consumes each pipeline's output (the events, each followed by its
alerts: the feed, the alerts panel, the header's rates and counts) and asks each state stage
for a :class:`~xfrmwatch.board.Board` of the rows it can show (:class:`~xfrmwatch.pipeline.StateLink`).
Per namespace it also reads /proc/net/xfrm_stat (error counters that moved since start)
and /proc/net/netlink (the key managers listening).

Redraws: at most :data:`MAX_FPS` per second while events arrive or keys are pressed, once a
second otherwise (countdowns move); only the lines that changed are written.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import signal
import termios
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from heapq import merge
from typing import TextIO

import structlog
import trio
from rich.console import Console
from rich.text import Text

from .. import events as ev
from .. import levels
from ..board import SORTS, Board, BoardQuery, BoardRow, Sort
from ..errors import UserError
from ..filters import Filter
from ..netlink.netns import NETNS_RUN_DIR, entered
from ..netlink.proc import ProcFile, key_managers, xfrm_listeners, xfrm_stat
from ..output.render import TextRenderer
from ..pipeline import OutBatch, StateLink
from .alerts import OpenAlerts
from .screen import Frame, Painter, layout
from .terminal import frame_bytes, full_screen, read_keys, resume, suspend, write

log = structlog.get_logger("xfrmwatch.top")

#: redraws per second at most
MAX_FPS = 4.0
#: with nothing happening, a redraw this often (the countdowns move)
IDLE_REDRAW = 1.0
#: events kept for the feed
FEED_SIZE = 1000
#: how often the namespaces under /run/netns are looked for (--all-netns), the key managers read
RESCAN = 5.0
#: how long a frame waits for a busy state stage before it shows that namespace's last board
BOARD_WAIT = 1.0

#: starts the pipeline of one namespace, connected to the link: its output, and its subscriber's
#: port id (None: not a live namespace, a recording: no /proc files to read)
Starter = Callable[
    [trio.Nursery, str, StateLink], Awaitable[tuple[trio.MemoryReceiveChannel[OutBatch], int | None]]
]


class Probe:
    """One namespace's /proc files: xfrm_stat counters that moved, key managers listening."""

    def __init__(self, netns: str, own_portid: int) -> None:
        with entered(netns or None):
            self.stat = ProcFile("/proc/net/xfrm_stat")
            self.netlink = ProcFile("/proc/net/netlink")
        self.own = own_portid
        self.base = xfrm_stat(self.stat.read())
        self.seen: dict[str, bool] = {}  # "comm[pid]" -> listening now

    def moved(self) -> dict[str, int]:
        now = xfrm_stat(self.stat.read())
        return {k: v - self.base.get(k, 0) for k, v in now.items() if v != self.base.get(k, 0)}

    def read_key_managers(self) -> None:
        """Blocking (it may look through /proc/*/fd): run it in a thread."""
        found = key_managers(xfrm_listeners(self.netlink.read()), own_portid=self.own)
        names = {f"{k.comm or 'unknown'}[{k.pid}]" if k.pid else "unknown listener" for k in found}
        for n in self.seen:
            self.seen[n] = n in names
        for n in names:
            self.seen[n] = True

    def close(self) -> None:
        self.stat.close()
        self.netlink.close()


@dataclass
class Watched:
    netns: str
    link: StateLink
    probe: Probe | None
    board: Board | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


@dataclass
class ViewState:
    """What the user chose with the keys."""

    sort: Sort = "urgency"
    text: str = ""
    attention: bool = False
    #: the namespace shown (None: all)
    selected: str | None = None
    offset: int = 0
    prompt: str | None = None
    help: bool = False


class Activity:
    """The event stream as the header and the feed see it."""

    def __init__(self, match: Filter | None) -> None:
        self.match = match
        self.feed: deque[ev.Event] = deque(maxlen=FEED_SIZE)
        self.overruns = 0
        self.resyncs = 0
        self._seconds: deque[tuple[int, int]] = deque(maxlen=6)
        self.started = trio.current_time()

    def take(self, e: ev.Event, now: float) -> None:
        if isinstance(e, ev.Overrun):
            self.overruns += 1
        elif isinstance(e, ev.Resync):
            self.resyncs += 1
        sec = int(now)
        if self._seconds and self._seconds[-1][0] == sec:
            self._seconds[-1] = (sec, self._seconds[-1][1] + 1)
        else:
            self._seconds.append((sec, 1))
        if self.match is None or self.match.match(e):
            self.feed.append(e)

    def rate(self, now: float) -> float:
        """Events per second over the last 5 whole seconds."""
        sec = int(now)
        span = min(5.0, max(1.0, now - self.started))
        return sum(n for s, n in self._seconds if sec - 5 <= s < sec) / span


class Dashboard:
    """The dashboard's state (outside every pipeline) and its tasks."""

    def __init__(
        self,
        *,
        match: Filter | None,
        title: str = "xfrmwatch top",
        color: str | None = "auto",
        clock_rate: float = 1.0,
        narrate: Callable[[ev.Event], str | None] | None = None,
    ) -> None:
        """``clock_rate``: seconds of trio's clock per real second (a replay's speed), so that
        redraws keep their real pace; ``narrate``: a sentence to show after an event (the demo)."""
        self.match = match
        self.title = title
        self.color = color
        self.clock_rate = clock_rate
        self.narrate = narrate
        self.watched: dict[str, Watched] = {}
        self.view = ViewState()
        self.alerts = OpenAlerts()
        self.activity = Activity(match)
        self.notice = ""
        self.narration = ""
        self.quit = trio.CancelScope()
        self._wake = trio.Event()
        self._renderers = {True: TextRenderer(show_netns=True), False: TextRenderer(show_netns=False)}
        self._stat_moved: dict[str, dict[str, int]] = {}
        #: the next frame redraws every line (the terminal was resized, or the screen lost)
        self.redraw_all = False
        #: the last frame drawn
        self.last: Frame | None = None

    # --- namespaces -----------------------------------------------------------------------------

    async def watch(
        self, starter: Starter, netns: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run one namespace's pipeline and take its output, until cancelled or it ends."""
        link = StateLink()
        w = Watched(netns, link, None)
        try:
            with w.scope:
                async with trio.open_nursery() as n:
                    recv, portid = await starter(n, netns, link)
                    if portid is not None:
                        try:
                            w.probe = Probe(netns, portid)
                        except (OSError, UserError) as exc:
                            log.warning("cannot read /proc/net files of the namespace", netns=netns,
                                        error=str(exc))  # fmt: skip
                    self.watched[netns] = w
                    task_status.started()
                    async with recv:
                        async for batch in recv:
                            self.take(batch)
                    # the pipeline ended (its source, and its link closed): keep its last board
                    self.notice = "the pipeline has ended: q quits"
                    self.wake()
                    await trio.sleep_forever()  # keep showing the last boards
        finally:
            link.close()
            if w.probe is not None:
                w.probe.close()
            self.watched.pop(netns, None)
            self.wake()

    async def follow_namespaces(self, starter: Starter, nursery: trio.Nursery) -> None:
        """--all-netns: start a pipeline for each namespace that appears, stop those that go."""
        while True:
            await trio.sleep(RESCAN)
            wanted = all_namespaces()
            for name in [n for n in self.watched if n not in wanted]:
                self.watched[name].scope.cancel()
            for name in sorted(wanted - set(self.watched)):
                try:
                    await nursery.start(self.watch, starter, name)
                except UserError as exc:
                    log.warning("cannot watch namespace", netns=name, error=str(exc))

    async def probe_loop(self) -> None:
        """Key managers every few seconds (a worker thread), xfrm_stat every second."""
        next_km = -math.inf
        while True:
            now = trio.current_time()
            for w in list(self.watched.values()):
                if w.probe is None:
                    continue
                self._stat_moved[w.netns] = w.probe.moved()
                if now >= next_km:
                    await trio.to_thread.run_sync(w.probe.read_key_managers)
            if now >= next_km:
                next_km = now + RESCAN
            await trio.sleep(1.0)

    # --- the event stream ---------------------------------------------------------------------

    def take(self, batch: OutBatch) -> None:
        now = trio.current_time()
        for e in batch:
            self.activity.take(e, now)
            self.alerts.feed(e, now)
            if self.narrate is not None and (said := self.narrate(e)):
                self.narration = said
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    # --- keys -------------------------------------------------------------------------------------

    def key(self, k: str) -> None:
        v = self.view
        if v.help:
            v.help = False
            return
        if v.prompt is not None:
            if k == "enter":
                v.prompt = None
            elif k == "esc":
                v.prompt = None
                v.text = ""
            elif k == "backspace":
                v.prompt = v.prompt[:-1]
                v.text = v.prompt
            elif len(k) == 1:
                v.prompt += k
                v.text = v.prompt
            v.offset = 0
            return
        names = [None, *sorted(self.watched)]
        if k == "q":
            self.quit.cancel()
        elif k == "/":
            v.prompt = v.text
        elif k == "esc":
            v.text = ""
        elif k == "s":
            v.sort = SORTS[(SORTS.index(v.sort) + 1) % len(SORTS)]
            v.offset = 0
        elif k in ("tab", "shift-tab") and len(names) > 2:
            i = names.index(v.selected) if v.selected in names else 0
            v.selected = names[(i + (1 if k == "tab" else -1)) % len(names)]
            v.offset = 0
        elif k == "a":
            v.attention = not v.attention
            v.offset = 0
        elif k == "?":
            v.help = True
        elif k in ("up", "down", "pgup", "pgdn", "home", "end"):
            page = self._rows_shown
            step = {"up": -1, "down": 1, "pgup": -page, "pgdn": page, "home": -math.inf, "end": math.inf}[k]
            v.offset = int(max(0, min(v.offset + step, max(0, self._matching - page))))

    _rows_shown = 10
    _matching = 0

    async def keys(self, recv: trio.MemoryReceiveChannel[str]) -> None:
        async with recv:
            async for k in recv:
                self.key(k)
                self.wake()

    # --- frames -----------------------------------------------------------------------------------

    async def boards(self, rows: int) -> tuple[tuple[Board, ...], tuple[BoardRow, ...], int]:
        """Ask the state stage of each namespace shown; merge their rows."""
        v = self.view
        q = BoardQuery(
            sort=v.sort, text=v.text, attention=v.attention, limit=v.offset + rows,
            match=None if self.match is None else self.match.match_tunnel,
        )  # fmt: skip
        boards: list[Board] = []
        for w in list(self.watched.values()):
            if v.selected is not None and w.netns != v.selected:
                continue
            with trio.move_on_after(BOARD_WAIT):
                b = await w.link.board(q)
                if b is not None:
                    w.board = b
            if w.board is not None:
                boards.append(w.board)
        merged = list(merge(*(b.rows for b in boards), key=lambda r: r.key))
        return tuple(boards), tuple(merged[v.offset : v.offset + rows]), sum(b.matching for b in boards)

    def feed_lines(self, height: int) -> tuple[Text, ...]:
        v = self.view
        multi = len(self.watched) > 1
        render = self._renderers[multi].rich
        text = v.text.lower()
        out: list[Text] = []
        for e in reversed(self.activity.feed):
            if len(out) >= height:
                break
            if v.selected is not None and e.netns != v.selected:
                continue
            if v.attention and not levels.at_least(levels.level_of(e), "medium"):
                continue
            line = render(e)
            if text and text not in line.plain.lower():
                continue
            out.append(line)
        return tuple(reversed(out))

    async def frame(self, width: int, height: int) -> Frame:
        sz = layout(width, height)
        boards, rows, matching = await self.boards(sz.tunnel_rows)
        self._rows_shown, self._matching = sz.tunnel_rows, matching
        v = self.view
        now = trio.current_time()
        sel = v.selected
        kms: list[str] = []
        moved: dict[str, int] = {}
        for w in self.watched.values():
            if sel is not None and w.netns != sel:
                continue
            if w.probe is not None:
                where = f" ({w.netns or 'own'})" if len(self.watched) > 1 and sel is None else ""
                kms += [n + where + ("" if on else " gone") for n, on in w.probe.seen.items()]
            for k, d in self._stat_moved.get(w.netns, {}).items():
                moved[k] = moved.get(k, 0) + d
        if not any(w.probe is not None for w in self.watched.values()):
            kms = ["not known (no /proc files: a recording)"]
        return Frame(
            width=width, height=height, now=now, title=self.title, namespaces=tuple(sorted(self.watched)),
            selected=sel, boards=boards, rows=rows, matching=matching, offset=v.offset,
            key_managers=tuple(kms), stat_moved=tuple(sorted(moved.items())), overruns=self.activity.overruns,
            resyncs=self.activity.resyncs, rate=self.activity.rate(now),
            alerts=tuple(self.alerts.rows(now, sel)),
            open_alerts=tuple(sorted(self.alerts.open_by_level(sel).items(), key=lambda x: -levels.rank(x[0]))),
            feed=self.feed_lines(sz.bottom), sort=v.sort, text=v.text, attention=v.attention, prompt=v.prompt,
            help=v.help, notice=self.notice, narration=self.narration, ready=bool(boards),
        )  # fmt: skip

    async def draw_loop(self, fd: int, size: Callable[[], tuple[int, int]]) -> None:
        """Redraw when something changed (at most MAX_FPS a second), or every IDLE_REDRAW."""
        painter = Painter(self.color)
        last = -math.inf
        while True:
            rate = self.clock_rate
            wait = max(0.0, last + rate / MAX_FPS - trio.current_time())
            await trio.sleep(wait)
            with trio.move_on_after(IDLE_REDRAW * rate):
                await self._wake.wait()
            self._wake = trio.Event()
            clear = b""
            if self.redraw_all:  # resized, or back from a stop: the screen is not what we drew
                self.redraw_all = False
                painter.forget()
                clear = b"\x1b[2J"
            last = trio.current_time()
            width, height = size()
            f = self.last = await self.frame(width, height)
            changes = painter.changes(f)
            if changes:
                await write(fd, clear + frame_bytes(changes))


class LogLines:
    """While the screen is ours, log lines go here, not to stderr: the latest warning shows
    in the footer, and the warnings and errors are written to stderr once the terminal is
    restored."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash
        self.lines: deque[str] = deque(maxlen=200)

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                self.lines.append(line)
                if "[info" not in line and "[debug" not in line:
                    self.dash.notice = line.strip()[-120:]
        return len(text)

    def flush(self) -> None:
        pass

    def __enter__(self) -> LogLines:
        from ..cli import configure_logging

        configure_logging("console", file=self)
        return self

    def __exit__(self, *exc: object) -> None:
        from ..cli import configure_logging

        configure_logging("console")

    def replay(self, out: TextIO) -> None:
        """The warnings and errors logged meanwhile (informational lines are left out)."""
        for line in self.lines:
            if "[info" not in line and "[debug" not in line:
                print(line, file=out)


def all_namespaces() -> set[str]:
    """Our own namespace ("") and every one named under /run/netns."""
    try:
        return {"", *os.listdir(NETNS_RUN_DIR)}
    except FileNotFoundError:
        return {""}


def color_system(fd: int) -> str | None:
    """The terminal's colours as rich detects them (NO_COLOR, TERM...); None when not a terminal."""
    if not os.isatty(fd):
        return None
    return Console(file=io.StringIO(), force_terminal=True).color_system


def terminal_size(fd: int) -> tuple[int, int]:
    try:
        s = os.get_terminal_size(fd)
        return max(40, s.columns), max(12, s.lines)
    except OSError:
        s = shutil.get_terminal_size((120, 40))
        return max(40, s.columns), max(12, s.lines)


async def run(
    dash: Dashboard,
    starter: Starter,
    namespaces: list[str],
    *,
    follow: bool = False,
    once: bool = False,
    svg: str | None = None,
    fd_in: int = 0,
    fd_out: int = 1,
) -> int:
    """Start the namespaces' pipelines (an error there is the user's: raised before the screen
    changes), then show the dashboard until ``q``, SIGINT, SIGTERM or SIGHUP; or, with
    ``once``, print one frame."""
    async with trio.open_nursery() as root:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGWINCH,
                                       signal.SIGTSTP, signal.SIGCONT) as signals:  # fmt: skip
            for name in namespaces:
                try:
                    await root.start(dash.watch, starter, name)
                except UserError as exc:
                    if not follow or name == "":
                        raise  # the namespace asked for: the user's mistake, one line
                    log.warning("cannot watch namespace", netns=name, error=str(exc))
            root.start_soon(dash.probe_loop)
            if follow:
                root.start_soon(dash.follow_namespaces, starter, root)
            if once:
                await trio.to_thread.run_sync(_read_all_key_managers, dash)
                for w in dash.watched.values():
                    if w.probe is not None:
                        dash._stat_moved[w.netns] = w.probe.moved()
                width, height = terminal_size(fd_out)
                f = await dash.frame(width, height)
                painter = Painter(color_system(fd_out))
                lines = painter.lines(f)
                if svg is not None:
                    await trio.Path(svg).write_text(painter.svg(f), encoding="utf-8")
                await write(fd_out, ("\n".join(line.rstrip() if not os.isatty(fd_out) else line
                                               for line in lines) + "\n").encode())  # fmt: skip
                root.cancel_scope.cancel()
                return 0
            saved = termios.tcgetattr(fd_in)
            with dash.quit, full_screen(fd_in, fd_out):
                keys_send, keys_recv = trio.open_memory_channel[str](64)
                root.start_soon(read_keys, fd_in, keys_send)
                root.start_soon(dash.keys, keys_recv)
                root.start_soon(dash.draw_loop, fd_out, lambda: terminal_size(fd_out))
                async for sig in signals:
                    if sig == signal.SIGWINCH:
                        dash.redraw_all = True
                        dash.wake()
                    elif sig == signal.SIGTSTP:
                        suspend(fd_in, fd_out, saved)
                        os.kill(os.getpid(), signal.SIGSTOP)
                    elif sig == signal.SIGCONT:
                        resume(fd_in, fd_out)
                        dash.redraw_all = True
                        dash.wake()
                    else:
                        break
            if svg is not None and dash.last is not None:
                await trio.Path(svg).write_text(Painter("truecolor").svg(dash.last), encoding="utf-8")
            root.cancel_scope.cancel()
    return 0


def _read_all_key_managers(dash: Dashboard) -> None:
    for w in list(dash.watched.values()):
        if w.probe is not None:
            w.probe.read_key_managers()
