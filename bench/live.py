"""Shared pieces of the live benchmarks (bench/burst.py, bench/scale.py, bench/steady.py):
a throwaway network namespace, `ip -batch` bursts, the real xfrmwatch command as a
subprocess, `ip xfrm monitor` as the peer, the kernel's per-socket counters.

Every live benchmark runs the real command against the real host kernel, as root.
``--xfrmwatch CMD`` runs another build (e.g. the code before a change) for comparison.
"""

from __future__ import annotations

import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CMD = [sys.executable, "-m", "xfrmwatch"]


def xfrmwatch_cmd(text: str | None) -> list[str]:
    return shlex.split(text) if text else list(DEFAULT_CMD)


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise SystemExit(f"`{cmd}` failed ({p.returncode}): {p.stderr.strip()}")
    return p


@contextmanager
def netns(prefix: str = "xwb") -> Iterator[str]:
    """A fresh network namespace, deleted (with whatever runs in it) at the end."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    sh(f"ip netns add {name}")
    sh(f"ip -n {name} link set lo up")
    try:
        yield name
    finally:
        sh(f"ip netns pids {name} | xargs -r kill -9", check=False)
        sh(f"ip netns del {name}", check=False)


def _write_new(path: Path, text: str) -> None:
    """Write a cache file whole (a concurrent reader never sees half of it)."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def policy_batch(n: int, *, dst: str = "10.200.0.1", offset: int = 0) -> Path:
    """An `ip -batch` file adding ``n`` distinct outbound policies (cached in /tmp)."""
    path = Path(tempfile.gettempdir()) / f"xw-bench-pol-{n}-{dst}-{offset}.batch"
    if not path.exists():
        lines = []
        for i in range(offset, offset + n):
            lines.append(
                f"xfrm policy add src 10.{1 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32 dst {dst}/32 dir out\n"
            )
        _write_new(path, "".join(lines))
    return path


def tunnel_batch(tunnels: int, *, local: str = "10.0.0.1") -> Path:
    """An `ip -batch` file adding the tunnel-mode policies of ``tunnels`` tunnels, as a
    gateway holds them (bench/soak.py's): out, in and fwd between two /32 subnets, each
    with a template to its own peer and reqid (cached in /tmp)."""
    path = Path(tempfile.gettempdir()) / f"xw-bench-tunnels-{tunnels}-{local}.batch"
    if not path.exists():
        lines = []
        for i in range(tunnels):
            a, b, c = i >> 16, (i >> 8) & 255, i & 255
            net_l, net_r, peer = f"10.{16 + a}.{b}.{c}/32", f"10.{32 + a}.{b}.{c}/32", f"10.{64 + a}.{b}.{c}"
            tmpl_out = f"tmpl src {local} dst {peer} proto esp reqid {i + 1} mode tunnel"
            tmpl_in = f"tmpl src {peer} dst {local} proto esp reqid {i + 1} mode tunnel"
            lines += (
                f"xfrm policy add src {net_l} dst {net_r} dir out {tmpl_out}\n",
                f"xfrm policy add src {net_r} dst {net_l} dir in {tmpl_in}\n",
                f"xfrm policy add src {net_r} dst {net_l} dir fwd {tmpl_in}\n",
            )
        _write_new(path, "".join(lines))
    return path


def allocspi_batch(n: int, *, offset: int = 0) -> Path:
    """An `ip -batch` file reserving ``n`` SPIs: larval SAs, which the host kernel (no ESP) keeps."""
    path = Path(tempfile.gettempdir()) / f"xw-bench-allocspi-{n}-{offset}.batch"
    if not path.exists():
        lines = []
        for i in range(offset, offset + n):
            lines.append(
                f"xfrm state allocspi src 10.250.0.1 dst 10.{1 + (i >> 16)}.{(i >> 8) & 255}.{i & 255} "
                f"proto esp mode tunnel reqid {i + 1} min 0x{0x1000 + i:x} max 0x{0x1000 + i:x}\n"
            )
        _write_new(path, "".join(lines))
    return path


def run_batch(ns: str, path: Path) -> float:
    """Run an `ip -batch` file in ``ns``; return how long the kernel took (seconds)."""
    t0 = time.monotonic()
    sh(f"ip -n {ns} -batch {path}")
    return time.monotonic() - t0


@dataclass
class Netlink:
    portid: int
    groups: int
    rmem: int
    drops: int
    inode: int


def netlink_sockets(ns: str) -> list[Netlink]:
    """XFRM (protocol 6) sockets of ``ns`` from /proc/net/netlink, with the kernel's Drops."""
    text = sh(f"ip netns exec {ns} cat /proc/net/netlink").stdout
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) >= 10 and f[1] == "6":
            out.append(Netlink(int(f[2]), int(f[3], 16), int(f[4]), int(f[8]), int(f[9])))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The process's children (e.g. `run`'s render workers), by /proc/PID/task/*/children."""
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except FileNotFoundError:
            pass
    return out


def children_cpu_seconds(pid: int) -> float:
    """:func:`cpu_seconds` of the process's children (its own not included); 0 without any."""
    total = 0.0
    for c in children(pid):
        try:
            total += cpu_seconds(c)
        except FileNotFoundError:
            pass
    return total


def runqueue_seconds(pid: int) -> float:
    """Time the process's threads spent runnable but waiting for a CPU (other load)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except (FileNotFoundError, IndexError, ValueError):
            pass
    return total / 1e9


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Counter:
    """Counts a marker in a growing file, reading only what was appended."""

    def __init__(self, path: Path, markers: Sequence[bytes]) -> None:
        self.path = path
        self.markers = list(markers)
        self.counts = [0] * len(markers)
        self._off = 0
        self._tail = b""
        self.last_growth = time.monotonic()

    def poll(self) -> bool:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._off)
                data = f.read()
        except FileNotFoundError:
            return False
        if not data:
            return False
        self._off += len(data)
        data = self._tail + data
        cut = data.rfind(b"\n") + 1
        chunk, self._tail = data[:cut], data[cut:]
        for i, m in enumerate(self.markers):
            self.counts[i] += chunk.count(m)
        self.last_growth = time.monotonic()
        return True

    def text(self) -> str:
        return self.path.read_text(errors="replace")


class Proc:
    """A subprocess with stdout and stderr in files (so a stopped reader never blocks us)."""

    def __init__(self, argv: list[str], out: Path, err: Path, stdin: int | None = subprocess.DEVNULL) -> None:
        self.out, self.err = out, err
        self.proc = subprocess.Popen(
            argv, stdout=open(out, "wb"), stderr=open(err, "wb"), stdin=stdin, cwd=ROOT  # noqa: SIM115
        )
        self.pid = self.proc.pid
        self.ready = 0.0  # seconds from start until ready (see wait_stderr)

    def wait_stderr(self, marker: str, timeout: float = 120) -> float:
        """Wait until stderr contains ``marker``; return the seconds it took."""
        t0 = time.monotonic()
        while marker not in self.err.read_text(errors="replace"):
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.proc.args} exited {self.proc.returncode}: {self.err.read_text()[-2000:]}")
            if time.monotonic() - t0 > timeout:
                raise SystemExit(f"not ready after {timeout} s: {self.err.read_text()[-2000:]}")
            time.sleep(0.01)
        self.ready = time.monotonic() - t0
        return self.ready

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -9
        return self.proc.returncode


def wait_quiet(counters: Sequence[Counter], done: Callable[[], bool], quiet: float, limit: float) -> None:
    """Poll until ``done()`` or nothing grew for ``quiet`` seconds (or ``limit`` passed)."""
    t0 = time.monotonic()
    while True:
        for c in counters:
            c.poll()
        if done():
            return
        now = time.monotonic()
        if now - max(c.last_growth for c in counters) > quiet or now - t0 > limit:
            return
        time.sleep(0.02)


@dataclass
class Figures:
    """Figures of several runs, printed as min / median / max."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def line(self, name: str, fmt: str = "{:,.0f}") -> str:
        v = self.values.get(name, [])
        if not v:
            return f"{name}: -"
        if len(v) == 1:
            return f"{name}: {fmt.format(v[0])}"
        return f"{name}: {fmt.format(min(v))} / {fmt.format(statistics.median(v))} / {fmt.format(max(v))}"


def require_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit("live benchmarks need root (network namespaces, XFRM netlink)")
