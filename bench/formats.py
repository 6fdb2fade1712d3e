"""ECS and OCSF renderer benchmark over the recorded fixtures: renders/s per format.

    .venv/bin/python bench/formats.py [--seconds 1.0] [--json]

Every event decoded from tests/fixtures/{host,uml}/**/*.bin (as the unit tests
decode them) is rendered repeatedly, one event per call as an output does, per
event type and over the whole mix.  Also measured, for scale: the native JSON
encoding of the same events, and each format's render + JSON encoding (what the
file/syslog/webhook outputs do per event).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from xfrmwatch import events as ev
from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.output.ecs import EcsRenderer
from xfrmwatch.output.ocsf import OcsfRenderer

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def load() -> dict[str, list[ev.Event]]:
    by_type: dict[str, list[ev.Event]] = defaultdict(list)
    dec = Decoder("bench")
    for f in sorted(FIXTURES.rglob("*.bin")):
        for e in dec.decode(f.read_bytes(), 0.0, 0.0):
            by_type[e.__struct_config__.tag].append(e)
    return by_type


def rate(fn: Callable[[Any], Any], events: list[ev.Event], seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        for e in events:
            fn(e)
        n += len(events)
        now = time.perf_counter()
        if now >= end:
            return n / (now - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement (default 1.0)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()
    by_type = load()
    if not by_type:
        print("no fixtures found under", FIXTURES, file=sys.stderr)
        return 1
    enc = msgspec.json.Encoder()
    ecs, ocsf = EcsRenderer("bench"), OcsfRenderer("bench")
    fns: dict[str, Callable[[Any], Any]] = {
        "native_json": enc.encode,
        "ecs": ecs,
        "ocsf": ocsf,
        "ecs_json": lambda e: enc.encode(ecs(e)),
        "ocsf_json": lambda e: enc.encode(ocsf(e)),
    }
    groups = {**dict(sorted(by_type.items())), "ALL": [e for es in by_type.values() for e in es]}
    results: dict[str, dict[str, int]] = {}
    for name, events in groups.items():
        secs = args.seconds if name == "ALL" else args.seconds / 4
        results[name] = {"events": len(events)}
        for label, fn in fns.items():
            results[name][f"{label}_per_s"] = round(rate(fn, events, secs))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    cols = ("native_json", "ecs", "ocsf", "ecs_json", "ocsf_json")
    print(f"{'type':<16} {'events':>6} " + " ".join(f"{c + '/s':>13}" for c in cols))
    for name, r in results.items():
        print(f"{name:<16} {r['events']:>6} " + " ".join(f"{r[c + '_per_s']:>13,}" for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
