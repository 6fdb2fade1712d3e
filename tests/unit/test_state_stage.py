"""The tunnel model inside the pipeline's real state and rules stages, on trio's mock
clock: its deadlines fire from the stage's own timer, ACQUIREs it attaches skip the rules,
and the stage reads SA counters every liveness interval (traffic_stalled)."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import msgspec
import trio
from support import ROOT, validate_event

from xfrmwatch import events as ev
from xfrmwatch.mirror import Mirror
from xfrmwatch.netlink.decode import Decoder
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
from xfrmwatch.tunnels import TunnelModel, TunnelSettings

TEMPLATE: ev.SA = next(
    e.sa  # a real GCM tunnel SA recorded from the UML kernel
    for e in Decoder().decode((ROOT / "tests/fixtures/uml/sa/0002-NEWSA.bin").read_bytes(), 0.0, 0.0)
    if isinstance(e, ev.SaEvent)
)
ACQUIRE: ev.AcquireEvent = next(
    e
    for e in Decoder().decode((ROOT / "tests/fixtures/uml/traffic-u1/0023-ACQUIRE.bin").read_bytes(), 0.0, 0.0)
    if isinstance(e, ev.AcquireEvent)
)
L, R = "192.0.2.1", "192.0.2.2"


def sa(spi: int, src: str, dst: str, *, soft: int | None = 10, hard: int | None = 16) -> ev.SA:
    lft = msgspec.structs.replace(
        TEMPLATE.lifetime, soft_add_seconds=soft if src == R else None, hard_add_seconds=hard,
        soft_bytes=None, hard_bytes=None, soft_packets=None, hard_packets=None,
    )  # fmt: skip
    cur = msgspec.structs.replace(TEMPLATE.current, add_time=utc(time.time()), bytes=0, packets=0)
    return msgspec.structs.replace(TEMPLATE, spi=f"0x{spi:08x}", src=src, dst=dst, reqid=1, lifetime=lft, current=cur)


def common(pid: int = 773) -> dict[str, Any]:
    return {"time": utc_precise(time.time()), "mono": trio.current_time(), "netns": "t", "nlmsg_pid": pid, "nlmsg_seq": 0}


class CountingKernel:
    """A namespace that starts empty, never loses a message, and reports the SAs given to
    it with the byte counters a test sets."""

    def __init__(self) -> None:
        self.table: dict[str, ev.SA] = {}
        self.bytes: dict[str, int] = {}
        self.polls = 0

    async def snapshot(self) -> Snapshot:
        return Snapshot([], [], None)

    async def sas(self) -> list[ev.SA]:
        self.polls += 1
        return [
            msgspec.structs.replace(s, current=msgspec.structs.replace(s.current, bytes=self.bytes.get(k, 0)))
            for k, s in self.table.items()
        ]

    def drops(self) -> int:
        return 0


class Side:
    """The state and rules stages of one side, fed through their real channels."""

    def __init__(self, nursery: trio.Nursery, rules: bool = False, **settings: Any) -> None:
        self.nursery = nursery
        self.mirror = Mirror(netns="t", local_addrs=frozenset({L}))
        self.model = TunnelModel(self.mirror, TunnelSettings(**settings))
        self.kernel = CountingKernel()
        self.send, self.recv = trio.open_memory_channel[SourceBatch](100)
        self.seen: list[dict[str, Any]] = []
        self.rules = rules

    async def start(self, liveness_interval: float = 0.0) -> Side:
        from xfrmwatch.detect.alerting import Alerter
        from xfrmwatch.detect.pack import load

        s2, r2 = trio.open_memory_channel[StateBatch](100)
        s3, self.out = trio.open_memory_channel[OutBatch](100)
        stage = StateStage(self.mirror, self.model)
        serve = partial(serve_state, liveness_interval=liveness_interval)
        await self.nursery.start(serve, stage, self.kernel, self.recv, s2)
        await self.nursery.start(serve_rules, RulesStage(Alerter(load(None)) if self.rules else None), r2, s3)
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
        await self.send.send(SourceBatch([e], caught_up=True))
        await trio.sleep(0.001)

    async def install(self, i: ev.SA, o: ev.SA) -> None:
        await self.feed(ev.UpdSA(**common(), sa=i))
        await self.feed(ev.NewSA(**common(), sa=o))

    def types(self, *want: str) -> list[str]:
        return [e["type"] for e in self.seen if e["type"] in want]


async def test_rekey_and_dead_peer_through_the_stages(autojump_clock: trio.abc.Clock) -> None:
    """The rekey completes as the daemon retires the old SA; the stage's own timer fires rekey_overdue
    half-way to the hard limit, and decides tunnel_down within 1 s of the hard EXPIREs; the
    ACQUIRE that follows is attached to the tunnel (the rules do not see it: no storm alert)."""
    async with trio.open_nursery() as n:
        side = await Side(n, rules=True).start()
        i1, o1 = sa(0x100, R, L), sa(0x200, L, R)
        await side.install(i1, o1)
        await trio.sleep(10)
        await side.feed(ev.Expire(**common(0), hard=False, sa=i1))
        i2, o2 = sa(0x101, R, L), sa(0x201, L, R)
        await side.install(i2, o2)
        await side.feed(ev.DelSA(**common(), id=ev.SaId(family="inet", dst=R, spi=o1.spi, proto="esp"), sa=o1))
        await trio.sleep(10)
        await side.feed(ev.Expire(**common(0), hard=False, sa=i2))
        await trio.sleep(6)
        t_hard = trio.current_time()
        await side.feed(ev.Expire(**common(0), hard=True, sa=i2))
        await side.feed(ev.Expire(**common(0), hard=True, sa=o2))
        tmpl = [msgspec.structs.replace(ACQUIRE.policy.tmpl[0], reqid=1, src=L, dst=R)]
        for _ in range(30):
            await side.feed(msgspec.structs.replace(ACQUIRE, **common(0), policy=msgspec.structs.replace(ACQUIRE.policy, tmpl=tmpl)))
        await trio.sleep(5)
        n.cancel_scope.cancel()
    derived = ("tunnel_up", "rekey_started", "rekey_completed", "rekey_overdue", "tunnel_down")
    assert ["tunnel_up", "rekey_started", "rekey_completed", "rekey_started", "rekey_overdue", "tunnel_down"] == side.types(*derived)
    done = next(e for e in side.seen if e["type"] == "rekey_completed")
    overdue = next(e for e in side.seen if e["type"] == "rekey_overdue")
    down = next(e for e in side.seen if e["type"] == "tunnel_down")
    assert 10.0 <= done["at"] <= 10.1  # when the old outbound SA was retired, right after the new pair
    assert 2.9 < overdue["seconds_to_hard"] <= 3.0
    assert 0 < down["at"] - t_hard <= 1.0
    assert ("hard_expire", True) == (down["reason"], down["rekey_failed"])
    alerts = [e["rule"]["title"] for e in side.seen if e["type"] == "alert"]
    assert ["Rekey overdue", "Tunnel down without a replacement"] == alerts


async def test_liveness_reads_counters_and_reports_a_stall(autojump_clock: trio.abc.Clock) -> None:
    """Every liveness interval the stage reads the SAs' counters: inbound stops while
    outbound keeps counting: traffic_stalled after stall_after; inbound back: traffic_resumed."""
    async with trio.open_nursery() as n:
        side = await Side(n, stall_after=5.0).start(liveness_interval=1.0)
        i1, o1 = sa(0x100, R, L, soft=None, hard=None), sa(0x200, L, R, soft=None, hard=None)
        await side.install(i1, o1)
        side.kernel.table = {"in": i1, "out": o1}
        for t in range(1, 31):
            side.kernel.bytes["out"] = 1000 * t
            if t <= 5 or t > 20:
                side.kernel.bytes["in"] = 1000 * t
            await trio.sleep(1)
        n.cancel_scope.cancel()
    stalled = next(e for e in side.seen if e["type"] == "traffic_stalled")
    resumed = next(e for e in side.seen if e["type"] == "traffic_resumed")
    assert 10.0 <= stalled["at"] <= 12.0 and stalled["silent_seconds"] >= 5.0
    assert 21.0 <= resumed["at"] <= 23.0
    assert 25 <= side.kernel.polls <= 31
