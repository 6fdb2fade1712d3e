"""The listings' writing alone, on built dumps: tables of shapes the host kernel cannot
hold (keyed SAs) or in orders the kernel does not give (directions in runs), in process.

    .venv/bin/python bench/built_lists.py [--n 30000]

Reply datagrams of ~16 KiB are built with tests/unit/test_snapshot.py's builders, then
each is fed to :mod:`xfrmwatch.snapshot` (json and table, best of 3) three ways: as the
listings run (runs of one shape in batches, the rest entry by entry), entry by entry
only (batches off), and the general way (decoder + msgspec / the table's rows); the
outputs are checked equal.  Tables:

* ``tunnels``: tunnel-mode policies of ``--n``/3 tunnels, out/in/fwd interleaved (the
  kernel's dump order), each with a template to its own peer and reqid;
* ``tunnels-runs``: the same policies, each direction in one run;
* ``keyed``: ``--n`` SAs carrying keys (the recorded keyed SAs, own fields and keys
  changed), in runs of one shape.

Figures: microseconds an entry (writing only: no interpreter start, imports, kernel).
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "tests" / d) for d in ("unit", "")]

import test_snapshot as built  # noqa: E402


def written(kind: str, fmt: str, datagrams: list[bytes], batches: bool) -> tuple[float, bytes]:
    out = io.BytesIO()
    lines_of, _, table_of, _, _ = built.KINDS[kind]
    lines: Any = lines_of(table_of(out) if fmt == "table" else None, out, built.Said)
    if not batches:
        lines._batch = lambda *a: 0
    t0 = time.perf_counter()
    for d in datagrams:
        if lines.feed(d):
            break
    lines.close()
    return time.perf_counter() - t0, out.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30_000)
    args = ap.parse_args()
    n = args.n // 3
    rng = random.Random(1)
    keyed: list[bytes] = []
    msgs = [m for m in built._messages("sa") if built._rekeyed(m, rng)[1]]
    per_shape = max(1, args.n // len(msgs))
    for m in msgs:
        keyed += [built._rekeyed(built._own_fields_changed("sa", m, i), rng)[0] for i in range(per_shape)]
    tables = {
        "tunnels": ("policy", built._tunnels(n)),
        "tunnels-runs": ("policy", [built._tunnel_policy(i, d) for d in (1, 0, 2) for i in range(n)]),
        "keyed": ("sa", keyed),
    }
    for name, (kind, entries) in tables.items():
        per = max(1, 16384 // len(entries[0]))
        dgs = built._datagrams(entries, per)
        for fmt in ("json", "table"):
            t0 = time.perf_counter()
            want = built.general(kind, fmt, dgs)[0]
            general = time.perf_counter() - t0
            figures = []
            for label, batches in (("batches", True), ("entry by entry", False)):
                best = min(written(kind, fmt, dgs, batches)[0] for _ in range(3))
                if written(kind, fmt, dgs, batches)[1] != want:
                    raise SystemExit(f"{name} {fmt} {label}: not the general way's output")
                figures.append(f"{label} {best / len(entries) * 1e6:.2f}")
            print(
                f"{name} ({len(entries):,} {kind} entries, {per} a datagram) {fmt}: us an entry: "
                + ", ".join(figures)
                + f", general way {general / len(entries) * 1e6:.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
