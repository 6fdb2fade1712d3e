"""Tunnel scenarios with real daemons (strongSwan, Libreswan) and manual keying (UML tier).

Each scenario is a function ``f(run: Run) -> None`` that builds its namespace pair, starts a
``xfrmwatch monitor`` on each side *before* anything is keyed (``run.watch``), drives the
tunnel (initiate, traffic, rekeys, a kill, a terminate, a cut link ...), notes what it did
and when (``run.mark``), and what really happened according to the daemons' own logs
(``run.expect``).  The same functions serve two callers:

* tests/fixtures/record_scenarios.py runs them with ``monitor --no-rules`` and keeps the
  monitors' JSON lines unmodified as fixtures (tests/fixtures/uml/scenarios/);
* tests/guest/test_tunnels_*.py run them with the default rules and assert on the events.

Times: ``run.mark`` writes wall-clock ISO 8601 UTC (``time`` in the monitor's events is the
same clock).  Lifetimes are short; every scenario takes at most about 45 s once the daemons
are up.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from libre import ESTABLISHED as _LIBRE_ESTABLISHED
from libre import LibrePair, libre_pair
from manual import manual_pair
from netpair import SIDES, NsPair
from support import ROOT, XFRMWATCH
from swan import CONN2, SwanPair, swan_pair
from swan import ESTABLISHED as _SWAN_ESTABLISHED


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_iso(t: str) -> float:
    """An ISO 8601 UTC time (as in events and markers) as a Unix time."""
    return datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()


class MonitorProc:
    """``xfrmwatch monitor --netns NS --format json ARGS`` writing its JSON lines, unmodified,
    to ``out`` (stderr to ``out.err``).  Started before the scenario keys anything."""

    def __init__(self, ns: str, out: Path, args: list[str]) -> None:
        self.ns = ns
        self.out = out
        self.err = out.with_suffix(".err")
        self.args = ["monitor", "--netns", ns, "--format", "json", *args]
        self._out_f = open(out, "wb")
        self._err_f = open(self.err, "wb")
        self.proc = subprocess.Popen(
            [*XFRMWATCH, *self.args], stdout=self._out_f, stderr=self._err_f, stdin=subprocess.DEVNULL, cwd=ROOT
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while b"monitoring" not in self.err.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"monitor in {self.ns} did not start: {self.err.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGINT (a clean stop that flushes), then SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self._out_f.close()
        self._err_f.close()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(ln) for ln in self.out.read_text().splitlines() if ln.strip()]


class KeySampler:
    """Collects every key the kernel holds in a namespace (``ip xfrm state`` every ``period``
    s, in memory only) so that the outputs can be checked for them afterwards."""

    _KEY = re.compile(r"^\s*(?:aead|enc|auth|auth-trunc)\s+\S+\s+(0x[0-9a-f]+)", re.M)

    def __init__(self, namespaces: list[str], period: float = 0.5) -> None:
        self.namespaces = namespaces
        self.period = period
        self.keys: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def sample(self) -> None:
        for ns in self.namespaces:
            p = subprocess.run(["ip", "-n", ns, "xfrm", "state"], capture_output=True, text=True, timeout=30)
            self.keys.update(k for k in self._KEY.findall(p.stdout) if len(k) > 10)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            with contextlib.suppress(Exception):
                self.sample()

    def stop(self) -> set[str]:
        self._stop.set()
        self._thread.join(timeout=30)
        with contextlib.suppress(Exception):
            self.sample()
        return self.keys


@dataclass
class Run:
    """One run of one scenario: where the monitors write, what the scenario did."""

    name: str
    outdir: Path
    monitor_args: list[str]  # e.g. ["--no-rules"]; ["--acquire"] is added for daemon pairs
    markers: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    expect: dict[str, Any] = field(default_factory=dict)
    monitors: dict[str, MonitorProc] = field(default_factory=dict)
    namespaces: dict[str, str] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)
    daemon_log: dict[str, list[str]] = field(default_factory=dict)
    _sampler: KeySampler | None = None

    def path(self, side: str) -> Path:
        return self.outdir / f"{self.name}-{side}.jsonl"

    def watch(self, pair: NsPair, acquire: bool) -> None:
        """Start a monitor on each side of ``pair`` and wait until both listen.  ``acquire``:
        join ACQUIRE from the start (a key manager will listen on it anyway)."""
        extra = ["--acquire"] if acquire else []
        for side in SIDES:
            ns = pair.ns(side)
            self.namespaces[side] = ns
            self.monitors[side] = MonitorProc(ns, self.path(side), [*self.monitor_args, *extra])
        for m in self.monitors.values():
            m.wait_ready()
        self.config["monitor_args"] = self.monitors["left"].args[5:]
        self._sampler = KeySampler([pair.left, pair.right])
        self.mark("monitors_ready")

    def mark(self, what: str, **details: Any) -> None:
        self.markers.append({"what": what, "time": now_iso(), **details})

    def settle(self, seconds: float = 1.5) -> None:
        time.sleep(seconds)

    def stop_monitors(self) -> None:
        self.settle()
        self.mark("end")
        if self._sampler is not None:
            self.keys |= self._sampler.stop()
            self._sampler = None
        for m in self.monitors.values():
            m.stop()

    def events(self, side: str) -> list[dict[str, Any]]:
        return self.monitors[side].events()

    def markers_doc(self) -> dict[str, Any]:
        return {
            "scenario": self.name,
            "namespaces": self.namespaces,
            "config": self.config,
            "expect": self.expect,
            "markers": self.markers,
            "daemon_log": self.daemon_log,
        }

    def marker(self, what: str) -> dict[str, Any]:
        (m,) = [m for m in self.markers if m["what"] == what]
        return m


@contextlib.contextmanager
def watching(run: Run, pair: NsPair, acquire: bool = True) -> Iterator[None]:
    """Monitors on both sides for the body; then the daemons' own account of the run (up to
    the ``end`` marker) into ``run.expect`` and ``run.daemon_log``."""
    run.watch(pair, acquire)
    try:
        yield
    finally:
        run.stop_monitors()
    if isinstance(pair, SwanPair):
        swan_facts(run, pair)
    elif isinstance(pair, LibrePair):
        libre_facts(run, pair)


def sleep_until(t0: float, offset: float) -> None:
    """Sleep until ``offset`` s after the monotonic time ``t0``.

    The runs end (``end`` marker, 1.5 s after the last sleep) half-way between two rekeys, so
    that the daemons' logs and the monitors agree on how many happened: charon's rekeys come
    every 9-10 s (the kernel's time limits have 1-second granularity), pluto's every 10.0 s."""
    left = t0 + offset - time.monotonic()
    if left > 0:
        time.sleep(left)


# -- daemon logs --------------------------------------------------------------

_SWAN_NOTABLE = re.compile(
    r"established|rekeying|rekey collision|redundant|deleting|closing|giving up|retransmit|"
    r"reauthenticat|initiating|received DELETE|sending DELETE|creating rekey|CHILD_SA .* state change",
    re.I,
)
_LIBRE_NOTABLE = re.compile(
    r"established|rekey|deleting|delete|retransmission|timeout|giving up|initiating|terminat|replac|"
    r"expire|down-client|up-client|EVENT_",
    re.I,
)


_SWAN_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) ")
_LIBRE_TIME = re.compile(r"^(\w{3} [ \d]\d \d\d:\d\d:\d\d\.\d{6}): ")


def _log_time(line: str) -> float | None:
    """The Unix time of a charon (``time_format`` of swan.py, ms) or pluto log line (local time)."""
    if m := _SWAN_TIME.match(line):
        return time.mktime(time.strptime(m.group(1)[:19], "%Y-%m-%d %H:%M:%S")) + float(m.group(1)[19:])
    if m := _LIBRE_TIME.match(line):
        year = time.localtime().tm_year
        return time.mktime(time.strptime(f"{year} {m.group(1)[:15]}", "%Y %b %d %H:%M:%S")) + float(m.group(1)[15:])
    return None


def _until_end(run: Run, log: str) -> str:
    """The log's lines stamped before the ``end`` marker (what the monitors saw)."""
    end = parse_iso(run.marker("end")["time"])
    keep = []
    for line in log.splitlines():
        t = _log_time(line)
        if t is not None and t > end:
            break
        keep.append(line)
    return "\n".join(keep)




def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _timed(log: str, pattern: re.Pattern[str]) -> list[tuple[str, re.Match[str]]]:
    """(time as ISO, match) of every line of the log that matches."""
    out = []
    for line in log.splitlines():
        if (m := pattern.search(line)) and (t := _log_time(line)) is not None:
            out.append((_iso(t), m))
    return out


_SWAN_COLLISION = re.compile(r"detected CHILD_REKEY collision with CHILD_REKEY")
_SWAN_REAUTH = re.compile(r"reauthenticating IKE_SA")


def swan_facts(run: Run, p: SwanPair) -> None:
    """What charon logged up to the ``end`` marker, per side: the CHILD_SAs it installed
    (``child_sas``: time, name, unique id; the set-up included), the rekey collisions it
    detected (each makes one CHILD_SA too many), the IKE reauthentications (logged by the
    side that starts them; each makes a new CHILD_SA on both sides), and what that makes
    of rekeys (``rekeys``: see :func:`daemon_rekeys`)."""
    per_side: dict[str, Any] = {}
    logs = {side: _until_end(run, p.log(side)) for side in SIDES}
    reauths = max((_timed(logs[side], _SWAN_REAUTH) for side in SIDES), key=len)
    for side in SIDES:
        log = logs[side]
        # charon 5.9.8 logs a rekeyed CHILD_SA twice ("inbound CHILD_SA net{2} established",
        # then "outbound ..."): keep the first line of each unique id
        first: dict[tuple[str, str], str] = {}
        for when, m in _timed(log, _SWAN_ESTABLISHED):
            first.setdefault((m.group(1), m.group(2)), when)
        per_side[side] = _counted({
            "child_sa_log": [{"time": when, "name": name, "id": int(uid)} for (name, uid), when in first.items()],
            "collision_log": [when for when, _ in _timed(log, _SWAN_COLLISION)],
            "reauth_log": [when for when, _ in reauths],
        })  # fmt: skip
        run.daemon_log[side] = [ln for ln in log.splitlines() if _SWAN_NOTABLE.search(ln)][:400]
    run.expect["charon"] = per_side


def libre_facts(run: Run, p: LibrePair) -> None:
    """What pluto logged up to the ``end`` marker, per side: every Child SA it installed
    (``child_sas``: time and state number, the set-up included) and the rekeys that makes."""
    per_side: dict[str, Any] = {}
    for side in SIDES:
        log = _until_end(run, p.log(side))
        per_side[side] = _counted({
            "child_sa_log": [{"time": when, "name": "net", "id": int(m.group(1))} for when, m in _timed(log, _LIBRE_ESTABLISHED)],
            "collision_log": [],
            "reauth_log": [],
        })  # fmt: skip
        run.daemon_log[side] = [ln for ln in log.splitlines() if _LIBRE_NOTABLE.search(ln)][:400]
    run.expect["pluto"] = per_side


def _counted(logs: dict[str, Any]) -> dict[str, Any]:
    """A side's facts: the counts up to the ``end`` marker (``child_sas_established``,
    ``collisions``, ``reauths``, ``rekeys``) and the timed logs they come from."""
    return {
        "child_sas_established": len(logs["child_sa_log"]),
        "collisions": len(logs["collision_log"]),
        "reauths": len(logs["reauth_log"]),
        "rekeys": daemon_rekeys(logs),
        **logs,
    }


def daemon_rekeys(facts: dict[str, Any], until: str | None = None, since: str | None = None) -> int:
    """The real rekeys in a daemon's facts (optionally only those logged in [since, until)):
    every CHILD_SA after the first of its name, less one per collision and per
    reauthentication."""

    def inside(when: str) -> bool:
        return (until is None or when < until) and (since is None or when >= since)

    names: set[str] = set()
    n = 0
    for c in facts["child_sa_log"]:
        if c["name"] in names and inside(c["time"]):
            n += 1
        names.add(c["name"])
    return n - sum(map(inside, facts["collision_log"])) - sum(map(inside, facts["reauth_log"]))


# -- strongSwan ---------------------------------------------------------------


def _swan(run: Run, **kw: Any) -> contextlib.AbstractContextManager[SwanPair]:
    cfg = {"left_rekey": 10, "left_life": 16, "right_rekey": 20, "right_life": 26, **kw}
    run.config.update({"daemon": "strongswan 5.9.8 (charon)", **cfg})
    return swan_pair(initiate=False, **cfg)


def _initiate(run: Run, p: SwanPair | LibrePair) -> float:
    run.mark("initiate", side="left")
    p.initiate()
    run.mark("installed")
    return time.monotonic()


def strongswan_rekey(run: Run) -> None:
    """Time lifetimes, left rekeys every 10 s (right's 20 s timer never fires): >= 3 rekeys."""
    with _swan(run) as p, watching(run, p):
        t0 = _initiate(run, p)
        tr = p.send_traffic(count=10000, interval=0.2, duration=40)
        sleep_until(t0, 31.5)
        run.config["traffic"] = _summary(tr.stop())


def strongswan_dead_peer(run: Run) -> None:
    """Right's charon is SIGKILLed after the first rekey while traffic flows."""
    with _swan(run) as p, watching(run, p):
        t0 = _initiate(run, p)
        tr = p.send_traffic(count=10000, interval=0.1, duration=60)
        sleep_until(t0, 12.5)
        run.mark("kill", side="right", signal="SIGKILL")
        p.kill("right")
        sleep_until(t0, 41)
        run.config["traffic"] = _summary(tr.stop())


_BYTES = {
    "left_rekey": 0, "left_life": 0, "right_rekey": 0, "right_life": 0,
    "left_child": {"rekey_bytes": "20000", "life_bytes": "30000", "rand_bytes": "0", "rand_time": "0"},
    "right_child": {"rekey_bytes": "50000", "life_bytes": "60000", "rand_bytes": "0", "rand_time": "0"},
}  # fmt: skip


def strongswan_bytes_rekey(run: Run) -> None:
    """Byte lifetimes only (rekey_bytes 20000 / life_bytes 30000 on left, 50000/60000 on right,
    no time limits), 100-byte datagrams every 50 ms echoed back for 30 s: a rekey about every
    8 s."""
    with _swan(run, **_BYTES) as p, watching(run, p):
        t0 = _initiate(run, p)
        tr = p.send_traffic(count=100000, interval=0.05, duration=38)
        sleep_until(t0, 30)
        run.config["traffic"] = _summary(tr.stop())  # no traffic, no further rekey
        time.sleep(2)


def strongswan_bytes_dead_peer(run: Run) -> None:
    """Byte lifetimes; right's charon SIGKILLed after the first rekey while traffic flows."""
    with _swan(run, **_BYTES) as p, watching(run, p):
        t0 = _initiate(run, p)
        tr = p.send_traffic(count=100000, interval=0.05, duration=60)
        _wait_for(lambda: len(p.established("left")) >= 2, 30)
        sleep_until(time.monotonic(), 1.0)
        run.mark("kill", side="right", signal="SIGKILL")
        p.kill("right")
        sleep_until(t0, 40)
        run.config["traffic"] = _summary(tr.stop())


_DELAY = "tc -n {ns} qdisc add dev %s root netem delay 300ms"


def strongswan_collision(run: Run) -> None:
    """CHILD_SA rekey collisions (RFC 7296 2.8.1), three times: with 300 ms of delay each way
    on the link, ``swanctl --rekey --child net`` is run on both sides at the same moment, so
    both CREATE_CHILD_SA requests cross in flight.  (Waiting for both kernels to soft-expire
    together does not work reliably: the kernel's time limits have one-second granularity
    and the two sides install the CHILD_SA a round trip apart.)  Time lifetimes 60/70 s, so
    that no other rekey happens in the run."""
    with _swan(
        run, left_rekey=60, left_life=70, right_rekey=60, right_life=70,
        extra_left=[_DELAY % "xwl0"], extra_right=[_DELAY % "xwr0"],
    ) as p, watching(run, p):  # fmt: skip
        t0 = _initiate(run, p)
        tr = p.send_traffic(count=10000, interval=0.2, duration=40)
        for at in (5, 15, 25):
            sleep_until(t0, at)
            run.mark("rekey", side="both", how="swanctl --rekey --child net on both sides at once")
            threads = [threading.Thread(target=p.swanctl, args=(side, "--rekey", "--child", "net")) for side in SIDES]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        sleep_until(t0, 35)
        run.config["traffic"] = _summary(tr.stop())


def strongswan_ipv6(run: Run) -> None:
    """IPv6 outer and inner addresses, left rekeys every 10 s."""
    with _swan(run, ipv6=True) as p, watching(run, p):
        t0 = _initiate(run, p)
        tr = p.send_traffic(count=10000, interval=0.2, duration=30)
        sleep_until(t0, 22.5)
        run.config["traffic"] = _summary(tr.stop())


def strongswan_transport(run: Run) -> None:
    """Transport mode between the outer addresses, left rekeys every 10 s."""
    with _swan(run, mode="transport") as p, watching(run, p):
        t0 = _initiate(run, p)
        tr = p.send_traffic(count=10000, interval=0.2, duration=30, src=p.addr.left_outer, dst=p.addr.right_outer)
        sleep_until(t0, 22.5)
        run.config["traffic"] = _summary(tr.stop())


def strongswan_reauth(run: Run, make_before_break: bool = False) -> None:
    """IKE reauthentication every 10 s by left (reauth_time 10 s, CHILD_SA lifetimes longer
    than the run so that every new CHILD_SA comes from a reauthentication); charon's default
    break-before-make (the old IKE_SA and its CHILD_SAs are deleted first)."""
    with _swan(
        run, left_rekey=60, left_life=70, right_rekey=60, right_life=70,
        left_ike_options={"reauth_time": "10s", "rand_time": "0", "over_time": "5s"},
        charon_options={"make_before_break": "yes" if make_before_break else "no"},
    ) as p, watching(run, p):  # fmt: skip
        t0 = _initiate(run, p)
        tr = p.send_traffic(count=10000, interval=0.2, duration=40)
        sleep_until(t0, 34)
        run.config["traffic"] = _summary(tr.stop())


def strongswan_reauth_mbb(run: Run) -> None:
    """As strongswan-reauth with ``make_before_break = yes``: the new IKE_SA and CHILD_SA are
    set up before the old ones are deleted."""
    strongswan_reauth(run, make_before_break=True)


def strongswan_two_children(run: Run) -> None:
    """Two CHILD_SAs (net: 10.10.1.0/24-10.10.2.0/24, net2: 10.10.3.0/24-10.10.4.0/24) under one
    IKE_SA, both rekeyed by left every 10 s."""
    with _swan(run, second_child=True) as p, watching(run, p):
        t0 = _initiate(run, p)
        tr = p.send_traffic(count=10000, interval=0.2, duration=30)
        tr2 = p.send_traffic(count=10000, interval=0.2, duration=30, port=7001,
                             src=p.addr.left_inner2, dst=p.addr.right_inner2)  # fmt: skip
        sleep_until(t0, 23)
        run.config["traffic"] = _summary(tr.stop())
        run.config["traffic_" + CONN2] = _summary(tr2.stop())


def strongswan_giveup_before_hard(run: Run) -> None:
    """A wide soft->hard window (left rekey 10 s, life 60 s): right's charon is killed before
    the first rekey; left's charon retransmits the rekey for about 16 s and then deletes the
    CHILD_SA itself, long before the hard expiry."""
    with _swan(run, left_rekey=10, left_life=60, right_rekey=50, right_life=70) as p, watching(run, p):
        t0 = _initiate(run, p)
        tr = p.send_traffic(count=10000, interval=0.1, duration=60)
        sleep_until(t0, 4)
        run.mark("kill", side="right", signal="SIGKILL")
        p.kill("right")
        sleep_until(t0, 32)
        run.config["traffic"] = _summary(tr.stop())


def strongswan_terminate(run: Run) -> None:
    """A deliberate teardown 4 s after the first rekey: ``swanctl --terminate --ike net`` on
    left (4 s: half-way between rekeys, so that the rekey is settled and none is due)."""
    with _swan(run) as p, watching(run, p):
        _initiate(run, p)
        tr = p.send_traffic(count=10000, interval=0.2, duration=40)
        _wait_for(lambda: len(p.established("left")) >= 2, 30)
        time.sleep(4)
        run.mark("terminate", side="left", how="swanctl --terminate --ike net")
        p.terminate("left")
        run.mark("terminated")
        time.sleep(3)
        run.config["traffic"] = _summary(tr.stop())


def cutlink(run: Run) -> None:
    """strongSwan; right's veth set down after the first rekey while traffic flows: both charons
    live on and lose the peer."""
    with _swan(run) as p, watching(run, p):
        t0 = _initiate(run, p)
        tr = p.send_traffic(count=10000, interval=0.1, duration=60)
        sleep_until(t0, 12.5)
        run.mark("link_down", side="right", how="ip link set xwr0 down")
        p.cut_link("right")
        sleep_until(t0, 43)
        run.config["traffic"] = _summary(tr.stop())


# -- Libreswan ----------------------------------------------------------------


def _libre(run: Run, **kw: Any) -> contextlib.AbstractContextManager[LibrePair]:
    cfg = {"salifetime": 20, "rekeymargin": 10, "rekeyfuzz": 0, "retransmit_timeout": 10, **kw}
    run.config.update({"daemon": "libreswan 4.10 (pluto)", **cfg})
    return libre_pair(initiate=False, **cfg)


def libreswan_rekey(run: Run) -> None:
    """salifetime 20 s, rekeymargin 10 s, rekeyfuzz 0: a rekey every 10 s (>= 3 in the run)."""
    with _libre(run) as p, watching(run, p):
        t0 = _initiate(run, p)
        tr = p.send_traffic(count=10000, interval=0.2, duration=40)
        sleep_until(t0, 31.5)
        run.config["traffic"] = _summary(tr.stop())


def libreswan_dead_peer(run: Run) -> None:
    """Right's pluto SIGKILLed 2 s after the second rekey (so that one whole rekey interval,
    8 s here, has been seen) while traffic flows; left retransmits its next rekey for
    retransmit-timeout (8 s) and gives up; the run ends 3 s after left's SAs are gone."""
    with _libre(run, salifetime=16, rekeymargin=8, retransmit_timeout=8) as p, watching(run, p):
        _initiate(run, p)
        tr = p.send_traffic(count=10000, interval=0.1, duration=80)
        _wait_for(lambda: len(p.established("left")) >= 3, 40)
        time.sleep(2)
        run.mark("kill", side="right", signal="SIGKILL")
        p.kill("right")
        # until pluto gave up: no SA of the tunnel's reqid left (the larval states that the
        # ACQUIREs on its hold policy make have reqid 0)
        _wait_for(lambda: not [b for b in p.esp_states("left") if re.search(r"reqid 16389\b", b)], 45)
        time.sleep(3)
        run.config["traffic"] = _summary(tr.stop())


def libreswan_terminate(run: Run) -> None:
    """A deliberate teardown 4 s after the first rekey: ``whack --name net --terminate`` on
    left.  The traffic stops 1 s before: pluto leaves the out policy as a hold template, and a
    packet would make it bring the tunnel back up at once (a new IKE_SA and Child SA with the
    same reqid, within 0.1-1 s: see SEQUENCES.md)."""
    with _libre(run) as p, watching(run, p):
        _initiate(run, p)
        tr = p.send_traffic(count=10000, interval=0.2, duration=40)
        _wait_for(lambda: len(p.established("left")) >= 2, 30)
        time.sleep(3)
        run.config["traffic"] = _summary(tr.stop())
        time.sleep(1)
        run.mark("terminate", side="left", how="whack --name net --terminate")
        p.terminate("left")
        run.mark("terminated")
        time.sleep(3)


# -- manual keying ------------------------------------------------------------


def manual_rotation(run: Run) -> None:
    """``ip xfrm`` keying, then two Cilium-style rotations: first with the same reqid (new
    SPIs, out template switched to the new SPI, old SAs deleted 3 s later), then with a new
    reqid (out/in/fwd templates switched to reqid 2)."""
    run.config.update({"daemon": "none (ip xfrm)", "alg": "rfc4106(gcm(aes)) 128"})
    with manual_pair(setup=False) as p, watching(run, p, acquire=False):
        run.mark("setup", reqid=1, spis=["0x100", "0x101"])
        p.setup(reqid=1)
        tr = p.send_traffic(count=10000, interval=0.1, duration=30)
        time.sleep(3)
        run.mark("rotate_add", reqid=1, same_reqid=True)
        g = p.rotate()
        run.mark("rotated", reqid=g.reqid, spis=[hex(g.spi_lr), hex(g.spi_rl)])
        time.sleep(3)
        run.mark("rotate_remove_old")
        p.remove_old()
        time.sleep(3)
        run.mark("rotate_add", reqid=2, same_reqid=False)
        g = p.rotate(reqid=2)
        run.mark("rotated", reqid=g.reqid, spis=[hex(g.spi_lr), hex(g.spi_rl)])
        time.sleep(3)
        run.mark("rotate_remove_old")
        p.remove_old()
        time.sleep(3)
        run.config["traffic"] = _summary(tr.stop())
        run.keys |= set(p.keys())
    # the test's own account, in the daemons' shape: a CHILD_SA per reqid generation
    adds = [m for m in run.markers if m["what"] in ("setup", "rotate_add")]
    child_sas = [{"time": m["time"], "name": f"reqid {m['reqid']}", "id": i} for i, m in enumerate(adds)]
    run.expect["manual"] = {side: _counted({"child_sa_log": child_sas, "collision_log": [], "reauth_log": []}) for side in SIDES}
    run.expect["rotations"] = 2  # one to the same reqid (a rekey), one to a new reqid (a handover)


def manual_teardown(run: Run) -> None:
    """``ip xfrm`` keying, traffic, then the policies and SAs deleted (a deliberate teardown)."""
    run.config.update({"daemon": "none (ip xfrm)", "alg": "rfc4106(gcm(aes)) 128"})
    with manual_pair(setup=False) as p, watching(run, p, acquire=False):
        run.mark("setup", reqid=1)
        p.setup(reqid=1)
        tr = p.send_traffic(count=10000, interval=0.1, duration=30)
        time.sleep(4)
        run.mark("teardown", how="ip xfrm policy delete x3, ip xfrm state delete x2, each side")
        p.teardown()
        time.sleep(1)
        run.config["traffic"] = _summary(tr.stop())
        run.keys |= set(p.keys())
    setup = [{"time": run.marker("setup")["time"], "name": "reqid 1", "id": 0}]
    run.expect["manual"] = {side: _counted({"child_sa_log": setup, "collision_log": [], "reauth_log": []}) for side in SIDES}


# -- helpers ------------------------------------------------------------------


def _summary(t: dict[str, Any]) -> dict[str, Any]:
    """A sender's result without the per-reply times; wall times as ISO."""
    out = {k: v for k, v in t.items() if k not in ("reply_times", "errors")}
    for k in ("first_send_wall", "last_send_wall", "last_reply_wall"):
        if out.get(k):
            out[k] = datetime.fromtimestamp(out[k], UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    out["first_errors"] = t.get("errors", [])[:5]
    return out


def _wait_for(cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.2)


SCENARIOS: dict[str, Callable[[Run], None]] = {
    "strongswan-rekey": strongswan_rekey,
    "strongswan-dead-peer": strongswan_dead_peer,
    "strongswan-bytes-rekey": strongswan_bytes_rekey,
    "strongswan-bytes-dead-peer": strongswan_bytes_dead_peer,
    "strongswan-collision": strongswan_collision,
    "strongswan-ipv6": strongswan_ipv6,
    "strongswan-transport": strongswan_transport,
    "strongswan-reauth": strongswan_reauth,
    "strongswan-reauth-mbb": strongswan_reauth_mbb,
    "strongswan-two-children": strongswan_two_children,
    "strongswan-giveup-before-hard": strongswan_giveup_before_hard,
    "strongswan-terminate": strongswan_terminate,
    "libreswan-rekey": libreswan_rekey,
    "libreswan-dead-peer": libreswan_dead_peer,
    "libreswan-terminate": libreswan_terminate,
    "manual-rotation": manual_rotation,
    "manual-teardown": manual_teardown,
    "cutlink": cutlink,
}


def run_scenario(name: str, outdir: Path, monitor_args: list[str]) -> Run:
    """Run one scenario; its monitors' output lands in ``outdir``."""
    run = Run(name, outdir, monitor_args)
    try:
        SCENARIOS[name](run)
    finally:
        for m in run.monitors.values():
            if m.proc.poll() is None:
                m.stop()
    return run


if __name__ == "__main__":  # pragma: no cover - manual use: python scenarios.py NAME OUTDIR
    r = run_scenario(sys.argv[1], Path(sys.argv[2]), os.environ.get("XW_MONITOR_ARGS", "--no-rules").split())
    print(json.dumps(r.markers_doc(), indent=1))
