"""The dashboard without a terminal: its keys, its screen at several sizes, its alerts panel,
and a whole dashboard over the pipeline's real state and rules stages on trio's mock clock
(a tunnel set up, rekeyed, then its peer gone: the frames show it, as the alerts panel does)."""

from __future__ import annotations

import re
import time
from functools import partial
from typing import Any

import msgspec
import pytest
import trio
from rich.text import Text
from support import ROOT

from xfrmwatch import events as ev
from xfrmwatch.detect.alerting import Alerter
from xfrmwatch.detect.pack import load
from xfrmwatch.filters import Filter
from xfrmwatch.mirror import Mirror
from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.pipeline import (
    OutBatch,
    RulesStage,
    Snapshot,
    StateBatch,
    StateInput,
    StateLink,
    StateStage,
    serve_rules,
    serve_state,
)
from xfrmwatch.source import SourceBatch
from xfrmwatch.timestamps import utc, utc_precise
from xfrmwatch.top.alerts import FADE_SECONDS, OpenAlerts
from xfrmwatch.top.app import Dashboard
from xfrmwatch.top.screen import Frame, Painter, columns_for, duration, layout, render
from xfrmwatch.top.terminal import frame_bytes, parse_keys
from xfrmwatch.tunnels import TunnelModel

SA: ev.SA = next(
    e.sa for e in Decoder().decode((ROOT / "tests/fixtures/uml/sa/0002-NEWSA.bin").read_bytes(), 0.0, 0.0)
    if isinstance(e, ev.SaEvent)
)  # fmt: skip
L, R = "192.0.2.1", "192.0.2.2"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_keys_are_named() -> None:
    """Printable keys stay themselves; control keys and escape sequences get names."""
    assert ["q", "/", "a", "tab", "shift-tab", "enter", "backspace", "esc", "up", "pgdn", "home", "end"] == (
        parse_keys("q/a\t\x1b[Z\r\x7f\x1b\x1b[A\x1b[6~\x1bOH\x1b[4~")
    )
    assert ["x"] == parse_keys("\x1b[99;5Qx")  # an unknown sequence is dropped whole


def test_durations() -> None:
    """Countdowns are compact and keep their sign."""
    assert ["9s", "1m40s", "2h05m", "3d04h", "-3s", "-"] == [
        duration(9.9), duration(100), duration(2 * 3600 + 5 * 60 + 1), duration(3 * 86400 + 4 * 3600), duration(-3.2),
        duration(None),
    ]  # fmt: skip


def test_the_frame_fills_the_terminal_exactly() -> None:
    """At 80x24, 100x30 and 200x60 a frame is exactly height lines of width cells, and the
    written bytes place every changed line (no screen clear between frames)."""
    for width, height in ((80, 24), (100, 30), (200, 60)):
        f = Frame(width=width, height=height, now=0.0, title="xfrmwatch top", namespaces=("",), selected=None,
                  boards=(), rows=(), matching=0, feed=tuple(Text("x" * 300) for _ in range(90)))  # fmt: skip
        lines = Painter(None).lines(f)
        assert height == len(lines)
        assert {width} == {len(ANSI.sub("", line)) for line in lines}
        assert height == len(render(f))
        p = Painter("truecolor")
        first = p.changes(f)
        assert height == len(first)
        assert [] == p.changes(f)  # nothing changed: nothing written
        assert frame_bytes(first).startswith(b"\x1b[1;1H")


def test_narrow_terminals_keep_the_telling_columns() -> None:
    """At 80 columns the table keeps tunnel, state, next rekey and hard expiry; at 200 all."""
    narrow = [c.head for c in columns_for(80, 1)]
    assert {"TUNNEL", "STATE", "REKEY", "HARD"} <= set(narrow)
    assert sum(c.width + 1 for c in columns_for(80, 1)) <= 80
    wide = [c.head for c in columns_for(200, 3)]
    assert ["NETNS", "TUNNEL", "ENDPOINTS", "SPI IN/OUT", "STATE", "AGE", "REKEY", "SOFT", "HARD", "IN/OUT B/s",
            "LAST", "#"] == wide  # fmt: skip
    assert layout(80, 24).tunnel_rows >= 8


def _alert(kind: type[ev.TunnelEvent], reqid: int, title: str, level: str, **extra: Any) -> ev.Alert:
    first = kind(time="t", mono=0.0, netns="n", nlmsg_pid=0, nlmsg_seq=0, tunnel_id=f"esp/{reqid}/{L}/{R}",
                 reqid=reqid, proto="esp", src=L, dst=R, **extra)  # fmt: skip
    rule = ev.RuleRef(id=title.lower().replace(" ", "-"), title=title, level=level)
    return ev.Alert(time="t", mono=0.0, netns="n", nlmsg_pid=0, nlmsg_seq=0, rule=rule, events=[first])


def test_alerts_open_repeat_resolve_and_fade() -> None:
    """An alert repeats into a count; a tunnel_up resolves the tunnel_down alert of its reqid
    only; the resolved one stays listed, below the open ones, then fades."""
    a = OpenAlerts()
    down = _alert(ev.TunnelDown, 7, "Tunnel down", "critical", reason="hard_expire", teardown=False,
                  rekey_failed=True, partial=False, spis=[], rekeys=0, acquires=0)  # fmt: skip
    a.feed(down, 1.0)
    a.feed(down, 5.0)
    a.feed(_alert(ev.TunnelDown, 8, "Tunnel down", "critical", reason="deleted", teardown=False,
                  rekey_failed=False, partial=False, spis=[], rekeys=0, acquires=0), 6.0)  # fmt: skip
    rows = a.rows(6.0)
    assert [(1, 6.0, 6.0), (2, 1.0, 5.0)] == sorted((r.count, r.first, r.last) for r in rows)
    assert {"critical": 2} == a.open_by_level()
    up = ev.TunnelUp(time="t", mono=0.0, netns="n", nlmsg_pid=0, nlmsg_seq=0, tunnel_id="x", reqid=7,
                     proto="esp", src=L, dst=R, mode="tunnel")  # fmt: skip
    a.feed(up, 10.0)
    rows = a.rows(10.0)
    assert [None, 10.0] == [r.resolved for r in rows]
    assert "reqid 8" in rows[0].subject
    assert {"critical": 1} == a.open_by_level()
    assert 1 == len(a.rows(10.0 + FADE_SECONDS + 1))


# --- a whole dashboard over the real state and rules stages ------------------------------------------


def sa(spi: int, src: str, dst: str) -> ev.SA:
    lft = msgspec.structs.replace(
        SA.lifetime, soft_add_seconds=10 if src == R else None, hard_add_seconds=16,
        soft_bytes=None, hard_bytes=None, soft_packets=None, hard_packets=None,
    )  # fmt: skip
    cur = msgspec.structs.replace(SA.current, add_time=utc(time.time()), bytes=0, packets=0)
    return msgspec.structs.replace(SA, spi=f"0x{spi:08x}", src=src, dst=dst, reqid=1, lifetime=lft, current=cur)


def common() -> dict[str, Any]:
    return {"time": utc_precise(time.time()), "mono": trio.current_time(), "netns": "n", "nlmsg_pid": 0,
            "nlmsg_seq": 0}  # fmt: skip


class EmptyKernel:
    async def snapshot(self) -> Snapshot:
        return Snapshot([], [], None)

    async def sas(self) -> list[ev.SA]:
        return []

    def drops(self) -> int:
        return 0


def screen_text(dash_frame: Frame) -> str:
    return "\n".join(ANSI.sub("", line) for line in Painter(None).lines(dash_frame))


async def test_dashboard_over_the_real_stages(autojump_clock: trio.abc.Clock) -> None:
    """Up, rekeyed, then no replacement: the frames show the tunnel up with its countdowns,
    then rekeyed once, then overdue, then down, with the rules' alerts in the panel."""
    inputs: dict[str, trio.MemorySendChannel[StateInput]] = {}

    async def starter(nursery: trio.Nursery, netns: str, link: StateLink) -> tuple[Any, int]:
        mirror = Mirror(netns=netns, local_addrs=frozenset({L}))
        model = TunnelModel(mirror)
        s1, r1 = trio.open_memory_channel[StateInput](16)
        s2, r2 = trio.open_memory_channel[StateBatch](16)
        s3, r3 = trio.open_memory_channel[OutBatch](16)
        link.connect(s1)
        inputs[netns] = s1
        await nursery.start(partial(serve_state, liveness_interval=0), StateStage(mirror, model, tunnels=model),
                            EmptyKernel(), r1, s2)  # fmt: skip
        await nursery.start(serve_rules, RulesStage(Alerter(load(None))), r2, s3)
        return r3, 0

    dash = Dashboard(match=Filter(reqid=1), color=None)
    async with trio.open_nursery() as n:
        await n.start(dash.watch, starter, "n")
        send = inputs["n"]

        async def feed(*events: ev.Event) -> None:
            await send.send(SourceBatch(list(events), caught_up=True))
            await trio.sleep(0.01)

        await feed(ev.UpdSA(**common(), sa=sa(0x10, R, L)), ev.NewSA(**common(), sa=sa(0x11, L, R)))
        text = screen_text(await dash.frame(200, 40))
        assert re.search(r"00000010/00000011 +up +0s +10s +10s +16s", text), text
        await trio.sleep(9.5)
        await feed(ev.Expire(**common(), hard=False, sa=sa(0x10, R, L)))
        await feed(ev.UpdSA(**common(), sa=sa(0x20, R, L)), ev.NewSA(**common(), sa=sa(0x21, L, R)))
        for old in (sa(0x10, R, L), sa(0x11, L, R)):
            sid = ev.SaId(family=old.family, dst=old.dst, spi=old.spi, proto=old.proto)
            await feed(ev.DelSA(**common(), id=sid, sa=old))
        await trio.sleep(3)
        text = screen_text(await dash.frame(200, 40))
        assert re.search(r"00000020/00000021 +up .* 1 *$", text, re.M), text
        assert "rekey_completed" in text
        await trio.sleep(7)
        await feed(ev.Expire(**common(), hard=False, sa=sa(0x20, R, L)))
        await trio.sleep(4)
        text = screen_text(await dash.frame(200, 40))
        assert re.search(r"00000020/00000021 +overdue", text), text
        assert "Rekey overdue" in text
        await trio.sleep(2)
        await feed(ev.Expire(**common(), hard=True, sa=sa(0x20, R, L)), ev.Expire(**common(), hard=True, sa=sa(0x21, L, R)))
        await trio.sleep(1)
        text = screen_text(await dash.frame(200, 40))
        assert re.search(r"-/- +down hard_expire +26s +- +- +- ", text), text
        f = await dash.frame(80, 24)
        text = screen_text(f)
        assert re.search(r" down hard_expire", text), text
        assert "Tunnel down" in text
        assert (80, 24) == (max(len(x) for x in text.split("\n")), len(text.split("\n")))
        dash.key("a")  # alerts only: the down tunnel stays, the feed keeps medium and above
        text = screen_text(await dash.frame(200, 40))
        assert "tunnel_down" in text and "newsa" not in text
        dash.key("/")
        for k in "10.99.":
            dash.key(k)
        text = screen_text(await dash.frame(200, 40))
        assert "no tunnels match" in text
        dash.key("esc")
        dash.key("a")
        await send.aclose()  # the source ends (a recording): the state stage still answers
        await trio.sleep(1)
        dash.key("s")
        text = screen_text(await dash.frame(200, 40))
        assert "sort name" in text and re.search(r"-/- +down hard_expire", text), text
        n.cancel_scope.cancel()


async def test_sort_key_cycles_through_every_order() -> None:
    """s cycles the orders and comes back to urgency; Tab needs several namespaces."""
    dash = Dashboard(match=None, color=None)
    seen = []
    for _ in range(5):
        dash.key("s")
        seen.append(dash.view.sort)
    assert ["name", "age", "rekeys", "traffic", "urgency"] == seen
    dash.key("tab")
    assert dash.view.selected is None


def test_terminal_restored_when_the_dashboard_crashes() -> None:
    """An exception inside the full screen (a bug) still gives the terminal back: its modes
    as they were, the normal screen, the cursor shown."""
    import os
    import pty
    import termios

    from xfrmwatch.top.terminal import ENTER, LEAVE, full_screen

    parent, child = pty.openpty()
    try:
        before = termios.tcgetattr(child)
        with pytest.raises(ZeroDivisionError), full_screen(child, child):
            during = termios.tcgetattr(child)
            assert not during[3] & termios.ICANON and not during[3] & termios.ECHO
            _ = 1 / 0
        assert before == termios.tcgetattr(child)
        written = os.read(parent, 4096)
        assert written.startswith(ENTER) and written.endswith(LEAVE)
    finally:
        os.close(parent)
        os.close(child)
