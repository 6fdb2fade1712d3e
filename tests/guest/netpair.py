"""Two network namespaces joined by a veth, for the IKE daemons and manual keying (UML tier).

What strongSwan (swan.py), Libreswan (libre.py) and ``ip xfrm`` (manual.py) pairs share:
the network, test traffic through the tunnel, cutting the link, the kernel's SAs, and
stopping helper processes.

    left  [dummy INNER_L/NN]  veth OUTER_L <====> OUTER_R veth  [dummy INNER_R/NN]  right

IPv4: outer 192.0.2.1/.2 (/24), inner 10.10.1.1/24 and 10.10.2.1/24 (a second inner pair
10.10.3.1/24, 10.10.4.1/24 for a second CHILD_SA).  IPv6: outer 2001:db8:2::1/::2 (/64),
inner 2001:db8:11::1/64 and 2001:db8:12::1/64 (and :13::/:14::).  The veth is ``xwl0`` in
left and ``xwr0`` in right; the dummy is ``xwd0`` on both sides.  Interface and address
names are per namespace, so several pairs run side by side in one guest.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from support import sh

SIDES = ("left", "right")
VETH = {"left": "xwl0", "right": "xwr0"}

# Multi-threaded daemons (charon, pluto) in the UML guest: see tests/uml/run_guest.sh and
# guest-init.sh.  The guest's FPU state is switched as the fxsave area only, so the upper
# halves of the YMM registers are shared by all threads of a process.  guest-init.sh keeps
# everything off AVX-512; for a threaded daemon AVX/AVX2 must go too: with them, OpenSSL's
# P-256 code (AVX2 table lookups) computes garbage under thread switches ("ECDH public value
# is malformed", NO_PROPOSAL_CHOSEN), and glibc's AVX2 string functions could corrupt data
# just the same.  SSE, AES-NI, SHA-NI, BMI2 and ADX use XMM or general registers only and stay.
NO_AVX_HWCAPS = "-AVX,-AVX2,-FMA,-AVX_Fast_Unaligned_Load"
# OPENSSL_ia32cap: word 1 = CPUID.1 EDX | ECX<<32 (AVX = bit 60, FMA = bit 44); word 2 =
# CPUID.7 EBX | ECX<<32 (AVX2 = bit 5, plus guest-init.sh's AVX-512/VAES/VPCLMULQDQ bits).
# NSS (Libreswan's crypto) has its own CPU detection and reads neither: NSS_DISABLE_AVX and
# NSS_DISABLE_AVX2 turn its AVX code off.
NO_AVX_OPENSSL_IA32CAP = "~0x1000100000000000:~0x5E42D0230020"


def daemon_env(**extra: str) -> dict[str, str]:
    """The environment for a multi-threaded daemon in the guest: no AVX (see above)."""
    env = dict(os.environ)
    items = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
    for i, t in enumerate(items):
        if t.startswith("glibc.cpu.hwcaps="):
            items[i] = f"{t},{NO_AVX_HWCAPS}"
            break
    else:
        items.append(f"glibc.cpu.hwcaps={NO_AVX_HWCAPS}")
    env["GLIBC_TUNABLES"] = ":".join(items)
    env["OPENSSL_ia32cap"] = NO_AVX_OPENSSL_IA32CAP
    env["NSS_DISABLE_AVX2"] = "1"
    env["NSS_DISABLE_AVX"] = "1"
    env.update(extra)
    return env


@dataclass(frozen=True)
class Addressing:
    """The addresses of one pair (see the module docstring)."""

    family: int  # 4 or 6
    left_outer: str
    right_outer: str
    outer_prefix: int
    left_inner: str
    right_inner: str
    left_net: str
    right_net: str
    left_inner2: str
    right_inner2: str
    left_net2: str
    right_net2: str

    def outer(self, side: str) -> str:
        return self.left_outer if side == "left" else self.right_outer

    def inner(self, side: str) -> str:
        return self.left_inner if side == "left" else self.right_inner

    def net(self, side: str) -> str:
        return self.left_net if side == "left" else self.right_net

    def inner2(self, side: str) -> str:
        return self.left_inner2 if side == "left" else self.right_inner2

    def net2(self, side: str) -> str:
        return self.left_net2 if side == "left" else self.right_net2


V4 = Addressing(
    4, "192.0.2.1", "192.0.2.2", 24,
    "10.10.1.1", "10.10.2.1", "10.10.1.0/24", "10.10.2.0/24",
    "10.10.3.1", "10.10.4.1", "10.10.3.0/24", "10.10.4.0/24",
)  # fmt: skip
V6 = Addressing(
    6, "2001:db8:2::1", "2001:db8:2::2", 64,
    "2001:db8:11::1", "2001:db8:12::1", "2001:db8:11::/64", "2001:db8:12::/64",
    "2001:db8:13::1", "2001:db8:14::1", "2001:db8:13::/64", "2001:db8:14::/64",
)  # fmt: skip


def build_network(left_ns: str, right_ns: str, addr: Addressing, *, default_routes: bool) -> None:
    """The veth between the two namespaces and a dummy carrying each side's inner addresses.
    ``default_routes``: each side routes everything via the other's outer address, as a real
    host has a default route (Libreswan's updown script needs one to add its route)."""
    sh(f"ip link add {VETH['left']} netns {left_ns} type veth peer name {VETH['right']} netns {right_ns}")
    for side, ns in (("left", left_ns), ("right", right_ns)):
        dev = VETH[side]
        nodad = " nodad" if addr.family == 6 else ""
        sh(f"ip -n {ns} addr add {addr.outer(side)}/{addr.outer_prefix} dev {dev}{nodad} && ip -n {ns} link set {dev} up")
        sh(f"ip -n {ns} link add xwd0 type dummy && ip -n {ns} link set xwd0 up")
        for a, net in ((addr.inner(side), addr.net(side)), (addr.inner2(side), addr.net2(side))):
            sh(f"ip -n {ns} addr add {a}/{net.split('/')[1]} dev xwd0{nodad}")
        if default_routes:
            peer = addr.outer("right" if side == "left" else "left")
            sh(f"ip -n {ns} route add default via {peer} dev {dev}")


# UDP sender: runs in the left namespace, bound to SRC, sends COUNT datagrams to DST:PORT
# every INTERVAL s, counts echoed replies, and on the end (count reached, DURATION passed or
# SIGTERM) prints one JSON summary line.  Times are CLOCK_MONOTONIC (time.monotonic() in the
# test process is the same clock) plus the wall clock of the first and last send.
_SENDER = r"""
import errno, json, select, signal, socket, sys, time
src, dst, port, count, interval, duration, size, linger = sys.argv[1:]
port, count, size = int(port), int(count), int(size)
interval, duration, linger = float(interval), float(duration), float(linger)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
s = socket.socket(socket.AF_INET6 if ":" in src else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
s.setblocking(False)
res = {"sent": 0, "send_errors": 0, "errors": [], "replies": 0, "reply_times": [],
       "first_send": None, "last_send": None, "last_reply": None,
       "first_send_wall": None, "last_send_wall": None, "last_reply_wall": None}

def err(op, e):
    if len(res["errors"]) < 50:
        res["errors"].append([round(time.monotonic(), 3), op, errno.errorcode.get(e.errno, str(e.errno))])

def drain(until, interruptible):
    while not (interruptible and stop):
        left = until - time.monotonic()
        if left <= 0:
            return
        try:
            r, _, _ = select.select([s], [], [], left)
            if r:
                s.recv(65536)
                res["replies"] += 1
                res["last_reply"] = round(time.monotonic(), 3)
                res["last_reply_wall"] = time.time()
                if len(res["reply_times"]) < 10000:
                    res["reply_times"].append(res["last_reply"])
        except InterruptedError:
            pass
        except OSError as e:
            err("recv", e)

print("started", flush=True)
t0 = time.monotonic()
end = t0 + duration
nxt = t0
for i in range(count):
    now = time.monotonic()
    if stop or now >= end:
        break
    try:
        s.sendto(b"%08d" % i + b"x" * max(size - 8, 0), (dst, port))
        res["sent"] += 1
        res["last_send"] = round(now, 3)
        res["last_send_wall"] = time.time()
        if res["first_send"] is None:
            res["first_send"] = round(now, 3)
            res["first_send_wall"] = res["last_send_wall"]
    except OSError as e:
        res["send_errors"] += 1
        err("send", e)
    nxt += interval
    drain(min(nxt, end), True)
drain(time.monotonic() + linger, False)
print(json.dumps(res), flush=True)
"""

# UDP echo server: runs in the right namespace, bound to ADDR:PORT.
_ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    try:
        data, peer = s.recvfrom(65536)
        s.sendto(data, peer)
    except OSError:
        pass
"""


def stop_proc(p: subprocess.Popen[Any], term_timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """``sig`` (SIGTERM), wait, then SIGKILL; always reaps."""
    if p.poll() is None:
        try:
            p.send_signal(sig)
            p.wait(timeout=term_timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=30)
        except ProcessLookupError:
            pass
    p.wait(timeout=30)


def read_line(p: subprocess.Popen[str], want: str, timeout: float) -> None:
    """Wait for a line ``want`` on p's stdout (a helper announcing it is ready)."""
    assert p.stdout is not None
    deadline = time.monotonic() + timeout
    buf = ""
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or p.poll() is not None:
            raise AssertionError(f"helper did not print {want!r} (got {buf!r}, rc={p.poll()})")
        r, _, _ = select.select([p.stdout], [], [], left)
        if r:
            chunk = os.read(p.stdout.fileno(), 4096).decode()
            if not chunk:
                continue
            buf += chunk
            if want in buf.splitlines():
                return


class Traffic:
    """A background UDP sender (left) and its echo server (right)."""

    def __init__(self, sender: subprocess.Popen[str], echo: subprocess.Popen[str] | None) -> None:
        self.sender = sender
        self.echo = echo
        self._result: dict[str, Any] | None = None

    def _collect(self, timeout: float) -> dict[str, Any]:
        if self._result is None:
            try:
                out, err = self.sender.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.sender.kill()
                out, err = self.sender.communicate()
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            if not lines:
                raise AssertionError(
                    f"traffic sender printed no summary (rc={self.sender.returncode}): {err}"
                )
            self._result = json.loads(lines[-1])
            if self.echo is not None:
                stop_proc(self.echo, term_timeout=5)
        return self._result

    def wait(self, timeout: float = 120) -> dict[str, Any]:
        """Wait until the sender finished on its own (count or duration reached); its summary."""
        return self._collect(timeout)

    def stop(self) -> dict[str, Any]:
        """Stop sending now; the summary: sent, send_errors, errors[[t, op, errno]], replies,
        reply_times (CLOCK_MONOTONIC), first_send, last_send, last_reply (and ``*_wall``:
        the same as Unix times)."""
        if self._result is None and self.sender.poll() is None:
            self.sender.send_signal(signal.SIGTERM)
        return self._collect(30)

    def kill(self) -> None:
        for p in (self.sender, self.echo):
            if p is not None and p.poll() is None:
                p.kill()
            if p is not None:
                p.wait(timeout=30)


class NsPair:
    """Two namespaces, ``left`` and ``right``, joined as in the module docstring."""

    def __init__(self, left: str, right: str, addr: Addressing, timeout: float) -> None:
        self.left = left  # namespace names
        self.right = right
        self.addr = addr
        self.timeout = timeout
        self._procs: list[subprocess.Popen[str]] = []

    def ns(self, side: str) -> str:
        if side not in SIDES:
            raise ValueError(f"side must be 'left' or 'right', not {side!r}")
        return self.left if side == "left" else self.right

    # -- kernel state -----------------------------------------------------------
    def xfrm_states(self, side: str) -> list[str]:
        """``ip xfrm state`` of that namespace, one block per SA (larval states included)."""
        out = sh(f"ip -n {self.ns(side)} xfrm state").stdout
        return [b for b in ("\n" + out).split("\nsrc ")[1:] if b.strip()]

    def esp_states(self, side: str) -> list[str]:
        return [b for b in self.xfrm_states(side) if "proto esp" in b]

    def diagnostics(self) -> str:
        """What to show when something did not come up (subclasses add daemon logs)."""
        return ""

    def wait_installed(self, timeout: float | None = None, count: int = 2) -> None:
        """Wait until both namespaces hold ``count`` ESP SAs (one CHILD_SA: in + out)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            got = {side: self.esp_states(side) for side in SIDES}
            if all(len(v) >= count for v in got.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"CHILD_SA not installed: { ({k: len(v) for k, v in got.items()}) } SAs\n"
                    + self.diagnostics()
                )
            time.sleep(0.2)

    # -- the link ---------------------------------------------------------------
    def cut_link(self, side: str = "right") -> None:
        """Set that side's veth down: the path dies, both daemons live on (the other side's
        veth loses its carrier)."""
        sh(f"ip -n {self.ns(side)} link set {VETH[side]} down")

    def restore_link(self, side: str = "right") -> None:
        sh(f"ip -n {self.ns(side)} link set {VETH[side]} up")

    # -- traffic ----------------------------------------------------------------
    def send_traffic(
        self,
        count: int = 1000,
        interval: float = 0.05,
        duration: float = 60.0,
        size: int = 100,
        port: int = 7000,
        echo: bool = True,
        linger: float = 0.5,
        src: str | None = None,
        dst: str | None = None,
    ) -> Traffic:
        """Start UDP datagrams from left's ``src`` (default: its inner address) to right's
        ``dst``:port in the background (at most ``count``, every ``interval`` s, for at
        most ``duration`` s), through the tunnel.  With ``echo`` an echo server in ``right``
        sends each back (counted as replies).  Returns when both helpers run; ``.stop()`` /
        ``.wait()`` give the summary.  Stopped on exit anyway."""
        src = src or self.addr.left_inner
        dst = dst or self.addr.right_inner
        py = [sys.executable, "-I", "-S", "-c"]
        echo_p = None
        if echo:
            echo_p = subprocess.Popen(
                ["ip", "netns", "exec", self.right, *py, _ECHO, dst, str(port)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            self._procs.append(echo_p)  # killed on exit at the latest
            read_line(echo_p, "ready", timeout=self.timeout)
        sender = subprocess.Popen(
            ["ip", "netns", "exec", self.left, *py, _SENDER, src, dst, str(port),
             str(count), str(interval), str(duration), str(size), str(linger)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self._procs.append(sender)
        t = Traffic(sender, echo_p)
        read_line(sender, "started", timeout=self.timeout)
        return t

    def _stop_helpers(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
