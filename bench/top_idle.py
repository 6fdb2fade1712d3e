"""CPU that `xfrmwatch top` uses while nothing happens, in a real terminal (tmux).

    .venv/bin/python bench/top_idle.py [--policies 10000] [--seconds 60] [--size 160x48]

As root: a throwaway namespace with ``--policies`` policies and as many larval SAs
(``ip xfrm state allocspi``), `xfrmwatch top --netns` in a tmux session of ``--size``, then
the process's CPU time (utime + stime from /proc/PID/stat) over ``--seconds`` once it has
drawn its first frame.  The dashboard redraws once a second when idle (the countdowns move),
writing only the lines that changed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tempfile

from live import DEFAULT_CMD, netns, policy_batch, require_root, run_batch


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def larval_batch(n: int) -> Path:
    """``n`` reserved SPIs (larval SAs: the host kernel has no ESP, and keeps these)."""
    path = Path(tempfile.gettempdir()) / f"xw-bench-larval-{n}.batch"
    path.write_text("".join(
        f"xfrm state allocspi src 10.250.0.1 dst 10.{1 + (i >> 16)}.{(i >> 8) & 255}.{i & 255} proto esp "
        f"reqid {i + 1} mode tunnel\n" for i in range(n)
    ))  # fmt: skip
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--size", default="160x48")
    args = ap.parse_args()
    require_root()
    width, height = args.size.split("x")
    with netns("xwtopidle") as ns:
        run_batch(ns, policy_batch(args.policies))
        run_batch(ns, larval_batch(args.policies))
        name = f"xwidle-{uuid.uuid4().hex[:6]}"
        cmd = " ".join([*DEFAULT_CMD, "top", "--netns", ns])
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", width, "-y", height, cmd], check=True,
                       env={**os.environ, "TERM": "xterm-256color"})  # fmt: skip
        try:
            shell = subprocess.run(["tmux", "list-panes", "-t", name, "-F", "#{pane_pid}"], capture_output=True,
                                   text=True, check=True).stdout.split()[0]  # fmt: skip
            pid = int(shell)
            deadline = time.monotonic() + 120
            while f"policies {args.policies}" not in subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True
            ).stdout:
                if time.monotonic() > deadline:
                    raise SystemExit("top never showed its first frame")
                time.sleep(0.5)
            start_cpu, start = cpu_seconds(pid), time.monotonic()
            time.sleep(args.seconds)
            used = cpu_seconds(pid) - start_cpu
            wall = time.monotonic() - start
            print(f"top idle, {args.policies:,} policies + {args.policies:,} larval SAs, {args.size} terminal: "
                  f"{used:.2f} s CPU in {wall:.0f} s = {100 * used / wall:.2f} % of one core")  # fmt: skip
        finally:
            subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
