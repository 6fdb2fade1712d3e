"""Steady state: the highest event rate the live path sustains indefinitely.

    sudo .venv/bin/python bench/steady.py [--seconds 60] [--rates 4000,8000,...]

`monitor --format json > file` (default settings, rules on) watches a throwaway namespace
while `ip -batch -` is fed `xfrm policy add` lines at a fixed rate (each one a NEWPOLICY
event), the table flushed after every 50,000 (so that it stays bounded), for ``--seconds``
per rate.  (Adds are what `ip` generates fastest: updates and deletes wait in the kernel
and top out near 15,000/s.)  Every second the backlog
is sampled: events generated (lines `ip` has taken) minus events written by the monitor.
A rate holds when there is no overrun and the backlog does not grow: its least-squares
slope over the second half of the run is below 1 % of the rate, and it ends below one
second's worth of events.  Rates are tried in increasing order (doubling from the first,
then bisecting between the last that held and the first that did not, unless ``--rates``
lists them); the highest that held is printed, with the monitor's CPU use at that rate.
If `ip` itself cannot generate a rate, the search stops there: the monitor held the most
the generator gives, and its CPU share there says how far it would go.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from live import Counter, Proc, cpu_seconds, netns, require_root, xfrmwatch_cmd

CYCLE = 50_000


def line(n: int) -> bytes:
    """The n-th line fed to `ip`: adds, with a flush after every CYCLE of them."""
    i = n % (CYCLE + 1)
    if i == CYCLE:
        return b"xfrm policy flush\n"
    return f"xfrm policy add src 10.9.{i >> 8}.{i & 255}/32 dst 10.200.0.1/32 dir out\n".encode()


class Feeder(threading.Thread):
    """Writes ``rate`` lines per second into `ip -batch -`, paced every 10 ms.

    A fresh `ip -batch` is started after each flush (the previous one waited for, so the
    order holds): iproute2's batch mode keeps about 4 KiB per command it has read, and one
    process fed for a minute at these rates would grow by gigabytes and slow down."""

    def __init__(self, ns: str, rate: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.ns, self.rate, self.seconds = ns, rate, seconds
        self.ip = self._spawn()
        self.sent = 0
        self.behind = False

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["ip", "-n", self.ns, "-batch", "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)

    def _finish(self) -> None:
        assert self.ip.stdin is not None
        self.ip.stdin.close()
        self.ip.wait()

    def run(self) -> None:
        t0 = time.monotonic()
        n = 0
        while (now := time.monotonic()) - t0 < self.seconds:
            due = int((now - t0) * self.rate)
            while due > n:
                # up to the end of this cycle (its flush included), then a fresh `ip`
                upto = min(due, n - n % (CYCLE + 1) + CYCLE + 1)
                assert self.ip.stdin is not None
                self.ip.stdin.write(b"".join(line(i) for i in range(n, upto)))
                self.ip.stdin.flush()
                n = upto
                self.sent = n
                if n % (CYCLE + 1) == 0:
                    self._finish()
                    self.ip = self._spawn()
            time.sleep(0.01)
        self._finish()
        # `ip` itself could not keep the pace (a flush may block a write for a while: only
        # what it took over the whole run counts)
        self.behind = n < 0.97 * self.rate * self.seconds


def slope(points: list[tuple[float, float]]) -> float:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs) or 1.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


def trial(cmd: list[str], rate: int, seconds: float) -> dict[str, float]:
    with netns("xwss") as ns, tempfile.TemporaryDirectory(prefix="xw-steady-") as d:
        tmp = Path(d)
        mon = Proc([*cmd, "monitor", "--netns", ns, "--format", "json"], tmp / "out", tmp / "err")
        try:
            mon.wait_stderr("monitoring")
            seen = Counter(tmp / "out", [b'{"type":"newpolicy"', b'{"type":"overrun"', b'{"type":"flushpolicy"'])
            feeder = Feeder(ns, rate, seconds)
            cpu0, t0 = cpu_seconds(mon.pid), time.monotonic()
            feeder.start()
            samples: list[tuple[float, float]] = []
            while feeder.is_alive():
                time.sleep(1.0)
                seen.poll()
                samples.append((time.monotonic() - t0, feeder.sent - seen.counts[0] - seen.counts[2]))
            cpu = cpu_seconds(mon.pid) - cpu0
            elapsed = time.monotonic() - t0
            second_half = [s for s in samples if s[0] >= seconds / 2]
            return {
                "delivered/s": (seen.counts[0] + seen.counts[2]) / elapsed,
                "backlog mid": samples[len(samples) // 2][1] if samples else 0,
                "backlog end": samples[-1][1] if samples else 0,
                "slope": slope(second_half) if len(second_half) > 2 else 0.0,
                "overruns": seen.counts[1],
                "cpu": cpu / elapsed,
                "feeder behind": float(feeder.behind),
            }
        finally:
            mon.stop()


def holds(rate: int, r: dict[str, float]) -> bool:
    return r["overruns"] == 0 and r["slope"] < 0.01 * rate and r["backlog end"] < rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--start", type=int, default=4000, help="first rate (events/s)")
    ap.add_argument("--rates", help="comma-separated rates to try instead of searching")
    ap.add_argument("--xfrmwatch", metavar="CMD", help="the command to measure (default: this tree)")
    args = ap.parse_args()
    require_root()
    cmd = xfrmwatch_cmd(args.xfrmwatch)
    print(f"{' '.join(cmd)}: {args.seconds:.0f} s per rate, policy adds (flushed every {CYCLE:,})")
    best, worst = 0, 0
    limited = False
    last: dict[str, float] = {}

    def run(rate: int) -> bool:
        r = trial(cmd, rate, args.seconds)
        ok = holds(rate, r)
        last.clear()
        last.update(r, rate=rate)
        print(
            f"  {rate:>7,} ev/s: delivered {r['delivered/s']:,.0f}/s, backlog {r['backlog mid']:,.0f} -> "
            f"{r['backlog end']:,.0f} (slope {r['slope']:+,.0f}/s), overruns {r['overruns']:.0f}, "
            f"monitor CPU {r['cpu']:.0%}{', ip could not keep the pace' if r['feeder behind'] else ''}: "
            + ("holds" if ok else "does NOT hold")
        )
        return ok

    if args.rates:
        for rate in (int(x) for x in args.rates.split(",")):
            if run(rate):
                best = max(best, rate)
    else:
        rate = args.start
        while run(rate):
            best = rate
            if last["feeder behind"]:
                limited = True  # `ip` generates no faster: the monitor's limit is beyond this
                break
            rate *= 2
        worst = rate
        while not limited and worst - best > max(1000, best // 10):
            mid = (best + worst) // 2
            if run(mid):
                best = mid
            else:
                worst = mid
    if limited:
        got, cpu = last["delivered/s"], last["cpu"]
        print(
            f"held at the highest rate `ip` generates here, {got:,.0f} events/s, with the monitor at {cpu:.0%} "
            f"of one core (at full use of one core: about {got / max(cpu, 1e-9):,.0f} events/s)"
        )
    else:
        print(f"highest sustained rate: {best:,} events/s" if best else "no rate tried held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
