"""Two strongSwan charons negotiating real IKEv2 in two network namespaces (UML tier).

    from swan import swan_pair      # tests/guest is on sys.path (pytest's rootdir-less import)

    with swan_pair(left_rekey=10, left_life=16) as p:
        # p.left / p.right: namespace names; the CHILD_SA is installed on both sides
        t = p.send_traffic(count=200, interval=0.05)   # UDP 10.10.1.1 -> 10.10.2.1, echoed back
        ...
        p.kill("right")                                # SIGKILL right's charon
        print(t.stop())                                # {"sent": ..., "replies": ..., ...}

Layout (see /work/shared/notes/test-kernels.md and ike-rekey.md):

    left  [dummy 10.10.1.1/24]  veth 192.0.2.1/24 <====> 192.0.2.2/24 veth  [dummy 10.10.2.1/24]  right
          IKEv2 PSK, ESP tunnel 10.10.1.0/24 <-> 10.10.2.0/24, aes128gcm16 with PFS (ecp256)

Each side gets a directory under $TMPDIR (a guest tmpfs) holding its strongswan.conf,
swanctl/swanctl.conf, charon's log (``charon.log``, plus ``charon.out`` for its stdout/stderr),
``swanctl.log``, and, because that directory is bind-mounted over /run in charon's own mount
namespace (the one ``ip netns exec`` creates, so the mount does not leak), charon's compiled-in
``/var/run/charon.pid`` and ``/var/run/charon.vici`` (/var/run -> /run) land there too.
Nothing reads or writes /etc/strongswan.conf, /etc/swanctl or the host's /run.

Only for the UML guest: the host kernel has no ESP.  Everything started here is stopped on exit
(charon: SIGTERM, then SIGKILL), and the namespaces are deleted.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support import fresh_netns, sh

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = "/usr/sbin/swanctl"

# Debian 12's strongswan 5.9.8 ships all of these as separate plugin files under
# /usr/lib/ipsec/plugins (kdf included): nothing else is loaded.
CHARON_PLUGINS = "random nonce openssl kdf pem pkcs1 x509 pubkey kernel-netlink socket-default vici"
SWANCTL_PLUGINS = "random nonce openssl pem pkcs1 x509 pubkey"

# charon is multi-threaded.  In the UML guest on hosts with a large XSAVE area the guest's FPU
# state is switched as the fxsave area only (see tests/uml/run_guest.sh and guest-init.sh): the
# upper halves of the YMM registers are shared by all threads of a process.  guest-init.sh keeps
# everything off AVX-512; for charon AVX/AVX2 must go too: with them, OpenSSL's P-256 code
# (AVX2 table lookups) computes garbage under thread switches ("ECDH public value is malformed",
# NO_PROPOSAL_CHOSEN), and glibc's AVX2 string functions could corrupt data just the same.
# SSE, AES-NI, SHA-NI, BMI2 and ADX use XMM or general registers only and stay.
NO_AVX_HWCAPS = "-AVX,-AVX2,-FMA,-AVX_Fast_Unaligned_Load"
# OPENSSL_ia32cap: word 1 = CPUID.1 EDX | ECX<<32 (AVX = bit 60, FMA = bit 44); word 2 =
# CPUID.7 EBX | ECX<<32 (AVX2 = bit 5, plus guest-init.sh's AVX-512/VAES/VPCLMULQDQ bits).
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
    env.update(extra)
    return env


LEFT_OUTER, RIGHT_OUTER = "192.0.2.1", "192.0.2.2"
LEFT_INNER, RIGHT_INNER = "10.10.1.1", "10.10.2.1"
LEFT_NET, RIGHT_NET = "10.10.1.0/24", "10.10.2.0/24"
SWANCTL_SUBDIRS = (
    "x509", "x509ca", "x509ocsp", "x509aa", "x509ac", "x509crl", "pubkey", "private",
    "rsa", "ecdsa", "bliss", "pkcs8", "pkcs12",
)  # fmt: skip
CONN = "net"  # name of both the IKE connection and its CHILD_SA
SIDES = ("left", "right")
# charon filelog levels per subsystem (-1 silent .. 4 private); knl 2 logs every XFRM request
DEFAULT_LOG_LEVELS: Mapping[str, int] = {"default": 1, "ike": 2, "knl": 2, "chd": 2}


def have_strongswan() -> str | None:
    """None if charon and swanctl are installed, else what is missing."""
    missing = [p for p in (CHARON, SWANCTL) if not os.access(p, os.X_OK)]
    if missing:
        return f"{', '.join(missing)} missing (apt-get install strongswan-charon strongswan-swanctl)"
    return None


def _strongswan_conf(*, log_levels: Mapping[str, int]) -> str:
    levels = "\n".join(f"{' ' * 20}{k} = {v}" for k, v in log_levels.items())
    # Paths are as charon sees them: this side's directory is its /run.
    return textwrap.dedent(
        f"""\
        # generated by tests/guest/swan.py
        charon {{
            load_modular = no
            load = {CHARON_PLUGINS}
            install_routes = yes
            retransmit_timeout = 2
            retransmit_base = 1.5
            retransmit_tries = 3
            filelog {{
                swan {{
                    path = /run/charon.log
                    time_format = %H:%M:%S
                    ike_name = yes
                    append = no
                    flush_line = yes
{levels}
                }}
            }}
            syslog {{
                daemon {{
                    default = -1
                }}
            }}
            plugins {{
                vici {{
                    socket = unix:///run/charon.vici
                }}
            }}
        }}
        swanctl {{
            load = {SWANCTL_PLUGINS}
        }}
        """
    )


def _swanctl_conf(
    *,
    local: str,
    remote: str,
    local_ts: str,
    remote_ts: str,
    local_id: str,
    remote_id: str,
    rekey: float,
    life: float,
    ike_proposals: str,
    esp_proposals: str,
    start_action: str,
    psk: str,
) -> str:
    return textwrap.dedent(
        f"""\
        # generated by tests/guest/swan.py
        connections {{
            {CONN} {{
                version = 2
                local_addrs = {local}
                remote_addrs = {remote}
                proposals = {ike_proposals}
                mobike = no
                dpd_delay = 0
                local {{
                    auth = psk
                    id = {local_id}
                }}
                remote {{
                    auth = psk
                    id = {remote_id}
                }}
                children {{
                    {CONN} {{
                        mode = tunnel
                        local_ts = {local_ts}
                        remote_ts = {remote_ts}
                        esp_proposals = {esp_proposals}
                        rekey_time = {rekey:g}s
                        life_time = {life:g}s
                        rand_time = 0
                        start_action = {start_action}
                        dpd_action = clear
                        close_action = none
                    }}
                }}
            }}
        }}
        secrets {{
            ike-{CONN} {{
                id-a = {local_id}
                id-b = {remote_id}
                secret = "{psk}"
            }}
        }}
        """
    )


# UDP sender: runs in the left namespace, bound to 10.10.1.1, sends COUNT datagrams to
# DST:PORT every INTERVAL s, counts echoed replies, and on the end (count reached,
# DURATION passed or SIGTERM) prints one JSON summary line.  Times are CLOCK_MONOTONIC
# (time.monotonic() in the test process is the same clock).
_SENDER = r"""
import errno, json, select, signal, socket, sys, time
src, dst, port, count, interval, duration, size, linger = sys.argv[1:]
port, count, size = int(port), int(count), int(size)
interval, duration, linger = float(interval), float(duration), float(linger)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
s.setblocking(False)
res = {"sent": 0, "send_errors": 0, "errors": [], "replies": 0, "reply_times": [],
       "first_send": None, "last_send": None}

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
                if len(res["reply_times"]) < 10000:
                    res["reply_times"].append(round(time.monotonic(), 3))
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
        if res["first_send"] is None:
            res["first_send"] = round(now, 3)
    except OSError as e:
        res["send_errors"] += 1
        err("send", e)
    nxt += interval
    drain(min(nxt, end), True)
drain(time.monotonic() + linger, False)
print(json.dumps(res), flush=True)
"""

# UDP echo server: runs in the right namespace, bound to 10.10.2.1:PORT.
_ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    try:
        data, peer = s.recvfrom(65536)
        s.sendto(data, peer)
    except OSError:
        pass
"""


def _stop_proc(p: subprocess.Popen[Any], term_timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL; always reaps."""
    if p.poll() is None:
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=term_timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=30)
        except ProcessLookupError:
            pass
    p.wait(timeout=30)


def _read_line(p: subprocess.Popen[str], want: str, timeout: float) -> None:
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
    """A background UDP sender (left, 10.10.1.1) and its echo server (right, 10.10.2.1)."""

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
                _stop_proc(self.echo, term_timeout=5)
        return self._result

    def wait(self, timeout: float = 120) -> dict[str, Any]:
        """Wait until the sender finished on its own (count or duration reached); its summary."""
        return self._collect(timeout)

    def stop(self) -> dict[str, Any]:
        """Stop sending now; the summary: sent, send_errors, errors[[t, op, errno]], replies,
        reply_times (CLOCK_MONOTONIC), first_send, last_send."""
        if self._result is None and self.sender.poll() is None:
            self.sender.send_signal(signal.SIGTERM)
        return self._collect(30)

    def kill(self) -> None:
        for p in (self.sender, self.echo):
            if p is not None and p.poll() is None:
                p.kill()
            if p is not None:
                p.wait(timeout=30)


@dataclass
class Side:
    name: str  # "left" or "right"
    ns: str  # network namespace name (under /run/netns)
    dir: Path  # config, logs, and charon's /run
    outer: str
    inner: str
    proc: subprocess.Popen[bytes] | None = None
    out_file: Any = None

    @property
    def strongswan_conf(self) -> Path:
        return self.dir / "strongswan.conf"

    @property
    def swanctl_dir(self) -> Path:
        return self.dir / "swanctl"

    @property
    def vici(self) -> Path:
        return self.dir / "charon.vici"

    @property
    def uri(self) -> str:
        return f"unix://{self.vici}"

    @property
    def charon_log(self) -> Path:
        return self.dir / "charon.log"

    @property
    def charon_out(self) -> Path:
        return self.dir / "charon.out"

    @property
    def swanctl_log(self) -> Path:
        return self.dir / "swanctl.log"

    @property
    def pid_file(self) -> Path:
        return self.dir / "charon.pid"


@dataclass
class SwanPair:
    left_side: Side
    right_side: Side
    base: Path
    timeout: float
    _procs: list[subprocess.Popen[str]] = field(default_factory=list)

    # -- names ------------------------------------------------------------------
    @property
    def left(self) -> str:
        """The left (initiating) network namespace's name."""
        return self.left_side.ns

    @property
    def right(self) -> str:
        return self.right_side.ns

    def side(self, side: str) -> Side:
        if side not in SIDES:
            raise ValueError(f"side must be 'left' or 'right', not {side!r}")
        return self.left_side if side == "left" else self.right_side

    def ns(self, side: str) -> str:
        return self.side(side).ns

    def log_paths(self, side: str) -> dict[str, Path]:
        s = self.side(side)
        return {"charon": s.charon_log, "charon_out": s.charon_out, "swanctl": s.swanctl_log}

    def log(self, side: str) -> str:
        """charon's log file of that side (its filelog, then its stdout/stderr)."""
        s = self.side(side)
        parts = []
        for p in (s.charon_log, s.charon_out):
            try:
                parts.append(p.read_text(errors="replace"))
            except FileNotFoundError:
                pass
        return "\n".join(parts)

    # -- charon -----------------------------------------------------------------
    def charon_pid(self, side: str) -> int:
        """charon's PID as the guest sees it (also the netlink port id it sends with)."""
        p = self.side(side).proc
        if p is None:
            raise AssertionError(f"{side}: charon was never started")
        return p.pid

    def charon_alive(self, side: str) -> bool:
        p = self.side(side).proc
        return p is not None and p.poll() is None

    def kill(self, side: str, sig: int = signal.SIGKILL) -> None:
        """Kill that side's charon (SIGKILL by default: no DELETE, no SA clean-up) and reap it."""
        p = self.side(side).proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(sig)
        p.wait(timeout=30)

    def _start_charon(self, s: Side) -> None:
        env = daemon_env(STRONGSWAN_CONF="/run/strongswan.conf")
        # ip netns exec runs its command in a new mount namespace (slave to the guest's),
        # so the bind mount over /run stays private to this charon.  sh execs charon:
        # the Popen pid is charon's pid.
        cmd = [
            "ip", "netns", "exec", s.ns, "sh", "-c",
            f'mount --bind "{s.dir}" /run && exec {CHARON}',
        ]  # fmt: skip
        s.out_file = open(s.charon_out, "wb")  # closed in _stop_charon
        s.proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=s.out_file, stderr=subprocess.STDOUT
        )

    def _wait_charon_ready(self, s: Side) -> None:
        deadline = time.monotonic() + self.timeout
        assert s.proc is not None
        while not (s.vici.exists() and s.pid_file.exists()):
            if s.proc.poll() is not None:
                raise AssertionError(
                    f"{s.name}: charon exited with {s.proc.returncode}:\n{self.log(s.name)[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{s.name}: charon's vici socket never appeared:\n{self.log(s.name)[-3000:]}"
                )
            time.sleep(0.1)
        # the pid file is written before the socket is opened; same process as ours?
        pid_text = s.pid_file.read_text().strip()
        if pid_text and int(pid_text) != s.proc.pid:
            raise AssertionError(f"{s.name}: charon.pid says {pid_text}, we started {s.proc.pid}")

    def _stop_charon(self, s: Side) -> None:
        if s.proc is not None:
            _stop_proc(s.proc, term_timeout=15)
        if s.out_file is not None:
            s.out_file.close()
            s.out_file = None

    # -- swanctl ----------------------------------------------------------------
    def swanctl(
        self, side: str, *args: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run swanctl against that side's charon (its own vici socket and config dir)."""
        s = self.side(side)
        env = daemon_env(STRONGSWAN_CONF=str(s.strongswan_conf), SWANCTL_DIR=str(s.swanctl_dir))
        p = subprocess.run(
            [SWANCTL, *args, "--uri", s.uri], env=env, capture_output=True, text=True, timeout=timeout
        )
        with open(s.swanctl_log, "a") as f:
            f.write(f"$ swanctl {' '.join(args)}  (rc={p.returncode})\n{p.stdout}{p.stderr}\n")
        if check and p.returncode != 0:
            raise AssertionError(
                f"{side}: swanctl {' '.join(args)} failed ({p.returncode}):\n{p.stdout}{p.stderr}\n"
                f"--- left charon:\n{self.log('left')[-3000:]}\n--- right charon:\n{self.log('right')[-3000:]}"
            )
        return p

    def load(self, side: str) -> None:
        self.swanctl(side, "--load-all", "--noprompt")

    def initiate(self, timeout: float | None = None) -> None:
        """Initiate the CHILD_SA from left and wait until it is installed on both sides."""
        t = int(timeout or self.timeout)
        self.swanctl(
            "left", "--initiate", "--ike", CONN, "--child", CONN, "--timeout", str(t), timeout=t + 30
        )
        self.wait_installed(timeout=t)

    # -- kernel state -----------------------------------------------------------
    def xfrm_states(self, side: str) -> list[str]:
        """``ip xfrm state`` of that namespace, one block per SA (larval states included)."""
        out = sh(f"ip -n {self.ns(side)} xfrm state").stdout
        return [b for b in ("\n" + out).split("\nsrc ")[1:] if b.strip()]

    def wait_installed(self, timeout: float | None = None, count: int = 2) -> None:
        """Wait until both namespaces hold ``count`` ESP SAs (the CHILD_SA: in + out)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            got = {side: [b for b in self.xfrm_states(side) if "proto esp" in b] for side in SIDES}
            if all(len(v) >= count for v in got.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"CHILD_SA not installed: { ({k: len(v) for k, v in got.items()}) } SAs\n"
                    f"--- left:\n{self.log('left')[-3000:]}\n--- right:\n{self.log('right')[-3000:]}"
                )
            time.sleep(0.2)

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
    ) -> Traffic:
        """Start UDP datagrams 10.10.1.1 -> 10.10.2.1:port in the background (at most ``count``,
        every ``interval`` s, for at most ``duration`` s), through the tunnel.  With ``echo``
        an echo server in ``right`` sends each back (counted as replies).  Returns when both
        helpers run; ``.stop()`` / ``.wait()`` give the summary.  Stopped on exit anyway."""
        py = [sys.executable, "-I", "-S", "-c"]
        echo_p = None
        if echo:
            echo_p = subprocess.Popen(
                ["ip", "netns", "exec", self.right, *py, _ECHO, RIGHT_INNER, str(port)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            self._procs.append(echo_p)  # killed on exit at the latest
            _read_line(echo_p, "ready", timeout=self.timeout)
        sender = subprocess.Popen(
            ["ip", "netns", "exec", self.left, *py, _SENDER, LEFT_INNER, RIGHT_INNER, str(port),
             str(count), str(interval), str(duration), str(size), str(linger)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self._procs.append(sender)
        t = Traffic(sender, echo_p)
        _read_line(sender, "started", timeout=self.timeout)
        return t

    def _stop_all(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
        for s in (self.left_side, self.right_side):
            self._stop_charon(s)


def _copy_logs(pair: SwanPair, dest: Path) -> None:
    for s in (pair.left_side, pair.right_side):
        d = dest / s.ns
        d.mkdir(parents=True, exist_ok=True)
        for f in (
            s.strongswan_conf,
            s.swanctl_dir / "swanctl.conf",
            s.charon_log,
            s.charon_out,
            s.swanctl_log,
        ):
            if f.is_file():
                shutil.copy(f, d / f.name)


@contextmanager
def swan_pair(
    *,
    left_rekey: float = 10,
    left_life: float = 16,
    right_rekey: float = 20,
    right_life: float = 26,
    ike_proposals: str = "aes128-sha256-ecp256",
    esp_proposals: str = "aes128gcm16-ecp256",
    initiate: bool = True,
    left_start_action: str = "none",
    right_start_action: str = "none",
    psk: str = "xfrmwatch-test-psk-not-secret",
    log_levels: Mapping[str, int] | None = None,
    timeout: float = 60,
    keep_dir: bool = False,
    logs_to: str | os.PathLike[str] | None = None,
    extra_left: Sequence[str] = (),
    extra_right: Sequence[str] = (),
) -> Iterator[SwanPair]:
    """Two namespaces with a charon each; with ``initiate`` (default) the CHILD_SA is up when
    this yields.  ``initiate=False``: charons run and have their config loaded, call
    ``pair.initiate()`` yourself (e.g. after starting monitors to see the set-up events).
    With ``left_start_action="start"`` (or ``"trap"``) charon acts on loading the config:
    pass ``initiate=False`` then, and call ``pair.wait_installed()``.
    ``extra_left``/``extra_right``: shell commands run after the namespaces are built
    (``{ns}`` is replaced by the namespace name), before charon starts.
    ``logs_to`` (default: $XW_SWAN_LOGS, which run_guest.sh passes into the guest): a directory
    that receives both sides' configs and logs on exit, pass or fail."""
    if reason := have_strongswan():
        raise AssertionError(reason)
    with ExitStack() as stack:
        left_ns = stack.enter_context(fresh_netns("left"))
        right_ns = stack.enter_context(fresh_netns("right"))
        base = Path(tempfile.mkdtemp(prefix="swan-"))
        if not keep_dir:
            stack.callback(shutil.rmtree, base, True)
        left = Side("left", left_ns, base / "left", LEFT_OUTER, LEFT_INNER)
        right = Side("right", right_ns, base / "right", RIGHT_OUTER, RIGHT_INNER)

        # the network: veth between the two, a dummy carrying each protected subnet
        sh(f"ip link add xwl0 netns {left_ns} type veth peer name xwr0 netns {right_ns}")
        for s, dev, net in ((left, "xwl0", LEFT_NET), (right, "xwr0", RIGHT_NET)):
            sh(f"ip -n {s.ns} addr add {s.outer}/24 dev {dev} && ip -n {s.ns} link set {dev} up")
            prefix = net.split("/")[1]
            sh(f"ip -n {s.ns} link add xwd0 type dummy && ip -n {s.ns} addr add {s.inner}/{prefix} dev xwd0 "
               f"&& ip -n {s.ns} link set xwd0 up")  # fmt: skip
        for cmd in extra_left:
            sh(cmd.replace("{ns}", left_ns))
        for cmd in extra_right:
            sh(cmd.replace("{ns}", right_ns))

        # configuration
        for s, peer, rekey, life, ts, rts, start in (
            (left, right, left_rekey, left_life, LEFT_NET, RIGHT_NET, left_start_action),
            (right, left, right_rekey, right_life, RIGHT_NET, LEFT_NET, right_start_action),
        ):
            s.swanctl_dir.mkdir(parents=True)
            for sub in SWANCTL_SUBDIRS:  # swanctl --load-all complains about missing ones
                (s.swanctl_dir / sub).mkdir()
            s.strongswan_conf.write_text(_strongswan_conf(log_levels=log_levels or DEFAULT_LOG_LEVELS))
            (s.swanctl_dir / "swanctl.conf").write_text(
                _swanctl_conf(
                    local=s.outer,
                    remote=peer.outer,
                    local_ts=ts,
                    remote_ts=rts,
                    local_id=f"{s.name}.xw.test",
                    remote_id=f"{peer.name}.xw.test",
                    rekey=rekey,
                    life=life,
                    ike_proposals=ike_proposals,
                    esp_proposals=esp_proposals,
                    start_action=start,
                    psk=psk,
                )
            )

        pair = SwanPair(left, right, base, timeout)
        logs_to = logs_to or os.environ.get("XW_SWAN_LOGS") or None
        if logs_to is not None:
            stack.callback(_copy_logs, pair, Path(logs_to))  # after the charons stopped
        stack.callback(pair._stop_all)  # runs before the namespaces are deleted
        # responder first, so that a start_action=start on left finds it listening
        for s in (right, left):
            pair._start_charon(s)
        for s in (right, left):
            pair._wait_charon_ready(s)
            pair.load(s.name)
        if initiate:
            pair.initiate()
        yield pair
