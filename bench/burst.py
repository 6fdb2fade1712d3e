"""End-to-end burst benchmark: the real command against a real `ip -batch` burst.

    sudo .venv/bin/python bench/burst.py [--mode monitor-json] [--n 100000] [--runs 3]

Per run, in a throwaway namespace, with `ip xfrm monitor policy` as the peer:

1. **drain**: the reader is stopped (SIGSTOP), a burst of ``--drain-n`` policies is
   added with one `ip -batch` (generation rate = policies / time `ip` took), the reader
   is continued, and the time until its last event is written gives the drain rate
   (what the whole path sustains: socket, decode, mirror, rekey tracking, rules, output);
   ratio = drain rate / generation rate, both from the same run.
2. **live**: a burst of ``--n`` policies with the reader running, default settings:
   events delivered (of ``--n``), overruns and resyncs reported, the kernel's own drop
   counter for the reader's socket (`Drops` in /proc/net/netlink), how long after the
   burst the last event came, and what the peer (`ip xfrm monitor`) delivered.
3. **mirror** (monitor modes): the state file written on SIGUSR1 against
   `policy list --format json`: equal or not.

Modes: ``monitor-json`` (`monitor --format json > file`), ``monitor-norules``
(`--no-rules`), ``run-json`` and ``run-ecs`` (`run` with a file output in that format).
``--xfrmwatch "CMD"`` measures another build (e.g. the code before a change).
Figures of several runs are printed as min / median / max.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

from live import (
    Counter,
    Figures,
    Proc,
    children_cpu_seconds,
    cpu_seconds,
    netlink_sockets,
    netns,
    policy_batch,
    require_root,
    run_batch,
    runqueue_seconds,
    sh,
    wait_quiet,
    xfrmwatch_cmd,
)

MODES = ("monitor-json", "monitor-norules", "run-json", "run-ecs")


def markers(mode: str) -> tuple[bytes, bytes, bytes]:
    """(new policy, overrun, resync) as they appear in the mode's output."""
    if mode == "run-ecs":
        return b'"xfrm-newpolicy"', b'"xfrm-overrun"', b'"xfrm-resync"'
    return b'"type":"newpolicy"', b'"type":"overrun"', b'"type":"resync"'


def start(mode: str, cmd: list[str], ns: str, tmp: Path) -> tuple[Proc, Path]:
    out = tmp / "events.out"
    if mode.startswith("monitor"):
        argv = [*cmd, "monitor", "--netns", ns, "--format", "json", "--state-file", str(tmp / "state.json")]
        if mode == "monitor-norules":
            argv.append("--no-rules")
        p = Proc(argv, out, tmp / "stderr")
        p.wait_stderr("monitoring")
        return p, out
    fmt = mode.split("-", 1)[1]
    conf = tmp / "config.toml"
    conf.write_text(
        f'[watch]\nnetns = ["{ns}"]\n[metrics]\nenabled = false\n'
        f'[[output]]\ntype = "file"\npath = "{out}"\nformat = "{fmt}"\n'
    )
    p = Proc([*cmd, "run", "--config", str(conf)], tmp / "stdout", tmp / "stderr")
    p.wait_stderr('"ready"')
    return p, out


def one_run(args: argparse.Namespace, cmd: list[str], fig: Figures) -> None:
    mark_new, mark_over, mark_resync = markers(args.mode)
    with netns() as ns, tempfile.TemporaryDirectory(prefix="xw-burst-") as d:
        tmp = Path(d)
        reader, out = start(args.mode, cmd, ns, tmp)
        peer = Proc(["ip", "-n", ns, "xfrm", "monitor", "policy"], tmp / "peer.out", tmp / "peer.err")
        time.sleep(0.3)
        mine = [s for s in netlink_sockets(ns) if s.portid != peer.pid and s.groups]
        ours = Counter(out, [mark_new, mark_over, mark_resync])
        theirs = Counter(tmp / "peer.out", [b"\tdir out"])
        try:
            # 1. drain: a backlog the reader finds when it is continued
            reader.signal(signal.SIGSTOP)
            gen_s = run_batch(ns, policy_batch(args.drain_n, dst="10.201.0.1"))
            cpu0, wait0 = cpu_seconds(reader.pid), runqueue_seconds(reader.pid)
            kids0 = children_cpu_seconds(reader.pid)
            t_cont = time.monotonic()
            reader.signal(signal.SIGCONT)
            wait_quiet([ours], lambda: ours.counts[0] >= args.drain_n, args.quiet, 600)
            drain_s = max(ours.last_growth - t_cont, 1e-6)
            cpu_us = (cpu_seconds(reader.pid) - cpu0) / max(ours.counts[0], 1) * 1e6
            # a render worker process (ECS/OCSF outputs) works on another core beside it
            kids_us = (children_cpu_seconds(reader.pid) - kids0) / max(ours.counts[0], 1) * 1e6
            waited = (runqueue_seconds(reader.pid) - wait0) / drain_s
            gen, drain = args.drain_n / gen_s, ours.counts[0] / drain_s
            drained_over = ours.counts[1]
            fig.add("drain: generation ev/s", gen)
            fig.add("drain: drain ev/s", drain)
            fig.add("drain: ratio", drain / gen)
            fig.add("drain: CPU us/event", cpu_us)
            if kids_us:
                fig.add("drain: worker CPU us/event", kids_us)
            print(
                f"  drain  {args.drain_n:,} policies: kernel generated {gen:,.0f} ev/s; "
                f"xfrmwatch drained {ours.counts[0]:,} at {drain:,.0f} ev/s ({cpu_us:.1f} us CPU per event"
                + (f" + {kids_us:.1f} in its render worker" if kids_us else "")
                + ", "
                f"{waited:.0%} of the time waiting for a CPU); "
                f"ratio {drain / gen:.2f}"
                + (f"; OVERRUNS {drained_over}" if drained_over else "")
            )
            # 2. live burst
            theirs.poll()
            base_new, base_over, base_res = ours.counts
            base_peer = theirs.counts[0]
            gen_s = run_batch(ns, policy_batch(args.n, dst="10.200.0.1"))
            t_end = time.monotonic()
            wait_quiet([ours, theirs], lambda: ours.counts[0] - base_new >= args.n and
                       theirs.counts[0] - base_peer >= args.n, args.quiet, 900)  # fmt: skip
            delivered = ours.counts[0] - base_new
            overruns, resyncs = ours.counts[1] - base_over, ours.counts[2] - base_res
            lag = max(0.0, ours.last_growth - t_end)
            drops = sum(s.drops for s in netlink_sockets(ns) if s.inode in {m.inode for m in mine})
            fig.add("live: generation ev/s", args.n / gen_s)
            fig.add("live: delivered", delivered)
            fig.add("live: overruns", overruns)
            fig.add("live: kernel drops", drops)
            fig.add("live: lag after burst s", lag)
            print(
                f"  live   {args.n:,} policies: kernel generated {args.n / gen_s:,.0f} ev/s; "
                f"xfrmwatch delivered {delivered:,}, overruns {overruns}, resyncs {resyncs}, "
                f"kernel drops on its socket {drops:,}, last event {lag:.2f} s after the burst; "
                f"ip xfrm monitor delivered {theirs.counts[0] - base_peer:,}"
            )
            # 3. mirror == kernel
            if args.mode.startswith("monitor"):
                state = tmp / "state.json"
                reader.signal(signal.SIGUSR1)
                t0 = time.monotonic()
                while not state.exists() and time.monotonic() - t0 < 120 and reader.proc.poll() is None:
                    time.sleep(0.05)
                if not state.exists():
                    print(f"  mirror: no state file (reader exit {reader.proc.poll()})")
                    fig.add("mirror == kernel", 0)
                else:
                    time.sleep(0.2)
                    mirror = {(p["ptype"], p["index"]) for p in json.loads(state.read_text())["policy"]}
                    listing = sh(" ".join([*cmd, "policy", "list", "--netns", ns, "--format", "json"]))
                    kernel = {(p["ptype"], p["index"]) for p in map(json.loads, listing.stdout.splitlines())}
                    same = mirror == kernel
                    fig.add("mirror == kernel", int(same))
                    print(
                        f"  mirror {len(mirror):,} policies, kernel {len(kernel):,}: "
                        + ("equal" if same else f"DIFFERENT ({len(kernel - mirror):,} missing, {len(mirror - kernel):,} stale)")
                    )
        finally:
            peer.stop()
            rc = reader.stop()
            if args.mode.startswith("monitor"):
                print(f"  monitor exit status at SIGTERM: {rc}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=MODES, default="monitor-json")
    ap.add_argument("--n", type=int, default=100_000, help="policies in the live burst")
    ap.add_argument("--drain-n", type=int, default=60_000, help="policies queued while the reader is stopped")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quiet", type=float, default=10.0, help="seconds without output that end a phase")
    ap.add_argument("--xfrmwatch", metavar="CMD", help="the command to measure (default: this tree)")
    args = ap.parse_args()
    require_root()
    cmd = xfrmwatch_cmd(args.xfrmwatch)
    fig = Figures()
    print(f"{args.mode}: {' '.join(cmd)}; drain burst {args.drain_n:,}, live burst {args.n:,}, {args.runs} runs")
    for i in range(args.runs):
        print(f"run {i + 1}")
        one_run(args, cmd, fig)
    print("summary (min / median / max):")
    for name in fig.values:
        print("  " + fig.line(name, "{:.2f}" if name.endswith(("ratio", " s", "us/event")) else "{:,.0f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
