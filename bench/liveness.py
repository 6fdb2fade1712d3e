"""What reading SA counters costs (the tunnel model's liveness poll), at scale.

    sudo .venv/bin/python bench/liveness.py [--n 100000]

1. **dump**: ``--n`` SAs (larval, ``ip xfrm state allocspi`` in a throwaway namespace: the
   host kernel has no ESP) dumped and decoded the way the state stage does it every
   liveness interval (`NetlinkKernel.sas`), timed over several runs;
2. **model**: ``--n`` SAs forming ``--n``/2 tunnels (copies of a real recorded ESP SA)
   loaded into a mirror and a tunnel model, then one counters sample through
   `TunnelModel.counters`, timed.

It prints both and the share of one core that a poll every 10 s (the default
``--liveness-interval``) costs; the state stage stretches the interval to 20 times a
poll's duration, so that share stays at most about 5 %.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import msgspec
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tempfile

from live import netns, require_root, run_batch, sh

from xfrmwatch import events as ev
from xfrmwatch.mirror import Mirror
from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.netlink.socket import XfrmSocket
from xfrmwatch.pipeline import NetlinkKernel
from xfrmwatch.tunnels import TunnelModel

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def allocspi_batch(n: int) -> Path:
    """An `ip -batch` file reserving ``n`` SPIs (larval SAs: the host kernel keeps them)."""
    path = Path(tempfile.mkdtemp()) / "allocspi.batch"
    path.write_text("".join(
        f"xfrm state allocspi src 10.250.0.1 dst 10.{1 + (i >> 16)}.{(i >> 8) & 255}.{i & 255} "
        f"proto esp min 0x{0x1000 + i:08x} max 0x{0x1000 + i:08x} reqid {i + 1} mode tunnel\n"
        for i in range(n)
    ))  # fmt: skip
    return path


def dump_seconds(ns: str, runs: int) -> tuple[list[float], int]:
    async def main() -> tuple[list[float], int]:
        req = XfrmSocket.open(ns)
        sub = XfrmSocket.open(ns)
        kernel = NetlinkKernel(req, sub, Decoder(ns))
        out, n = [], 0
        for _ in range(runs):
            t = time.perf_counter()
            n = len(await kernel.sas())
            out.append(time.perf_counter() - t)
        req.close()
        sub.close()
        return out, n

    return trio.run(main)


def model_seconds(n: int, runs: int) -> list[float]:
    (tmpl,) = [e.sa for e in Decoder().decode((FIX / "uml/sa/0002-NEWSA.bin").read_bytes(), 0.0, 0.0)
               if isinstance(e, ev.SaEvent)]  # fmt: skip
    sas = []
    for i in range(n // 2):
        a, b = f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", "192.0.2.1"
        sas.append(msgspec.structs.replace(tmpl, src=b, dst=a, spi=f"0x{0x10000000 + i:08x}", reqid=i + 1))
        sas.append(msgspec.structs.replace(tmpl, src=a, dst=b, spi=f"0x{0x20000000 + i:08x}", reqid=i + 1))
    mirror = Mirror(netns="bench", local_addrs=frozenset({"192.0.2.1"}))
    mirror.load(sas, [], None, 0.0, time.time())
    model = TunnelModel(mirror)
    model.load(0.0)
    out = []
    for r in range(1, runs + 1):
        sample = [msgspec.structs.replace(s, current=msgspec.structs.replace(s.current, bytes=1000 * r)) for s in sas]
        t = time.perf_counter()
        model.counters(sample, float(r), time.time())
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    require_root()
    with netns() as ns:
        sh(f"ip netns exec {ns} sysctl -qw net.core.xfrm_acq_expires=3600")  # larval SAs live an hour
        run_batch(ns, allocspi_batch(args.n))
        dumps, got = dump_seconds(ns, args.runs)
    models = model_seconds(args.n, args.runs)
    d, m = statistics.median(dumps), statistics.median(models)
    print(f"SAs in the kernel: {got}")
    print(f"dump + decode of {got} SAs: min {min(dumps):.2f} / median {d:.2f} / max {max(dumps):.2f} s")
    print(f"counters sample of {args.n} SAs ({args.n // 2} tunnels): median {m:.3f} s")
    print(f"one poll: {d + m:.2f} s; every 10 s that is {100 * (d + m) / 10:.0f} % of a core; "
          f"the stage stretches the interval to {max(10.0, 20 * d):.0f} s here ({100 * (d + m) / max(10.0, 20 * d):.1f} %)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
