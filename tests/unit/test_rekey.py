"""Rekey tracking on trio's mock clock, with the event sequences of a real rekey
(ike-rekey.md): initiator, responder, dead peer on both sides."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import trio
from support import ROOT, validate_event

from xfrmwatch import events as ev
from xfrmwatch.decode import Decoder
from xfrmwatch.detect.rekey import RekeyTracker
from xfrmwatch.mirror import Mirror
from xfrmwatch.pipeline import (
    OutBatch,
    RulesStage,
    Snapshot,
    StateBatch,
    StateStage,
    serve_rules,
    serve_state,
)
from xfrmwatch.source import SourceBatch
from xfrmwatch.timestamps import utc, utc_precise

TEMPLATE: ev.SA = next(
    e.sa  # a real GCM tunnel SA recorded from the UML kernel
    for e in Decoder().decode((ROOT / "tests/fixtures/uml/sa/0002-NEWSA.bin").read_bytes(), 0.0, 0.0)
    if isinstance(e, ev.SaEvent)
)
L, R = "192.0.2.1", "192.0.2.2"
PID = 773


def sa(spi: int, src: str, dst: str, *, soft: int | None = 10, hard: int = 16, reqid: int = 1) -> ev.SA:
    lft = msgspec.structs.replace(
        TEMPLATE.lifetime, soft_add_seconds=soft if src == R else None, hard_add_seconds=hard
    )
    cur = msgspec.structs.replace(TEMPLATE.current, add_time=utc(time.time()))
    return msgspec.structs.replace(
        TEMPLATE, spi=f"0x{spi:08x}", src=src, dst=dst, reqid=reqid, lifetime=lft, current=cur
    )


def common(pid: int = PID) -> dict[str, Any]:
    return {"time": utc_precise(time.time()), "mono": trio.current_time(), "netns": "t", "nlmsg_pid": pid, "nlmsg_seq": 0}


class EmptyKernel:
    """A namespace with nothing in it yet, that never loses a message."""

    async def snapshot(self) -> Snapshot:
        return Snapshot([], [], None)

    def drops(self) -> int:
        return 0


class Side:
    """The state and rules stages of one side, fed through their real channels."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.mirror = Mirror(netns="t", local_addrs=frozenset({L}))
        self.tracker = RekeyTracker(self.mirror)
        self.send, self.recv = trio.open_memory_channel[SourceBatch](100)
        self.seen: list[dict[str, Any]] = []

    async def start(self) -> Side:
        s2, r2 = trio.open_memory_channel[StateBatch](100)
        s3, self.out = trio.open_memory_channel[OutBatch](100)
        await self.nursery.start(serve_state, StateStage(self.mirror, self.tracker), EmptyKernel(), self.recv, s2)
        await self.nursery.start(serve_rules, RulesStage(None), r2, s3)
        self.nursery.start_soon(self._collect)
        return self

    async def _collect(self) -> None:
        async for batch in self.out:
            for e in batch:
                obj = msgspec.json.decode(msgspec.json.encode(e))
                validate_event(obj)
                obj["at"] = round(trio.current_time(), 3)
                self.seen.append(obj)

    async def feed(self, e: ev.Event) -> None:
        await trio.sleep(0.0005)  # the state stage sees it a little after receipt
        await self.send.send(SourceBatch([e], caught_up=True))
        await trio.sleep(0.0005)

    async def new(self, s: ev.SA, upd: bool = False) -> None:
        cls = ev.UpdSA if upd else ev.NewSA
        await self.feed(cls(**common(), sa=s))

    async def expire(self, s: ev.SA, hard: bool) -> None:
        await self.feed(ev.Expire(**common(0), hard=hard, sa=s))

    async def delete(self, s: ev.SA) -> None:
        sid = ev.SaId(family=s.family, dst=s.dst, spi=s.spi, proto=s.proto)
        await self.feed(ev.DelSA(**common(), id=sid, sa=s))

    def derived(self) -> list[dict[str, Any]]:
        kinds = ("rekey_started", "rekey_completed", "rekey_overdue", "sa_expired_unreplaced")
        return [e for e in self.seen if e["type"] in kinds]


async def install(side: Side, inbound: ev.SA, outbound: ev.SA) -> None:
    await side.new(inbound, upd=True)
    await side.new(outbound)


async def test_initiator_rekey(autojump_clock: trio.abc.Clock) -> None:
    """soft EXPIRE -> UPDSA/NEWSA -> DELSA old: one started, one completed, no alarm."""
    async with trio.open_nursery() as n:
        left = await Side(n).start()
        in1, out1 = sa(0x100, R, L), sa(0x200, L, R)
        await install(left, in1, out1)
        await trio.sleep(9.85)
        await left.expire(in1, hard=False)
        await trio.sleep(0.011)
        in2, out2 = sa(0x101, R, L), sa(0x201, L, R)
        await install(left, in2, out2)
        await left.delete(out1)
        await trio.sleep(5)
        await left.delete(in1)
        await trio.sleep(20)
        n.cancel_scope.cancel()
    d = left.derived()
    assert ["rekey_started", "rekey_completed"] == [e["type"] for e in d]
    started, done = d
    assert ("0x00000100", 1) == (started["spi"], started["reqid"])
    assert 5.9 < started["seconds_to_hard"] <= 6.2
    assert (["0x00000100", "0x00000200"], ["0x00000101", "0x00000201"], True) == (
        done["old_spis"], done["new_spis"], done["initiator"],
    )  # fmt: skip
    assert 0.01 <= done["duration_seconds"] < 0.1
    assert sorted([L, R]) == done["endpoints"]


async def test_responder_rekey_without_expire(autojump_clock: trio.abc.Clock) -> None:
    """The side that sees no soft EXPIRE still gets exactly one rekey_completed."""
    async with trio.open_nursery() as n:
        right = await Side(n).start()
        in1, out1 = sa(0x300, L, R, soft=20, hard=26), sa(0x400, R, L, soft=20, hard=26)
        await install(right, in1, out1)
        for gen in range(1, 4):  # three rekeys, 10 s apart
            await trio.sleep(10)
            in2, out2 = sa(0x300 + gen, L, R, soft=20, hard=26), sa(0x400 + gen, R, L, soft=20, hard=26)
            await install(right, in2, out2)
            await right.delete(out1)
            await trio.sleep(5)
            await right.delete(in1)
            in1, out1 = in2, out2
        await trio.sleep(3)
        n.cancel_scope.cancel()
    d = right.derived()
    assert ["rekey_completed"] * 3 == [e["type"] for e in d]
    assert [False] * 3 == [e["initiator"] for e in d]
    assert ["0x00000301", "0x00000401"] == d[0]["new_spis"]


async def test_first_install_is_not_a_rekey(autojump_clock: trio.abc.Clock) -> None:
    """Installing the first SAs of a CHILD_SA derives nothing."""
    async with trio.open_nursery() as n:
        side = await Side(n).start()
        await install(side, sa(0x500, R, L), sa(0x600, L, R))
        await trio.sleep(3)
        n.cancel_scope.cancel()
    assert [] == side.derived()


async def test_peer_dead_alive_side(autojump_clock: trio.abc.Clock) -> None:
    """Soft EXPIRE, no replacement: rekey_overdue half-way to the hard limit, then one
    sa_expired_unreplaced at the hard EXPIREs; the ACQUIRE that follows is attached."""
    async with trio.open_nursery() as n:
        left = await Side(n).start()
        in1, out1 = sa(0x700, R, L), sa(0x800, L, R)
        await install(left, in1, out1)
        await trio.sleep(10)
        await left.expire(in1, hard=False)
        await trio.sleep(6)
        await left.expire(in1, hard=True)
        await left.expire(out1, hard=True)
        acq = next(
            e
            for e in Decoder().decode((ROOT / "tests/fixtures/uml/traffic-u1/0023-ACQUIRE.bin").read_bytes(), 0.0, 0.0)
            if isinstance(e, ev.AcquireEvent)
        )
        tmpl = [msgspec.structs.replace(acq.policy.tmpl[0], reqid=1, src=L, dst=R)]
        acq = msgspec.structs.replace(acq, policy=msgspec.structs.replace(acq.policy, tmpl=tmpl))
        derived, attached = left.tracker.observe(acq, None, trio.current_time(), time.time())
        await trio.sleep(10)
        n.cancel_scope.cancel()
    d = left.derived()
    assert ["rekey_started", "rekey_overdue", "sa_expired_unreplaced"] == [e["type"] for e in d]
    _, overdue, gone = d
    assert 12.9 <= overdue["at"] <= 13.1  # soft at 10, hard at 16: half-way
    assert 2.9 <= overdue["seconds_to_hard"] <= 3.1
    assert overdue["at"] < gone["at"]
    assert (True, "0x00000700") == (gone["rekey_started"], gone["spi"])
    assert ([], True) == (derived, attached)
    assert 1 == left.tracker.acquires_attached((1, "esp", L, R))


async def test_peer_dead_dead_side(autojump_clock: trio.abc.Clock) -> None:
    """The side whose daemon died: an already-replaced generation expiring is ignored;
    the current one gives started, overdue, unreplaced from the kernel's EXPIREs alone."""
    async with trio.open_nursery() as n:
        right = await Side(n).start()
        old_in, old_out = sa(0x900, L, R, soft=20, hard=26), sa(0xA00, R, L, soft=20, hard=26)
        await install(right, old_in, old_out)
        await trio.sleep(10)
        cur_in, cur_out = sa(0x901, L, R, soft=20, hard=26), sa(0xA01, R, L, soft=20, hard=26)
        await install(right, cur_in, cur_out)
        await right.delete(old_out)  # the delayed delete of old_in never runs: daemon killed
        await trio.sleep(10)
        await right.expire(old_in, hard=False)
        await trio.sleep(6)
        await right.expire(old_in, hard=True)
        await trio.sleep(4)
        await right.expire(cur_in, hard=False)
        await trio.sleep(6)
        await right.expire(cur_in, hard=True)
        await right.expire(cur_out, hard=True)
        await trio.sleep(5)
        n.cancel_scope.cancel()
    d = right.derived()
    assert ["rekey_completed", "rekey_started", "rekey_overdue", "sa_expired_unreplaced"] == [e["type"] for e in d]
    assert all(e["spi"] == "0x00000901" for e in d[1:])


async def test_soft_expired_sa_deleted_not_rekeyed(autojump_clock: trio.abc.Clock) -> None:
    """A CHILD_SA closed after its soft expiry (not rekeyed) is no overdue rekey, and leaves no state."""
    async with trio.open_nursery() as n:
        left = await Side(n).start()
        in1, out1 = sa(0xB00, R, L), sa(0xC00, L, R)
        await install(left, in1, out1)
        await trio.sleep(10)
        await left.expire(in1, hard=False)
        await trio.sleep(0.5)
        await left.delete(out1)
        await left.delete(in1)
        await trio.sleep(10)
        n.cancel_scope.cancel()
    assert ["rekey_started"] == [e["type"] for e in left.derived()]
    assert left.tracker.next_deadline() is None
    assert {} == left.mirror.sas and {} == left.mirror._pairs and {} == left.mirror._generations


async def test_flush_forgets_pending_rekeys(autojump_clock: trio.abc.Clock) -> None:
    """FLUSHSA after a soft expiry: no rekey_overdue later."""
    async with trio.open_nursery() as n:
        left = await Side(n).start()
        in1, out1 = sa(0xD00, R, L), sa(0xE00, L, R)
        await install(left, in1, out1)
        await trio.sleep(10)
        await left.expire(in1, hard=False)
        await left.feed(ev.FlushSA(**common(), proto="any"))
        await trio.sleep(10)
        n.cancel_scope.cancel()
    assert ["rekey_started"] == [e["type"] for e in left.derived()]
    assert {} == left.mirror.sas
