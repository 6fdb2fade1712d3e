"""Scale benchmark: 100k policies + 100k SAs already in the kernel.

    sudo .venv/bin/python bench/scale.py [--n 100000] [--runs 3]

In a throwaway namespace holding ``--n`` policies (`ip -batch`) and ``--n`` larval SAs
(`ip xfrm state allocspi`, which the host kernel keeps without ESP support; their acquire
timeout is raised so that they stay), per run:

* **ready**: seconds from starting `monitor --format json` (default settings, rules on)
  until it says it is monitoring (groups joined, initial dump applied);
* **memory**: the monitor's RSS then, minus the RSS of the same command on an empty
  namespace, per mirrored object (policies + SAs);
* **lists**: `policy list` and `state list` in every format (json, the table, and what a
  terminal gets by default: `auto` on a pseudo-terminal), and `dump --format json`:
  seconds and peak RSS, next to `ip xfrm policy list` / `ip xfrm state list` in the same
  run (output to a file, or read from the pseudo-terminal as fast as it comes).

``--xfrmwatch "CMD"`` measures another build.  Figures of several runs: min / median / max.
"""

from __future__ import annotations

import argparse
import os
import pty
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from live import (
    Figures,
    Proc,
    allocspi_batch,
    cpu_seconds,
    netns,
    policy_batch,
    require_root,
    rss_kib,
    sh,
    xfrmwatch_cmd,
)


def timed(argv: list[str], *, tty: bool = False) -> tuple[float, int]:
    """Run ``argv`` to completion: (seconds, its peak RSS in KiB, measured by /usr/bin/time)."""
    with tempfile.NamedTemporaryFile("r") as rss:
        argv = ["/usr/bin/time", "-q", "-f", "%M", "-o", rss.name, *argv]
        t0 = time.monotonic()
        if tty:
            pid, fd = pty.fork()
            if pid == 0:
                os.execvp(argv[0], argv)
            while True:  # until the terminal closes (however long the command thinks)
                try:
                    chunk = os.read(fd, 1 << 16)
                except OSError:  # EIO: the command exited and closed its terminal
                    break
                if not chunk:
                    break
            _, status = os.waitpid(pid, 0)
            os.close(fd)
        else:
            with tempfile.TemporaryFile() as out:
                status = subprocess.run(argv, stdout=out, stderr=subprocess.DEVNULL).returncode
        elapsed = time.monotonic() - t0
        if status != 0:
            raise SystemExit(f"{argv} failed ({status})")
        return elapsed, int(rss.read().split()[-1])


def ready_and_rss(cmd: list[str], ns: str, tmp: Path) -> tuple[float, float, int]:
    """(seconds until ready, CPU seconds used by then, RSS in KiB 2 s later)."""
    p = Proc([*cmd, "monitor", "--netns", ns, "--format", "json"], tmp / "mon.out", tmp / "mon.err")
    try:
        ready = p.wait_stderr("monitoring", timeout=300)
        cpu = cpu_seconds(p.pid)
        time.sleep(2)
        return ready, cpu, rss_kib(p.pid)
    finally:
        p.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="policies, and as many SAs")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--xfrmwatch", metavar="CMD", help="the command to measure (default: this tree)")
    ap.add_argument("--skip-lists", action="store_true")
    args = ap.parse_args()
    require_root()
    cmd = xfrmwatch_cmd(args.xfrmwatch)
    fig = Figures()
    print(f"{' '.join(cmd)}: {args.n:,} policies + {args.n:,} SAs, {args.runs} runs")
    with netns("xws") as empty, netns("xws") as ns, tempfile.TemporaryDirectory(prefix="xw-scale-") as d:
        tmp = Path(d)
        sh(f"ip netns exec {ns} sysctl -qw net.core.xfrm_acq_expires=86400")
        sh(f"ip -n {ns} -batch {policy_batch(args.n)}")
        sh(f"ip -n {ns} -batch {allocspi_batch(args.n)} > /dev/null")
        for i in range(args.runs):
            _, _, base = ready_and_rss(cmd, empty, tmp)
            ready, cpu, rss = ready_and_rss(cmd, ns, tmp)
            per = (rss - base) / (2 * args.n)
            fig.add("monitor ready s", ready)
            fig.add("monitor CPU s until ready", cpu)
            fig.add("RSS KiB per object", per)
            print(
                f"run {i + 1}: monitor ready in {ready:.2f} s ({cpu:.2f} s of CPU); RSS {rss / 1024:.0f} MiB "
                f"(empty namespace {base / 1024:.0f} MiB): {per:.2f} KiB per mirrored object"
            )
            if args.skip_lists:
                continue
            for what, ip_what in (("policy", "policy"), ("state", "state")):
                t_ip, m_ip = timed(["ip", "-n", ns, "xfrm", ip_what, "list"])
                fig.add(f"ip xfrm {ip_what} list s", t_ip)
                line = f"  ip xfrm {ip_what} list {t_ip:.2f} s ({m_ip / 1024:.0f} MiB)"
                for fmt, tty in (("json", False), ("table", False), ("auto", True)):
                    t, m = timed([*cmd, what, "list", "--netns", ns, "--format", fmt], tty=tty)
                    label = f"{what} list {fmt}{' (terminal)' if tty else ''}"
                    fig.add(f"{label} s", t)
                    fig.add(f"{label} MiB", m / 1024)
                    fig.add(f"{label} / ip", t / t_ip)
                    line += f"; {label} {t:.2f} s ({m / 1024:.0f} MiB, {t / t_ip:.1f}x ip)"
                print(line)
            t, m = timed([*cmd, "dump", "--netns", ns, "--format", "json"])
            fig.add("dump json s", t)
            fig.add("dump json MiB", m / 1024)
            print(f"  dump --format json {t:.2f} s ({m / 1024:.0f} MiB)")
    print("summary (min / median / max):")
    for name in fig.values:
        print("  " + fig.line(name, "{:,.0f}" if name.endswith("MiB") else "{:.2f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
