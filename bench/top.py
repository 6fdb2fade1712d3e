"""What a frame of `xfrmwatch top` costs at 100,000 SAs + 100,000 policies.

    .venv/bin/python bench/top.py [--tunnels 50000] [--frames 40] [--size 80x24 --size 200x60]

Builds one namespace's state stage as the pipeline does (a mirror loaded from a dump of
2 x ``--tunnels`` SAs, real GCM SAs with time lifetimes, and 2 x ``--tunnels`` policies:
an out and an in policy per tunnel; the tunnel model loaded from it), then times frames:
between two frames a batch of kernel events (``--rekeys`` tunnels rekeyed: UPDSA, NEWSA,
DELSA x2 each) goes through the stage, and a frame is the state stage's answer to the
dashboard's request (the visible rows, sorted by urgency, and the counts) plus the rendering
of the whole screen to terminal text.  Printed: the first answer (the board is built from
every tunnel once), then per size the median / p95 / max of the steady frames, split into
answer and render; then a frame after a sort change and a frame with a text filter (both
pass over every tunnel).  The target: a frame in <= 50 ms.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from pathlib import Path

import msgspec
import trio

from xfrmwatch import events as ev
from xfrmwatch.board import Board, BoardQuery, BoardRequest, Sort
from xfrmwatch.mirror import Mirror
from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.pipeline import StateStage
from xfrmwatch.timestamps import utc, utc_precise
from xfrmwatch.top.screen import Frame, Painter, layout
from xfrmwatch.tunnels import TunnelModel

ROOT = Path(__file__).resolve().parent.parent
LOCAL = "192.0.2.1"


def _first(path: str, cls: type) -> object:
    return next(e for e in Decoder().decode((ROOT / path).read_bytes(), 0.0, 0.0) if isinstance(e, cls))


SA: ev.SA = _first("tests/fixtures/uml/sa/0002-NEWSA.bin", ev.SaEvent).sa  # type: ignore[attr-defined]
POLICY: ev.Policy = _first("tests/fixtures/host/policy/0002-NEWPOLICY.bin", ev.PolicyEvent).policy  # type: ignore[attr-defined]


def peer(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


class World:
    """One namespace with ``n`` tunnels, as the state stage holds it."""

    def __init__(self, n: int, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.wall0 = time.time()
        self.now = 1000.0
        self.spi = 0
        self.current: dict[int, list[ev.SA]] = {}
        sas: list[ev.SA] = []
        pols: list[ev.Policy] = []
        for i in range(1, n + 1):
            pair = self.pair(i, age=self.rng.uniform(0, 3000))
            self.current[i] = pair
            sas += pair
            for d, idx in (("out", 1), ("in", 0)):
                tm = msgspec.structs.replace(POLICY.tmpl[0], src=LOCAL, dst=peer(i), reqid=i, proto="esp", mode="tunnel")
                sel = msgspec.structs.replace(POLICY.sel, src=f"172.{i >> 12 & 15}.{i >> 4 & 255}.0/24", dst="10.0.0.0/8")
                pols.append(msgspec.structs.replace(POLICY, dir=d, index=8 * i + idx, tmpl=[tm], sel=sel))
        self.mirror = Mirror(netns="bench", local_addrs=frozenset({LOCAL}))
        t0 = time.perf_counter()
        self.mirror.load(sas, pols, None, self.now, self.wall0)
        self.model = TunnelModel(self.mirror)
        self.model.load(self.now)
        self.mirror.synced = True
        self.load_seconds = time.perf_counter() - t0
        self.stage = StateStage(self.mirror, self.model, tunnels=self.model)

    def pair(self, i: int, age: float = 0.0) -> list[ev.SA]:
        soft = 3000 + i % 600
        lft = msgspec.structs.replace(SA.lifetime, soft_add_seconds=soft, hard_add_seconds=3600, soft_bytes=None,
                                      hard_bytes=None, soft_packets=None, hard_packets=None)  # fmt: skip
        cur = msgspec.structs.replace(SA.current, add_time=utc(self.wall0 + self.now - 1000 - age), bytes=0, packets=0)
        out = []
        for src, dst in ((peer(i), LOCAL), (LOCAL, peer(i))):
            self.spi += 1
            out.append(msgspec.structs.replace(SA, spi=f"0x{self.spi:08x}", src=src, dst=dst, reqid=i, lifetime=lft,
                                               current=cur))  # fmt: skip
        return out

    def common(self) -> dict[str, object]:
        return {"time": utc_precise(self.wall0 + self.now), "mono": self.now, "netns": "bench", "nlmsg_pid": 0,
                "nlmsg_seq": 0}  # fmt: skip

    def rekey_some(self, k: int) -> int:
        """Rekey ``k`` random tunnels through the state stage; the number of events."""
        events: list[ev.Event] = []
        for i in self.rng.sample(sorted(self.current), k):
            old, new = self.current[i], self.pair(i)
            events += [ev.UpdSA(**self.common(), sa=new[0]), ev.NewSA(**self.common(), sa=new[1])]  # type: ignore[arg-type]
            events += [ev.DelSA(**self.common(), id=ev.SaId(family=s.family, dst=s.dst, spi=s.spi, proto=s.proto),  # type: ignore[arg-type]
                                sa=s) for s in old]  # fmt: skip
            self.current[i] = new
        self.now += 0.25
        self.stage.apply(events, self.now, self.wall0 + self.now)
        while self.stage.next_deadline() <= self.now:
            self.stage.on_time(self.now, self.wall0 + self.now)
        return len(events)

    def ask(self, q: BoardQuery) -> Board:
        send, recv = trio.open_memory_channel[Board](1)
        self.stage.answer(BoardRequest(q, send), self.now)
        return recv.receive_nowait()


def frame_of(w: World, b: Board, width: int, height: int, sort: str, text: str = "") -> Frame:
    return Frame(width=width, height=height, now=w.now, title="xfrmwatch top", namespaces=("bench",),
                 selected=None, boards=(b,), rows=b.rows, matching=b.matching, sort=sort, text=text)  # fmt: skip


#: what a frame's time is measured with (--clock)
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
clock = time.process_time


def timed(w: World, painter: Painter, width: int, height: int, sort: Sort = "urgency", text: str = "") -> tuple[float, float]:
    rows = layout(width, height).tunnel_rows
    t0 = clock()
    b = w.ask(BoardQuery(sort=sort, text=text, limit=rows))
    t1 = clock()
    painter.changes(frame_of(w, b, width, height, sort, text))
    return (t1 - t0) * 1000, (clock() - t1) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tunnels", type=int, default=50_000, help="tunnels (2 SAs and 2 policies each)")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--rekeys", type=int, default=100, help="tunnels rekeyed between two frames")
    ap.add_argument("--no-freeze", dest="freeze", action="store_false", help="leave the loaded state to the GC")
    ap.add_argument("--size", action="append", default=[], help="WIDTHxHEIGHT (repeatable; default 80x24, 200x60)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                    help="cpu: the process's CPU time (default; the machine may be shared), wall: elapsed time")
    args = ap.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    print(f"times are {'CPU' if args.clock == 'cpu' else 'wall-clock'} milliseconds")
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.size or ["80x24", "200x60"]]
    w = World(args.tunnels)
    if args.freeze:
        gc.freeze()  # as `top` does once its pipelines are ready
    print(f"{len(w.mirror.sas):,} SAs, {len(w.mirror.policies):,} policies, {w.model.size():,} tunnels "
          f"(mirror + model loaded in {w.load_seconds:.1f} s)")  # fmt: skip
    painter = Painter("truecolor")
    a, r = timed(w, painter, *sizes[0])
    print(f"first frame (board built from every tunnel): answer {a:.0f} ms, render {r:.0f} ms")
    for width, height in sizes:
        painter = Painter("truecolor")
        answers, renders, totals, events = [], [], [], 0
        for _ in range(args.frames):
            events += w.rekey_some(args.rekeys)
            a, r = timed(w, painter, width, height)
            answers.append(a)
            renders.append(r)
            totals.append(a + r)

        def stats(xs: list[float]) -> str:
            xs = sorted(xs)
            return f"{statistics.median(xs):5.1f} / {xs[int(len(xs) * 0.95) - 1]:5.1f} / {xs[-1]:5.1f}"

        print(f"{width}x{height}: frame {stats(totals)} ms (median / p95 / max) = answer {stats(answers)} "
              f"+ render {stats(renders)}; {events / args.frames:.0f} events between frames")  # fmt: skip
    width, height = sizes[0]
    a, r = timed(w, painter, width, height, sort="traffic")
    print(f"after a sort change (every tunnel re-sorted): answer {a:.0f} ms, render {r:.0f} ms")
    a, r = timed(w, painter, width, height, sort="traffic")
    print(f"the next frame in that order: answer {a:.0f} ms, render {r:.0f} ms")
    a, r = timed(w, painter, width, height, sort="traffic", text="172.1.")
    print(f"with a text filter (every tunnel searched): answer {a:.0f} ms, render {r:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
