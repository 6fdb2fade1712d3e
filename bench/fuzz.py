"""The long fuzz run: mutated recorded messages through the whole path.

    .venv/bin/python bench/fuzz.py [--messages 1000000] [--seed 1] [--jobs 2]

Each recorded message (tests/fixtures) is mutated (truncations, bad lengths, every type
number, attribute and nested-attribute corruption, dropped and duplicated attributes, bit
flips, two messages in one datagram: see tests/fuzzing.py) and goes through decode ->
mirror -> tunnel model -> rules -> every renderer (JSON, text, ECS, OCSF, journald,
syslog, exec environment, table rows).  Printed: messages, events, malformed events,
alerts, messages per mutation kind, messages/s, and every failure (an exception, an error
logged by a stage's guard, or a broken framing without a malformed event) with the seed
and message number that replay it.  Exit status 1 if there was any failure.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fuzzing import Fuzzer, Result


def one(seed: int, n: int) -> Result:
    return Fuzzer(seed).run(n, max_failures=50)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1, help="first seed; each job uses the next")
    ap.add_argument("--jobs", type=int, default=2, help="processes (each with its own seed)")
    args = ap.parse_args()
    t0 = time.monotonic()
    share = [args.messages // args.jobs + (i < args.messages % args.jobs) for i in range(args.jobs)]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(one, [args.seed + i for i in range(args.jobs)], share))
    total = Result()
    for r in results:
        total.messages += r.messages
        total.events += r.events
        total.malformed += r.malformed
        total.alerts += r.alerts
        total.failures += r.failures
        for k, v in r.by_kind.items():
            total.by_kind[k] = total.by_kind.get(k, 0) + v
    elapsed = time.monotonic() - t0
    print(
        f"{total.messages:,} mutated messages (seeds {args.seed}..{args.seed + args.jobs - 1}) in {elapsed:.0f} s "
        f"({total.messages / elapsed:,.0f}/s): {total.events:,} events, {total.malformed:,} malformed, "
        f"{total.alerts:,} alerts, {len(total.failures)} failures"
    )
    print("  by mutation: " + ", ".join(f"{k} {v:,}" for k, v in sorted(total.by_kind.items())))
    for f in total.failures:
        print("  FAILURE " + f)
    return 1 if total.failures else 0


if __name__ == "__main__":
    sys.exit(main())
