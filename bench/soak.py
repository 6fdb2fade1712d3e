"""Soak: a compressed day of rekeys, inside the User-Mode Linux guest (full ESP).

    sudo XW_UML_TIMEOUT=3000 XW_UML_MEM=1500M tests/uml/run_guest.sh /tmp/xw-soak .venv/bin/python bench/soak.py \
        [--minutes 30] [--tunnels 1000]

``--tunnels`` CHILD_SAs (tunnel-mode ESP, a policy pair each) are installed with `ip xfrm`
in a namespace of the guest, then rekeyed one after the other, continuously, the way IKE
daemons do it (new inbound and outbound SA with the same reqid and new SPIs, then the old
ones deleted), each every ``--rekey-every`` seconds: with the defaults, 1,000 tunnels
rekeyed every 60 s for 30 min, 30,000 rekeys, the hourly rekeys of a 1,000-tunnel gateway
over 30 hours.  `monitor --format json` (default settings, rules on) watches it.

Printed: rekeys done, events written, `rekey_completed` events, alerts at medium or above
(none expected: these are normal rekeys), the monitor's RSS sampled every 10 s (after the
first quarter, the warm-up: first, last, and the growth of the last tenth over the second
quarter, which should stay within 5 %), its CPU, the tunnel model's size (the state
file's ``tunnels``: live and down tunnels, SAs tracked, deadlines queued) when ready, after
the warm-up and at the end (it must not grow), and whether its mirror (state file) equals
`dump` at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from live import Proc, cpu_seconds, rss_kib, sh, xfrmwatch_cmd

LOCAL = "10.0.0.1"
KEY = "0x" + "11" * 16
AUTH = "0x" + "22" * 32
VOLATILE = {"current", "stats", "replay", "replay_esn", "lastused"}


def peer(i: int) -> str:
    return f"10.{1 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"


def spi(i: int, gen: int, inbound: bool) -> int:
    return 0x10000000 + ((gen % 1000) << 17) + (i << 1) + inbound


def sa(i: int, gen: int, inbound: bool, verb: str = "add") -> str:
    src, dst = (peer(i), LOCAL) if inbound else (LOCAL, peer(i))
    head = f"xfrm state {verb} src {src} dst {dst} proto esp spi {spi(i, gen, inbound):#x}"
    if verb == "delete":
        return head
    return f"{head} reqid {i + 1} mode tunnel enc 'cbc(aes)' {KEY} auth-trunc 'hmac(sha256)' {AUTH} 128"


def policies(i: int) -> list[str]:
    net_l, net_r = f"172.16.{i >> 8}.{i & 255}/32", f"172.17.{i >> 8}.{i & 255}/32"
    return [
        f"xfrm policy add src {net_l} dst {net_r} dir out tmpl src {LOCAL} dst {peer(i)} proto esp reqid {i + 1} mode tunnel",
        f"xfrm policy add src {net_r} dst {net_l} dir in tmpl src {peer(i)} dst {LOCAL} proto esp reqid {i + 1} mode tunnel",
    ]


def normalized(dump: dict[str, object]) -> tuple[object, object]:
    def strip(obj: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in obj.items() if k not in VOLATILE}

    sas = dump["sa"]
    pols = dump["policy"]
    assert isinstance(sas, list) and isinstance(pols, list)
    return (
        {(s["dst"], s["spi"], s["proto"]): strip(s) for s in sas},
        {(p["ptype"], p["index"]): strip(p) for p in pols},
    )


class Feeder:
    """`ip -batch -` fed from a pipe, replaced by a fresh one every ``LIMIT`` commands: iproute2's
    batch mode keeps about 4 KiB per command (240 MiB after 60,000 of them), which in UML ends in
    "UML ran out of memory on the host side" (vm.max_map_count) and kills it mid-run."""

    LIMIT = 4000

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.sent = 0
        self.ip: subprocess.Popen[bytes] | None = None

    def send(self, lines: list[str]) -> None:
        if self.ip is None or self.sent >= self.LIMIT:
            self.close()  # the old one first: every command in order
            self.ip = subprocess.Popen(["ip", "-n", self.ns, "-batch", "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
            self.sent = 0
        assert self.ip.stdin is not None
        self.ip.stdin.write("".join(f"{x}\n" for x in lines).encode())
        self.ip.stdin.flush()
        self.sent += len(lines)

    def close(self) -> None:
        if self.ip is not None:
            assert self.ip.stdin is not None
            self.ip.stdin.close()
            if self.ip.wait() != 0:
                raise SystemExit(f"ip -batch failed ({self.ip.returncode})")
            self.ip = None


def snapshot(mon: Proc, state: Path) -> dict[str, Any]:
    """The monitor's state file, written now (SIGUSR1)."""
    state.unlink(missing_ok=True)
    mon.signal(signal.SIGUSR1)
    t0 = time.monotonic()
    while not state.exists():
        if time.monotonic() - t0 > 120:
            raise SystemExit(f"no state file 120 s after SIGUSR1: {mon.err.read_text()[-2000:]}")
        time.sleep(0.05)
    data: dict[str, Any] = json.loads(state.read_text())
    return data


def size(snap: dict[str, Any]) -> str:
    t = snap.get("tunnels") or {}
    return "/".join(str(t.get(k, "?")) for k in ("live", "down", "sas", "timers"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--tunnels", type=int, default=1000)
    ap.add_argument("--rekey-every", type=float, default=60.0, help="seconds between two rekeys of a tunnel")
    ap.add_argument("--xfrmwatch", metavar="CMD", help="the command to measure (default: this tree)")
    ap.add_argument(
        "--out", default="/tmp/xw-soak-out", metavar="DIR",
        help="where the monitor's output goes: on the host's file system (/tmp is the host's in the guest), "
        "not the guest's tmpfs, which a day of events would fill",
    )  # fmt: skip
    args = ap.parse_args()
    if os.environ.get("XW_IN_UML") != "1":
        raise SystemExit("run it in the UML guest (full ESP): sudo tests/uml/run_guest.sh OUT .venv/bin/python bench/soak.py")
    cmd = xfrmwatch_cmd(args.xfrmwatch)
    ns = "soak"
    sh(f"ip netns add {ns}")
    sh(f"ip -n {ns} link set lo up")
    sh(f"ip -n {ns} link add dummy0 type dummy && ip -n {ns} addr add {LOCAL}/8 dev dummy0 && ip -n {ns} link set dummy0 up")
    tmp = Path(args.out)
    tmp.mkdir(parents=True, exist_ok=True)
    for old in tmp.iterdir():
        old.unlink()
    setup = tmp / "setup"
    setup.write_text("".join(f"{x}\n" for i in range(args.tunnels) for x in (*policies(i), sa(i, 0, True), sa(i, 0, False))))
    sh(f"ip -n {ns} -batch {setup}")
    state = tmp / "state.json"
    mon = Proc([*cmd, "monitor", "--netns", ns, "--format", "json", "--state-file", str(state)], tmp / "out", tmp / "err")
    mon.wait_stderr("monitoring", timeout=300)
    sizes = {"ready": snapshot(mon, state)}
    print(f"{args.tunnels} tunnels, each rekeyed every {args.rekey_every:.0f} s, for {args.minutes:.0f} min")
    feed = Feeder(ns)
    gens = [0] * args.tunnels
    interval = args.rekey_every / args.tunnels
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    cpu0 = cpu_seconds(mon.pid)
    samples: list[tuple[float, int]] = []
    next_sample = t0
    rekeys = 0
    warmed = t0 + args.minutes * 60 * 0.25
    while (now := time.monotonic()) < end:
        due = int((now - t0) / interval)
        lines = []
        while rekeys < due:
            i = rekeys % args.tunnels
            g = gens[i]
            lines += [sa(i, g + 1, True), sa(i, g + 1, False), sa(i, g, False, "delete"), sa(i, g, True, "delete")]
            gens[i] = g + 1
            rekeys += 1
        if lines:
            feed.send(lines)
        if now >= warmed and "warm-up" not in sizes:
            sizes["warm-up"] = snapshot(mon, state)
        if now >= next_sample:
            samples.append((now - t0, rss_kib(mon.pid)))
            next_sample += 10
        time.sleep(0.02)
    feed.close()
    time.sleep(5)
    cpu = cpu_seconds(mon.pid) - cpu0
    mirror = sizes["end"] = snapshot(mon, state)
    dump = json.loads(sh(" ".join([*cmd, "dump", "--netns", ns, "--format", "json"])).stdout)
    same = normalized(dump) == normalized(mirror)
    rc = mon.stop()
    counts: dict[str, int] = {}
    loud = 0
    with open(tmp / "out", "rb") as f:
        for line in f:
            e = json.loads(line)
            counts[e["type"]] = counts.get(e["type"], 0) + 1
            if e["type"] == "alert" and e["rule"]["level"] in ("medium", "high", "critical"):
                loud += 1
    duration = args.minutes * 60
    warm = [r for t, r in samples if duration * 0.25 <= t < duration * 0.5]
    last = [r for t, r in samples if t >= duration * 0.9]
    growth = (statistics.fmean(last) / statistics.fmean(warm) - 1) if warm and last else float("nan")
    print(f"rekeys {rekeys:,}; events written {sum(counts.values()):,}; rekey_completed {counts.get('rekey_completed', 0):,}; "
          f"overruns {counts.get('overrun', 0)}; alerts at medium or above {loud}")  # fmt: skip
    print("monitor RSS (MiB) every 10 s after the first quarter: "
          + " ".join(f"{r / 1024:.1f}" for t, r in samples if t >= duration * 0.25))  # fmt: skip
    print(f"RSS of the last tenth vs the second quarter: {growth:+.1%}; CPU {cpu / duration:.1%} of one core; "
          f"mirror == dump at the end: {'yes' if same else 'NO'} ({len(mirror['sa'])} SAs, {len(mirror['policy'])} policies); "
          f"monitor exit status {rc}")  # fmt: skip
    print("tunnel model (live/down tunnels, SAs tracked, deadlines queued): "
          + "; ".join(f"{k} {size(v)}" for k, v in sizes.items()))  # fmt: skip
    grown = any(
        sizes["end"].get("tunnels", {}).get(k, 1) > sizes.get("warm-up", sizes["ready"]).get("tunnels", {}).get(k, 0)
        for k in ("live", "down", "sas", "timers")
    )
    print("event types: " + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))
    completed = counts.get("rekey_completed", 0) == rekeys
    return 0 if same and abs(growth) <= 0.05 and loud == 0 and rc == 0 and completed and not grown else 1


if __name__ == "__main__":
    sys.exit(main())
