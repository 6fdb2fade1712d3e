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
  run (output to a file, or read from the pseudo-terminal as fast as it comes); the
  ratios are to ip writing to a file, and ip on a pseudo-terminal is printed too (it
  writes a line at a time there), with ``cat`` of as many bytes on one: what the
  terminal itself costs.

``--shape tunnel``: a gateway's table instead (policies only, in a namespace ``xwtun-*``):
the out, in and fwd tunnel-mode policies of ``--n``/3 tunnels, each with a template to its
own peer and reqid (`ip xfrm policy add ... tmpl src LOCAL dst PEER proto esp reqid I mode
tunnel`, as bench/soak.py adds them), in the kernel's dump order (interleaved directions);
`policy list` and `dump` measured as above.

``--xfrmwatch "CMD"`` measures another build; ``--compare "CMD"`` measures the lists and
the dump of another build too, in the same runs (e.g. the code before a change).
Python modules are compiled once, as an installed package's are (a warm-up run of each
build, with PYTHONDONTWRITEBYTECODE cleared for the commands measured: a session that sets
it would otherwise charge every run tens of milliseconds of compiling).
``--breakdown``: where a list's time goes, measured in each run: the interpreter's start,
the imports of the listing commands, the kernel's dump alone (read by a bare Python loop
that decodes nothing), the rest (decoding and writing) by difference; CPU seconds next
to ip's.  Figures of several runs: min / median / max.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pty
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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
    tunnel_batch,
    xfrmwatch_cmd,
)


def timed(argv: list[str], *, tty: bool = False) -> tuple[float, int]:
    """Run ``argv`` to completion: (seconds, its peak RSS in KiB, measured by /usr/bin/time)."""
    elapsed, kib, _ = timed_cpu(argv, tty=tty)
    return elapsed, kib


def timed_cpu(argv: list[str], *, tty: bool = False) -> tuple[float, int, float]:
    """(seconds, peak RSS in KiB, CPU seconds: user + system) of ``argv`` run to completion."""
    with tempfile.NamedTemporaryFile("r") as rss:
        argv = ["/usr/bin/time", "-q", "-f", "%M %U %S", "-o", rss.name, *argv]
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
        kib, user, system = rss.read().split()[-3:]
        return elapsed, int(kib), float(user) + float(system)


#: the kernel's dump alone: a bare loop reading every reply datagram, decoding nothing (not
#: even walking the messages, which would cost a Python loop as much as the kernel's work:
#: the dump of an XFRM table ends with NLMSG_DONE in a datagram of its own)
RAW_DUMP = """
import socket, struct, sys, time
t0 = time.perf_counter()
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 6)
s.bind((0, 0))
s.settimeout(10)
typ = int(sys.argv[1])
s.send(struct.pack("=IHHII", 16 + (64 if typ == 21 else 24), typ, 0x301, 1, 0) + bytes(64 if typ == 21 else 24))
buf = bytearray(1 << 20)
done = False
while not done:
    n = s.recv_into(buf)
    done = struct.unpack_from("=IH", buf, 0)[1] in (2, 3)
print(time.perf_counter() - t0)
"""


def breakdown(cmd: list[str], ns: str, fig: Figures) -> None:
    """Where `policy list` / `state list` (JSON) spend their time, next to ip's."""
    python = cmd[0] if cmd[:3] == [sys.executable, "-m", "xfrmwatch"] else sys.executable
    # the fastest of 5 (a start is short: one preemption would be most of it)
    t_start = min(timed_cpu([python, "-c", "pass"])[0] for _ in range(5))
    t_imports = min(timed_cpu([python, "-c", "import xfrmwatch.cli, xfrmwatch.snapshot"])[0] for _ in range(5))
    fig.add("breakdown: interpreter start s", t_start)
    fig.add("breakdown: + imports s", t_imports - t_start)
    line = f"  where the time goes: interpreter start {t_start:.3f} s, imports {t_imports - t_start:.3f} s"
    for what, typ in (("policy", 21), ("state", 18)):
        kernel = float(sh(f"ip netns exec {ns} {python} -c '{RAW_DUMP}' {typ}").stdout)
        t, _, cpu = timed_cpu([*cmd, what, "list", "--netns", ns, "--format", "json"])
        t_ip, _, cpu_ip = timed_cpu(["ip", "-n", ns, "xfrm", what, "list"])
        rest = t - t_imports - kernel
        fig.add(f"breakdown: {what} kernel dump s", kernel)
        fig.add(f"breakdown: {what} list json decode+write s", rest)
        fig.add(f"breakdown: {what} list json CPU s", cpu)
        fig.add(f"breakdown: ip xfrm {what} list CPU s", cpu_ip)
        line += (
            f"; {what} list json {t:.3f} s = start + imports + kernel's dump {kernel:.3f} s + decoding and "
            f"writing {rest:.3f} s (CPU {cpu:.2f} s; ip {t_ip:.3f} s, CPU {cpu_ip:.2f} s)"
        )
    print(line)


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


@contextlib.contextmanager
def _populated(args: argparse.Namespace) -> Iterator[str]:
    """The namespace holding the policies and SAs: made here, or ``--netns`` (kept)."""
    if args.netns:
        yield args.netns
        return
    if args.shape == "tunnel":
        with netns("xwtun") as ns:
            sh(f"ip -n {ns} -batch {tunnel_batch(args.n // 3)}")
            yield ns
        return
    with netns("xws") as ns:
        sh(f"ip netns exec {ns} sysctl -qw net.core.xfrm_acq_expires=86400")
        sh(f"ip -n {ns} -batch {policy_batch(args.n)}")
        sh(f"ip -n {ns} -batch {allocspi_batch(args.n)} > /dev/null")
        yield ns


def warm_up(cmd: list[str], ns: str) -> None:
    """Each module of the build compiled and its byte code written (then read, as installed)."""
    subprocess.run([*cmd, "policy", "list", "--netns", ns, "--format", "json"], stdout=subprocess.DEVNULL, check=True)
    subprocess.run([*cmd, "monitor", "--help"], stdout=subprocess.DEVNULL, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="policies, and as many SAs")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--xfrmwatch", metavar="CMD", help="the command to measure (default: this tree)")
    ap.add_argument(
        "--netns",
        metavar="NAME",
        help="an existing namespace already holding them, made as here (allocspi takes minutes)",
    )
    ap.add_argument("--compare", metavar="CMD", help="another build whose lists and dump are measured too")
    ap.add_argument(
        "--shape",
        choices=("out", "tunnel"),
        default="out",
        help="the table: --n outbound policies of one shape and --n larval SAs (out), or a gateway's "
        "tunnel-mode policies, out/in/fwd of --n/3 tunnels, each to its own peer and reqid, and no SAs (tunnel)",
    )
    ap.add_argument("--skip-lists", action="store_true")
    ap.add_argument("--skip-ready", action="store_true", help="lists only (no monitor)")
    ap.add_argument("--breakdown", action="store_true", help="where the lists' time goes")
    args = ap.parse_args()
    require_root()
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    cmd = xfrmwatch_cmd(args.xfrmwatch)
    fig = Figures()
    tunnel = args.shape == "tunnel"
    table = f"{args.n // 3 * 3:,} tunnel-mode policies" if tunnel else f"{args.n:,} policies + {args.n:,} SAs"
    print(f"{' '.join(cmd)}: {table}, {args.runs} runs")
    with netns("xws") as empty, _populated(args) as ns, tempfile.TemporaryDirectory(prefix="xw-scale-") as d:
        tmp = Path(d)
        builds = [("", cmd)] + ([("before: ", xfrmwatch_cmd(args.compare))] if args.compare else [])
        for _, build in builds:
            warm_up(build, empty)
        for i in range(args.runs):
            if not args.skip_ready:
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
            else:
                print(f"run {i + 1}:")
            if args.breakdown:
                breakdown(cmd, ns, fig)
            if args.skip_lists:
                continue
            for what, ip_what in (("policy", "policy"), ("state", "state"))[: 1 if tunnel else 2]:
                t_ip, m_ip = timed(["ip", "-n", ns, "xfrm", ip_what, "list"])
                fig.add(f"ip xfrm {ip_what} list s", t_ip)
                t_ipt, _ = timed(["ip", "-n", ns, "xfrm", ip_what, "list"], tty=True)
                fig.add(f"ip xfrm {ip_what} list (terminal) s", t_ipt)
                table = tmp / "table.txt"
                with table.open("wb") as f:
                    subprocess.run([*cmd, what, "list", "--netns", ns, "--format", "table"], stdout=f, check=True)
                t_cat, _ = timed(["cat", str(table)], tty=True)
                fig.add(f"cat of the {what} table (terminal) s", t_cat)
                line = (
                    f"  ip xfrm {ip_what} list {t_ip:.2f} s ({m_ip / 1024:.0f} MiB; on a terminal {t_ipt:.2f} s; "
                    f"cat of our table on one {t_cat:.2f} s)"
                )
                for label, build in builds:
                    for fmt, tty in (("json", False), ("table", False), ("auto", True)):
                        t, m = timed([*build, what, "list", "--netns", ns, "--format", fmt], tty=tty)
                        name = f"{label}{what} list {fmt}{' (terminal)' if tty else ''}"
                        fig.add(f"{name} s", t)
                        fig.add(f"{name} MiB", m / 1024)
                        fig.add(f"{name} / ip", t / t_ip)
                        line += f"; {name} {t:.2f} s ({m / 1024:.0f} MiB, {t / t_ip:.1f}x ip)"
                print(line)
            for label, build in builds:
                t, m = timed([*build, "dump", "--netns", ns, "--format", "json"])
                fig.add(f"{label}dump json s", t)
                fig.add(f"{label}dump json MiB", m / 1024)
                print(f"  {label}dump --format json {t:.2f} s ({m / 1024:.0f} MiB)")
    print("summary (min / median / max):")
    for name in fig.values:
        print(
            "  "
            + fig.line(
                name, "{:,.0f}" if name.endswith("MiB") else "{:.3f}" if "breakdown" in name else "{:.2f}"
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
