"""Per-stage cost of the pipeline over recorded events: messages/s after each stage.

    .venv/bin/python bench/pipeline.py [--seconds 2]

Stages, cumulative: decode -> mirror.apply -> rekey tracker -> Sigma rules (the
shipped pack) -> JSON encoding.  The input is every recorded NEWSA, UPDSA,
NEWPOLICY and EXPIRE fixture, replayed in a loop (one message per datagram, as
the kernel multicasts them).  For scale: the kernel can emit 25,000-40,000
events/s in a burst.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import msgspec

from xfrmwatch.detect.alerting import Alerter
from xfrmwatch.detect.pack import load
from xfrmwatch.mirror import Mirror
from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.tunnels import TunnelModel

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
KINDS = ("NEWSA", "UPDSA", "NEWPOLICY", "EXPIRE")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    msgs = [f.read_bytes() for k in KINDS for f in sorted(FIX.rglob(f"*-{k}.bin"))]
    dec = Decoder("bench")
    enc = msgspec.json.Encoder()
    print(f"{len(msgs)} recorded messages ({', '.join(KINDS)}), {args.seconds:.0f} s per stage")

    def run(stage: int) -> float:
        mirror = Mirror(netns="bench")
        tracker = TunnelModel(mirror)
        alerter = Alerter(load(None))
        n = 0
        now = 0.0
        start = time.perf_counter()
        end = start + args.seconds
        while time.perf_counter() < end:
            for m in msgs:
                now += 0.0001
                for e in dec.decode(m, now, 1.8e9):
                    if stage >= 2:
                        entry = mirror.apply(e)
                        if stage >= 3:
                            tracker.observe(e, entry, now, 1.8e9)
                        if stage >= 4:
                            out = [e, *alerter(e, now)]
                            if stage >= 5:
                                for o in out:
                                    enc.encode(o)
                n += 1
        return n / (time.perf_counter() - start)

    names = ["decode", "+ mirror", "+ rekey tracker", "+ rules (shipped pack)", "+ JSON encoding"]
    for stage, name in enumerate(names, 1):
        print(f"{name:<26} {run(stage):>10,.0f} messages/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
