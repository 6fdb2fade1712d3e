"""The dashboard's board, answered by the pipeline's real state stage: after any sequence of
kernel events, timers and counters samples, the rows it keeps up to date incrementally are
exactly those of a full pass (every tunnel's view, sorted), for every order and filter."""

from __future__ import annotations

import random
import time
from typing import Any

import msgspec
import pytest
import trio
from support import ROOT

from xfrmwatch import events as ev
from xfrmwatch.board import (
    SORTS,
    Board,
    BoardQuery,
    BoardRequest,
    Sort,
    needs_attention,
    search_text,
    sort_key,
)
from xfrmwatch.filters import Filter, parse_cidr
from xfrmwatch.mirror import Mirror
from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.pipeline import StateStage
from xfrmwatch.timestamps import utc, utc_precise
from xfrmwatch.tunnels import TunnelModel, TunnelView


def _first(path: str, cls: type[Any]) -> Any:
    return next(e for e in Decoder().decode((ROOT / path).read_bytes(), 0.0, 0.0) if isinstance(e, cls))


SA_TEMPLATE: ev.SA = _first("tests/fixtures/uml/sa/0002-NEWSA.bin", ev.SaEvent).sa
POLICY_TEMPLATE: ev.Policy = _first("tests/fixtures/host/policy/0002-NEWPOLICY.bin", ev.PolicyEvent).policy
LOCAL = "192.0.2.1"
WALL0 = time.time()


class Namespace:
    """A state stage (mirror + tunnel model) fed random but plausible kernel sequences."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.mirror = Mirror(netns="t", local_addrs=frozenset({LOCAL}))
        self.model = TunnelModel(self.mirror)
        self.stage = StateStage(self.mirror, self.model, tunnels=self.model)
        self.now = 0.0
        self.spi = 0x1000
        self.live: dict[int, list[ev.SA]] = {}  # reqid -> its SAs in the kernel

    def common(self, pid: int = 0) -> dict[str, Any]:
        return {"time": utc_precise(WALL0 + self.now), "mono": self.now, "netns": "t", "nlmsg_pid": pid,
                "nlmsg_seq": 0}  # fmt: skip

    def feed(self, *events: ev.Event) -> None:
        self.stage.apply(list(events), self.now, WALL0 + self.now)

    def sa(self, reqid: int, out: bool) -> ev.SA:
        self.spi += 1
        peer = f"198.51.100.{reqid}"
        soft, hard = self.rng.choice([(None, None), (10, 16), (30, 40), (5, 60)])
        lft = msgspec.structs.replace(
            SA_TEMPLATE.lifetime, soft_add_seconds=soft, hard_add_seconds=hard, soft_bytes=None,
            hard_bytes=None, soft_packets=None, hard_packets=None,
        )  # fmt: skip
        cur = msgspec.structs.replace(SA_TEMPLATE.current, add_time=utc(WALL0 + self.now), bytes=0, packets=0)
        src, dst = (LOCAL, peer) if out else (peer, LOCAL)
        return msgspec.structs.replace(
            SA_TEMPLATE, spi=f"0x{self.spi:08x}", src=src, dst=dst, reqid=reqid, lifetime=lft, current=cur
        )

    def policy(self, reqid: int, delete: bool = False) -> None:
        tm = msgspec.structs.replace(POLICY_TEMPLATE.tmpl[0], src=LOCAL, dst=f"198.51.100.{reqid}", reqid=reqid,
                                     proto="esp", mode="tunnel")  # fmt: skip
        sel = msgspec.structs.replace(POLICY_TEMPLATE.sel, src=f"10.{reqid}.0.0/16", dst="10.0.0.0/16")
        p = msgspec.structs.replace(POLICY_TEMPLATE, dir="out", index=16 * reqid + 1, tmpl=[tm], sel=sel)
        if delete:
            self.feed(ev.DelPolicy(**self.common(), policy_id=ev.PolicyId(dir="out", index=p.index, sel=p.sel),
                                   policy=p))  # fmt: skip
        else:
            self.feed(ev.NewPolicy(**self.common(), policy=p))

    def step(self) -> None:
        """One random thing that happens in a namespace."""
        rng = self.rng
        reqid = rng.randint(1, 12)
        sas = self.live.get(reqid, [])
        what = rng.choice(["install", "install", "rekey", "soft", "hard", "delete", "policy", "unpolicy",
                           "sample", "time", "time", "flush"])  # fmt: skip
        if what == "install" and not sas:
            new = [self.sa(reqid, out=False), self.sa(reqid, out=True)]
            self.live[reqid] = new
            self.feed(ev.UpdSA(**self.common(773), sa=new[0]), ev.NewSA(**self.common(773), sa=new[1]))
        elif what == "rekey" and sas:
            new = [self.sa(reqid, out=False), self.sa(reqid, out=True)]
            self.feed(ev.UpdSA(**self.common(773), sa=new[0]), ev.NewSA(**self.common(773), sa=new[1]))
            for old in sas:
                self.feed(ev.DelSA(**self.common(773), id=ev.SaId(family=old.family, dst=old.dst, spi=old.spi,
                                                                  proto=old.proto), sa=old))  # fmt: skip
            self.live[reqid] = new
        elif what in ("soft", "hard") and sas:
            victim = rng.choice(sas)
            self.feed(ev.Expire(**self.common(), hard=what == "hard", sa=victim))
            if what == "hard":
                sas.remove(victim)
        elif what == "delete" and sas:
            for old in sas:
                self.feed(ev.DelSA(**self.common(773), id=ev.SaId(family=old.family, dst=old.dst, spi=old.spi,
                                                                  proto=old.proto), sa=old))  # fmt: skip
            self.live[reqid] = []
        elif what == "policy":
            self.policy(reqid)
        elif what == "unpolicy":
            self.policy(reqid, delete=True)
        elif what == "sample":
            counted = [
                msgspec.structs.replace(s, current=msgspec.structs.replace(s.current, bytes=rng.randint(0, 10**6)))
                for v in self.live.values() for s in v
            ]  # fmt: skip
            self.stage.counters(counted, self.now, WALL0 + self.now)
        elif what == "time":
            self.now += rng.choice([0.3, 1.0, 2.5, 7.0])
            while self.stage.next_deadline() <= self.now:
                self.stage.on_time(self.now, WALL0 + self.now)
        elif what == "flush" and rng.random() < 0.2:
            self.feed(ev.FlushSA(**self.common(), proto="esp"))
            self.live.clear()

    def ask(self, q: BoardQuery) -> Board:
        send, recv = trio.open_memory_channel[Board](1)
        self.stage.answer(BoardRequest(q, send), self.now)
        return recv.receive_nowait()


def full_pass(ns: Namespace, q: BoardQuery) -> tuple[list[TunnelView], int]:
    """What the board must answer, computed the slow way: every view, filtered and sorted."""
    views = [
        v for v in ns.model.views()
        if (not q.text or q.text.lower() in search_text(v)) and (not q.attention or needs_attention(v))
        and (q.match is None or q.match(v))
    ]  # fmt: skip
    views.sort(key=lambda v: sort_key(q.sort, v))
    return views[q.offset : q.offset + q.limit], len(views)


@pytest.mark.parametrize("sort", SORTS)
@pytest.mark.parametrize("seed", range(6))
def test_incremental_rows_equal_a_full_pass(sort: Sort, seed: int) -> None:
    """After every step of a random namespace life, the board's rows and counts equal a full
    pass, for plain, windowed, searched, attention-only and command-line-filtered queries."""
    ns = Namespace(seed)
    flt = Filter(dst=parse_cidr("198.51.100.0/29", "--dst"))
    queries = [
        BoardQuery(sort=sort, limit=5),
        BoardQuery(sort=sort, limit=3, offset=2),
        BoardQuery(sort=sort, text="REQID 1", limit=10),
        BoardQuery(sort=sort, attention=True, limit=10),
        BoardQuery(sort=sort, match=flt.match_tunnel, limit=10),
    ]
    checked = 0
    for i in range(160):
        ns.step()
        q = queries[i % len(queries)]
        board = ns.ask(q)
        rows, matching = full_pass(ns, q)
        assert rows == [r.view for r in board.rows], f"step {i}, {q}"
        assert matching == board.matching
        states: dict[str, int] = {}
        for v in ns.model.views():
            states[v.state] = states.get(v.state, 0) + 1
        assert states == dict(board.states)
        assert (len(ns.mirror.sas), len(ns.mirror.policies)) == (board.sas, board.policies)
        checked += len(rows)
    assert checked > 100  # the scenario did produce tunnels to compare


def test_rows_name_the_selectors_of_their_out_policy() -> None:
    """A tunnel's row lists the selector of the out policy that sends into it."""
    ns = Namespace(0)
    ns.policy(3)
    i, o = ns.sa(3, out=False), ns.sa(3, out=True)
    ns.feed(ev.UpdSA(**ns.common(773), sa=i), ev.NewSA(**ns.common(773), sa=o))
    (row,) = ns.ask(BoardQuery()).rows
    assert ("10.3.0.0/16 -> 10.0.0.0/16",) == row.view.selectors
    assert (i.spi, o.spi, LOCAL, "198.51.100.3") == (row.view.spi_in, row.view.spi_out, row.view.src, row.view.dst)


def test_filters_match_tunnels_by_endpoint_spi_and_reqid() -> None:
    """The command line's filters select tunnels (views and tunnel events) by what they name."""
    ns = Namespace(1)
    for reqid in (2, 9):
        i, o = ns.sa(reqid, out=False), ns.sa(reqid, out=True)
        ns.feed(ev.UpdSA(**ns.common(773), sa=i), ev.NewSA(**ns.common(773), sa=o))
    views = {v.reqid: v for v in ns.model.views()}
    assert [9] == [r for r, v in views.items() if Filter(reqid=9).match_tunnel(v)]
    assert [2] == [r for r, v in views.items() if Filter(spi=int(views[2].spi_out or "0", 16)).match_tunnel(v)]
    assert [2] == [r for r, v in views.items() if Filter(dst=parse_cidr("198.51.100.2", "--dst")).match_tunnel(v)]
    assert [] == [r for r, v in views.items() if Filter(mark=(1, 1)).match_tunnel(v)]
    up = [e for e in ns.model.on_time(100.0, WALL0 + 100) if isinstance(e, ev.TunnelEvent)]
    i, o = ns.sa(4, out=False), ns.sa(4, out=True)
    ns.now = 200.0
    out = ns.stage.apply([ev.UpdSA(**ns.common(773), sa=i), ev.NewSA(**ns.common(773), sa=o)], 200.0, WALL0 + 200)
    up = [e for e in out.events if isinstance(e, ev.TunnelUp)]
    assert 1 == len(up)
    assert Filter(reqid=4).match(up[0]) and not Filter(reqid=5).match(up[0])
    assert Filter(src=parse_cidr("192.0.2.0/24", "--src"), types=frozenset({"tunnel_up"})).match(up[0])
