"""Decode benchmark over the recorded fixtures: messages/s per message type.

    .venv/bin/python bench/decode.py [--seconds 1.0] [--json]

Each recorded message (tests/fixtures/{host,uml}/*.bin) is decoded repeatedly
into full event records, one message per call as the receive loop does.
Also measured, for scale: JSON encoding of the decoded events, and pyroute2's
generic decode of the same bytes with the same layouts.
Target on a 2-core dev machine: >= 100,000 messages/s for NEWSA, NEWPOLICY
and EXPIRE.  The row ``burst`` is what a burst of `ip xfrm policy add` makes: 20,000
NEWPOLICY messages of one shape (the shortest recorded one) with distinct source addresses
and indexes, each decoded once a round (what `bench/burst.py` feeds the live path).
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from collections import defaultdict
from pathlib import Path

import msgspec

from xfrmwatch.netlink import decode as decode_mod
from xfrmwatch.netlink import messages as xm
from xfrmwatch.netlink import xfrm as x
from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.netlink.framing import NLMSG_HDR

CACHES = (
    decode_mod._sel_cache,
    decode_mod._lft_cache,
    decode_mod._time_cache,
    decode_mod._flag_cache,
    decode_mod._addr_cache,
)
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def load() -> dict[str, list[bytes]]:
    by_type: dict[str, list[bytes]] = defaultdict(list)
    for f in sorted(FIXTURES.rglob("*.bin")):
        data = f.read_bytes()
        if len(data) < 16:
            continue
        mtype = NLMSG_HDR.unpack_from(data)[1]
        if mtype in x.MSG_NAMES:
            by_type[x.MSG_NAMES[mtype]].append(data)
    return by_type


def burst(by_type: dict[str, list[bytes]], n: int = 20_000) -> list[bytes]:
    """``n`` NEWPOLICY datagrams of the shortest recorded one's shape, each with its own
    source address and index, as a burst of policies added by `ip -batch` has them."""
    base = min(by_type.get("NEWPOLICY", []), key=len, default=None)
    if base is None:
        return []
    out = []
    for i in range(n):
        m = bytearray(base)
        m[32:36] = bytes([10, 1 + (i >> 16), (i >> 8) & 255, i & 255])  # the selector's saddr
        struct.pack_into("=I", m, 16 + 156, 1000 + 8 * i)  # the index
        out.append(bytes(m))
    return out


def rate(fn, msgs: list[bytes], seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        for m in msgs:
            fn(m)
        n += len(msgs)
        now = time.perf_counter()
        if now >= end:
            return n / (now - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument(
        "--cold", action="store_true",
        help="clear the decoder's sub-record caches before every message (worst case: all distinct)",
    )  # fmt: skip
    args = ap.parse_args()
    by_type = load()
    if not by_type:
        print("no fixtures found under", FIXTURES, file=sys.stderr)
        return 1
    dec = Decoder("bench")
    enc = msgspec.json.Encoder()
    results = {}
    for name, msgs in [*sorted(by_type.items()), ("burst", burst(by_type))]:
        if not msgs:
            continue
        if args.cold:

            def decode(m: bytes) -> list:
                for c in CACHES:
                    c.clear()
                return dec.decode(m, 0.0, 0.0)

        else:
            decode = lambda m: dec.decode(m, 0.0, 0.0)  # noqa: E731
        events = [e for m in msgs for e in decode(m)]
        malformed = sum(e.__struct_config__.tag == "malformed" for e in events)
        r_dec = rate(decode, msgs, args.seconds)
        r_json = rate(lambda m: [enc.encode(e) for e in decode(m)], msgs, args.seconds)
        mtype = x.XFRM_MSG_NEWSA if name == "UPDSA" else x.XFRM_MSG_NEWPOLICY if name == "burst" else getattr(x, f"XFRM_MSG_{name}")
        cls = xm.MSG_CLASSES.get(mtype)
        r_p2 = None
        if cls is not None:

            def p2(m: bytes, cls=cls) -> None:
                msg = cls(m)
                msg.decode()

            try:
                r_p2 = rate(p2, msgs, args.seconds / 2)
            except Exception:  # pyroute2 may not decode every variant
                r_p2 = None
        results[name] = {
            "messages": len(msgs),
            "malformed": malformed,
            "decode_per_s": round(r_dec),
            "decode_json_per_s": round(r_json),
            "pyroute2_decode_per_s": None if r_p2 is None else round(r_p2),
        }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'type':<12} {'msgs':>5} {'decode/s':>11} {'+json/s':>11} {'pyroute2/s':>11}")
    for name, r in results.items():
        p2s = "-" if r["pyroute2_decode_per_s"] is None else f"{r['pyroute2_decode_per_s']:,}"
        print(
            f"{name:<12} {r['messages']:>5} {r['decode_per_s']:>11,} {r['decode_json_per_s']:>11,} {p2s:>11}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
