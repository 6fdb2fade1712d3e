"""`xfrmwatch monitor` against the host kernel, driven with `ip xfrm` in a fresh netns.

Each test configures the kernel with known values and checks every decoded
field against them (never against the decoder's own output).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from support import XFRMWATCH, Monitor, run_cli, sh


def _policy_events(m: Monitor, t: str, **kw: object) -> list[dict]:
    return m.of_type(t, **kw)  # type: ignore[arg-type]


def test_policy_new_update_delete_fields(netns: str) -> None:
    """NEWPOLICY, UPDPOLICY and DELPOLICY carry the selector, template, mark, if_id we set."""
    with Monitor("--netns", netns) as m:
        sh(
            f"ip -n {netns} xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/16 proto udp sport 4500 dport 500 "
            "dir out priority 1234 mark 0x2a mask 0xff if_id 77 "
            "tmpl src 192.0.2.1 dst 198.51.100.2 proto esp reqid 41 mode tunnel"
        )
        new = m.of_type("newpolicy")[0]
        p = new["policy"]
        assert new["netns"] == netns
        assert new["nlmsg_pid"] == 0  # `ip` sends port id 0
        assert p["dir"] == "out" and p["action"] == "allow" and p["priority"] == 1234
        assert p["ptype"] == "main"
        sel = p["sel"]
        assert (sel["src"], sel["dst"], sel["family"]) == ("10.1.0.0/24", "10.2.0.0/16", "inet")
        assert (sel["proto"], sel["sport"], sel["dport"]) == ("udp", 4500, 500)
        assert sel["sport_mask"] == 0xFFFF and sel["dport_mask"] == 0xFFFF
        assert p["mark"] == {"value": 0x2A, "mask": 0xFF}
        assert p["if_id"] == 77
        (t,) = p["tmpl"]
        assert (t["src"], t["dst"], t["proto"], t["mode"], t["reqid"]) == (
            "192.0.2.1", "198.51.100.2", "esp", "tunnel", 41,
        )  # fmt: skip
        index = p["index"]
        assert index % 8 == 1  # the kernel encodes dir "out" (1) in the low bits of the index

        sh(
            f"ip -n {netns} xfrm policy update src 10.1.0.0/24 dst 10.2.0.0/16 proto udp sport 4500 dport 500 "
            "dir out priority 99 mark 0x2a mask 0xff if_id 77 "
            "tmpl src 192.0.2.1 dst 198.51.100.3 proto esp reqid 42 mode tunnel"
        )
        upd = m.of_type("updpolicy")[0]["policy"]
        assert upd["index"] == index and upd["priority"] == 99
        assert upd["tmpl"][0]["dst"] == "198.51.100.3" and upd["tmpl"][0]["reqid"] == 42

        sh(
            f"ip -n {netns} xfrm policy delete src 10.1.0.0/24 dst 10.2.0.0/16 proto udp sport 4500 dport 500 "
            "dir out mark 0x2a mask 0xff if_id 77"
        )
        d = m.of_type("delpolicy")[0]
        assert d["policy_id"]["dir"] == "out"
        assert d["policy_id"]["sel"]["src"] == "10.1.0.0/24"
        assert d["policy"]["index"] == index and d["policy"]["priority"] == 99


def test_ipv6_block_policy_and_flush(netns: str) -> None:
    """An IPv6 block policy, and FLUSHPOLICY, decode with family and action."""
    with Monitor("--netns", netns) as m:
        sh(f"ip -n {netns} xfrm policy add src 2001:db8:1::/48 dst 2001:db8:2::/64 dir in action block")
        p = m.of_type("newpolicy")[0]["policy"]
        assert p["sel"]["family"] == "inet6"
        assert (p["sel"]["src"], p["sel"]["dst"]) == ("2001:db8:1::/48", "2001:db8:2::/64")
        assert (p["dir"], p["action"], p["tmpl"]) == ("in", "block", [])
        sh(f"ip -n {netns} xfrm policy flush")
        assert m.of_type("flushpolicy")[0]["ptype"] == "main"


def test_polexpire_soft_then_hard(netns: str) -> None:
    """Policy lifetimes give POLEXPIRE soft, then hard (and the policy is gone)."""
    with Monitor("--netns", netns) as m:
        sh(
            f"ip -n {netns} xfrm policy add src 10.3.0.0/24 dst 10.4.0.0/24 dir fwd "
            "limit time-soft 1 limit time-hard 2"
        )
        soft = m.wait_for(lambda e: e["type"] == "polexpire" and not e["hard"], timeout=10)[0]
        assert soft["policy"]["lifetime"]["soft_add_seconds"] == 1
        assert soft["policy"]["lifetime"]["hard_add_seconds"] == 2
        assert soft["nlmsg_pid"] == 0
        hard = m.wait_for(lambda e: e["type"] == "polexpire" and e["hard"], timeout=10)[0]
        assert hard["policy"]["sel"]["src"] == "10.3.0.0/24"
    assert sh(f"ip -n {netns} xfrm policy list").stdout.strip() == ""


def test_default_policy_change(netns: str) -> None:
    """A SETDEFAULT is announced as a default_policy event naming each direction."""
    with Monitor("--netns", netns) as m:
        sh(f"ip -n {netns} xfrm policy setdefault in block fwd block out accept")
        e = m.of_type("default_policy")[0]
        assert (e["in"], e["fwd"], e["out"]) == ("block", "block", "accept")
        sh(f"ip -n {netns} xfrm policy setdefault in accept fwd accept out accept")
        e = m.of_type("default_policy", count=2)[1]
        assert (e["in"], e["fwd"], e["out"]) == ("accept", "accept", "accept")


def _veth_pair(netns: str) -> str:
    """A second namespace joined by veth, with a route out of it: traffic really leaves."""
    peer = netns + "p"
    sh(f"ip netns add {peer}")
    sh(f"ip link add xwa netns {netns} type veth peer name xwb netns {peer}")
    sh(f"ip -n {netns} addr add 192.0.2.1/24 dev xwa && ip -n {netns} link set xwa up")
    sh(f"ip -n {peer} addr add 192.0.2.2/24 dev xwb && ip -n {peer} link set xwb up")
    return peer


def _send_udp(netns: str, dst: str, port: int) -> None:
    sh(
        f"ip netns exec {netns} python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.setblocking(False)\n"
        f"try: s.sendto(b'x', ('{dst}', {port}))\nexcept OSError: pass\"",
        check=False,
    )


def test_acquire_from_real_traffic(netns: str) -> None:
    """Traffic matching an ESP policy with no SA gives an ACQUIRE, when the group is joined."""
    peer = _veth_pair(netns)
    try:
        sh(
            f"ip -n {netns} xfrm policy add src 192.0.2.1/32 dst 192.0.2.2/32 proto udp dport 9999 dir out "
            "tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 5 mode transport"
        )
        with Monitor("--netns", netns, "--acquire") as m:
            _send_udp(netns, "192.0.2.2", 9999)
            a = m.of_type("acquire")[0]
            assert a["nlmsg_pid"] == 0
            assert (a["acquire"]["src"], a["acquire"]["dst"], a["acquire"]["proto"]) == (
                "192.0.2.1", "192.0.2.2", "esp",
            )  # fmt: skip
            assert a["sel"]["dst"] == "192.0.2.2/32" and a["sel"]["proto"] == "udp"
            assert a["sel"]["dport"] == 9999
            assert a["policy"]["dir"] == "out" and a["policy"]["tmpl"][0]["reqid"] == 5
        # the larval state it created is visible in the SAD
        assert "proto esp" in sh(f"ip -n {netns} xfrm state").stdout
    finally:
        sh(f"ip netns del {peer}", check=False)


def test_acquire_not_joined_without_key_manager(netns: str) -> None:
    """With no key manager on ACQUIRE, monitor says so once and does not join the group."""
    with Monitor("--netns", netns) as m:
        m.stop()
    err = m.stderr_raw.decode()
    assert err.count("not joining the ACQUIRE group") == 1
    assert "groups=[2, 3, 4, 6, 7, 8]" in err


def test_allocspi_larval_hard_expire(netns: str) -> None:
    """ALLOCSPI makes a larval SA that hard-expires after net.core.xfrm_acq_expires."""
    sh(f"ip netns exec {netns} sysctl -qw net.core.xfrm_acq_expires=1")
    with Monitor("--netns", netns) as m:
        sh(
            f"ip -n {netns} xfrm state allocspi src 192.0.2.10 dst 192.0.2.20 proto esp "
            "mode tunnel reqid 9 min 0x4000 max 0x4000"
        )
        e = m.wait_for(lambda e: e["type"] == "expire" and e["hard"], timeout=15)[0]
        sa = e["sa"]
        assert (sa["src"], sa["dst"], sa["proto"], sa["spi"]) == (
            "192.0.2.10", "192.0.2.20", "esp", "0x00004000",
        )  # fmt: skip
        assert sa["reqid"] == 9 and sa["mode"] == "tunnel"
        assert e["nlmsg_pid"] == 0


def test_larval_delete_and_flush(netns: str) -> None:
    """DELSA and FLUSHSA of larval states."""
    with Monitor("--netns", netns) as m:
        sh(f"ip -n {netns} xfrm state allocspi src 192.0.2.10 dst 192.0.2.20 proto esp min 0x5000 max 0x5000")
        sh(f"ip -n {netns} xfrm state delete src 192.0.2.10 dst 192.0.2.20 proto esp spi 0x5000")
        d = m.of_type("delsa")[0]
        assert (d["id"]["dst"], d["id"]["spi"], d["id"]["proto"]) == ("192.0.2.20", "0x00005000", "esp")
        assert d["sa"]["src"] == "192.0.2.10"
        sh(f"ip -n {netns} xfrm state allocspi src 192.0.2.10 dst 192.0.2.21 proto esp min 0x5001 max 0x5001")
        sh(f"ip -n {netns} xfrm state flush proto esp")
        assert m.of_type("flushsa")[0]["proto"] == "esp"
        # an empty SAD is not flushed (no event): give it something to flush
        sh(f"ip -n {netns} xfrm state allocspi src 192.0.2.10 dst 192.0.2.22 proto esp min 0x5002 max 0x5002")
        sh(f"ip -n {netns} xfrm state flush")
        assert m.of_type("flushsa", count=2)[1]["proto"] == "any"


def test_filters_on_real_events(netns: str) -> None:
    """--type, --dir and --dst keep only matching events (and the count proves it)."""
    with Monitor("--netns", netns, "--type", "newpolicy", "--dir", "in", "--dst", "10.20.0.0/16") as m:
        for d in ("out", "in", "fwd"):
            sh(f"ip -n {netns} xfrm policy add src 10.10.0.0/24 dst 10.20.1.0/24 dir {d}")
        sh(f"ip -n {netns} xfrm policy add src 10.10.0.0/24 dst 10.30.1.0/24 dir in")
        sh(f"ip -n {netns} xfrm policy delete src 10.10.0.0/24 dst 10.20.1.0/24 dir in")
        sh(f"ip -n {netns} xfrm policy add src 10.10.0.0/24 dst 10.20.2.0/24 dir in")
        got = m.of_type("newpolicy", count=2)
        m.drain(0.5)
    assert [e["policy"]["sel"]["dst"] for e in m.events] == ["10.20.1.0/24", "10.20.2.0/24"]
    assert all(e["policy"]["dir"] == "in" for e in got)


def test_overrun_is_reported(netns: str, tmp_path) -> None:
    """A receive-buffer overrun (monitor stopped during a burst) is an `overrun` event."""
    batch = "\n".join(
        f"xfrm policy add src 10.50.{i // 250}.{i % 250}/32 dst 10.60.0.1/32 dir out" for i in range(3000)
    )
    with Monitor("--netns", netns, "--rcvbuf", "4096") as m:
        m.proc.send_signal(signal.SIGSTOP)
        (tmp_path / "batch").write_text(batch + "\n")
        sh(f"ip -n {netns} -batch {tmp_path / 'batch'}")
        m.proc.send_signal(signal.SIGCONT)
        o = m.of_type("overrun", timeout=20)[0]
        assert "ENOBUFS" in o["detail"]
        assert o["netns"] == netns
    # fewer policy events than changes: the loss was real, and it was reported
    assert sum(e["type"] == "newpolicy" for e in m.events) < 3000


def test_policy_list_matches_ip(netns: str) -> None:
    """`policy list --format json` agrees with `ip -s xfrm policy` on the same namespace."""
    sh(
        f"ip -n {netns} xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out priority 10 "
        "tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 3 mode tunnel"
    )
    sh(f"ip -n {netns} xfrm policy add src 10.2.0.0/24 dst 10.1.0.0/24 dir in priority 20 mark 7")
    sh(f"ip -n {netns} xfrm policy add src 2001:db8::/64 dst 2001:db8:1::/64 dir fwd action block")
    out = run_cli("policy", "list", "--netns", netns, "--format", "json")
    assert out.returncode == 0, out.stderr
    import json

    ours = [json.loads(line) for line in out.stdout.splitlines()]
    text = sh(f"ip -s -n {netns} xfrm policy").stdout
    blocks = [b for b in re.split(r"^src ", text, flags=re.M) if b.strip()]
    assert len(ours) == len(blocks) == 3
    by_index = {p["index"]: p for p in ours}
    for b in blocks:
        words = b.split()
        idx = int(words[words.index("index") + 1])
        p = by_index[idx]
        assert p["sel"]["src"] == words[0]
        assert p["sel"]["dst"] == words[words.index("dst") + 1]
        assert p["dir"] == words[words.index("dir") + 1]
        assert p["priority"] == int(words[words.index("priority") + 1])
        assert p["action"] == (words[words.index("action") + 1] if "action" in words else "allow")
        if "reqid" in words:
            assert p["tmpl"][0]["reqid"] == int(words[words.index("reqid") + 1].split("(")[0])
        if "mark" in words:
            assert p["mark"]["value"] == int(words[words.index("mark") + 1].split("/")[0], 16)


def test_info_and_dump(netns: str) -> None:
    """`info` counts what we configured and lists xfrm_stat; `dump` has both tables."""
    import json

    sh(f"ip -n {netns} xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out")
    sh(f"ip -n {netns} xfrm policy add src 10.2.0.0/24 dst 10.1.0.0/24 dir in")
    sh(f"ip -n {netns} xfrm state allocspi src 192.0.2.1 dst 192.0.2.2 proto esp min 0x100 max 0x100")
    info = json.loads(run_cli("info", "--netns", netns, "--format", "json").stdout)
    assert info["spd"]["counts"]["out"] == 1 and info["spd"]["counts"]["in"] == 1
    assert info["sad"]["count"] == 1
    assert info["default_policy"] == {"in": "accept", "fwd": "accept", "out": "accept"}
    names = {line.split()[0] for line in open("/proc/net/xfrm_stat")}
    assert names and names <= set(info["xfrm_stat"])
    dump = json.loads(run_cli("dump", "--netns", netns, "--format", "json").stdout)
    assert len(dump["policy"]) == 2 and [s["spi"] for s in dump["sa"]] == ["0x00000100"]


def test_user_errors_are_one_line(netns: str) -> None:
    """Mistakes get one line and a distinct exit code, never a traceback."""
    cases = [
        (("monitor", "--netns", "no-such-ns-xw"), 5, "unknown network namespace"),
        (("state", "list", "--netns", "/nonexistent/ns"), 5, "unknown network namespace"),
        (("monitor", "--netns", netns, "--dst", "10.0.0.0/99"), 2, "--dst"),
        (("state", "get", "--netns", netns, "--dst", "192.0.2.1", "--spi", "0x77"), 6, "no such"),
        (("policy", "get", "--netns", netns, "--dir", "sideways", "--index", "1"), 2, "--dir"),
        (("monitor", "--netns", netns, "--dev", "nosuchdev0"), 2, "--dev"),
    ]
    for args, code, text in cases:
        p = run_cli(*args)
        assert p.returncode == code, (args, p.returncode, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], (args, p.stderr)
        assert "Traceback" not in p.stderr


def test_missing_capability(netns: str) -> None:
    """Without CAP_NET_ADMIN: exit 3 and a line naming the capability."""
    for args in (("monitor",), ("state", "list"), ("info",)):
        # root, but with CAP_NET_ADMIN out of the bounding set (so never effective)
        p = subprocess.run(
            ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", *XFRMWATCH, *args],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert p.returncode == 3, (args, p.stderr)
        assert "CAP_NET_ADMIN" in p.stderr.strip().splitlines()[-1]
        assert "Traceback" not in p.stderr


def test_nonkernel_datagrams_are_dropped(netns: str) -> None:
    """A datagram from a user-space port id never becomes an event."""
    with Monitor("--netns", netns) as m:
        # A user-space sender cannot multicast to XFRM groups, but can unicast to
        # the monitor's port id: find it and send a forged NEWPOLICY.
        from xfrmwatch.netlink.proc import xfrm_listeners

        lines = sh(f"ip netns exec {netns} cat /proc/net/netlink").stdout
        ports = [li.portid for li in xfrm_listeners(lines) if li.groups]
        assert ports
        forged = bytes.fromhex("b8000000130000000000000000000000") + bytes(168)
        sh(
            f"ip netns exec {netns} python3 -c \"import socket; s=socket.socket(16, 3, 6); s.bind((0,0)); "
            f"[s.sendto(bytes.fromhex('{forged.hex()}'), (p, 0)) for p in {ports}]\""
        )
        sh(f"ip -n {netns} xfrm policy add src 10.77.0.0/24 dst 10.78.0.0/24 dir in")
        m.of_type("newpolicy")
        m.drain(0.3)
    assert [e["policy"]["sel"]["src"] for e in m.events if e["type"] == "newpolicy"] == ["10.77.0.0/24"]
    assert not [e for e in m.events if e["type"] == "malformed"]


_ = (socket, time, pytest)


def test_migrate(netns: str) -> None:
    """A MIGRATE request against a tunnel policy is announced with old/new endpoints and KMADDRESS."""
    from pathlib import Path

    sh(
        f"ip -n {netns} xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out "
        "tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 7 mode tunnel"
    )
    script = Path(__file__).with_name("send_migrate.py")
    with Monitor("--netns", netns) as m:
        sh(
            f"ip netns exec {netns} python3 {script} 10.1.0.0/24 10.2.0.0/24 out "
            "192.0.2.1 192.0.2.2 192.0.2.1 203.0.113.9 7 192.0.2.1 203.0.113.9"
        )
        e = m.of_type("migrate")[0]
    assert e["policy_id"]["dir"] == "out"
    assert (e["policy_id"]["sel"]["src"], e["policy_id"]["sel"]["dst"]) == ("10.1.0.0/24", "10.2.0.0/24")
    (mig,) = e["migrate"]
    assert (mig["proto"], mig["mode"], mig["reqid"]) == ("esp", "tunnel", 7)
    assert (mig["old_src"], mig["old_dst"]) == ("192.0.2.1", "192.0.2.2")
    assert (mig["new_src"], mig["new_dst"]) == ("192.0.2.1", "203.0.113.9")
    assert e["kmaddress"] == {"family": "inet", "local": "192.0.2.1", "remote": "203.0.113.9"}
    # and the kernel really moved the template
    assert "dst 203.0.113.9" in sh(f"ip -n {netns} xfrm policy").stdout


def test_acquire_joined_when_a_key_manager_appears_and_left_when_it_goes(netns: str) -> None:
    """acquire auto: a listener on ACQUIRE that appears later is followed, both ways."""
    km_code = (
        "import socket,time; s=socket.socket(16, 3, 6); s.bind((0, 0)); s.setsockopt(270, 1, 1); time.sleep(60)"
    )
    with Monitor("--netns", netns, "--km-check", "0.3") as m:
        km = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", km_code])
        try:
            deadline = time.monotonic() + 10
            while b"now listens on ACQUIRE: joined it" not in m.stderr_raw and time.monotonic() < deadline:
                m.drain(0.2)
                m.stderr_raw += _read_available(m)
            assert b"joined it" in m.stderr_raw
        finally:
            km.kill()
            km.wait()
        deadline = time.monotonic() + 10
        while b"left it" not in m.stderr_raw and time.monotonic() < deadline:
            m.drain(0.2)
            m.stderr_raw += _read_available(m)
        assert b"no key manager listens on ACQUIRE any more: left it" in m.stderr_raw


def _read_available(m: Monitor) -> bytes:
    import os
    import select

    assert m.proc.stderr is not None
    r, _, _ = select.select([m.proc.stderr], [], [], 0)
    return os.read(m.proc.stderr.fileno(), 65536) if r else b""


def _xfrm_listener_groups(netns: str) -> list[int]:
    """Group masks of the XFRM netlink sockets in the namespace (/proc/net/netlink)."""
    rows = sh(f"ip netns exec {netns} cat /proc/net/netlink").stdout.splitlines()[1:]
    return [int(c[3], 16) for c in (r.split() for r in rows) if c[1] == "6" and int(c[3], 16)]


def _netns_state(netns: str) -> dict[str, object]:
    """The namespace record of an audit, from its findings (a fresh namespace's default
    policy accepts, so there is always one about it)."""
    out = run_cli("audit", "--netns", netns, "--format", "json").stdout.splitlines()
    return next(e for a in map(json.loads, out) for e in a["events"] if e["type"] == "netns_state")


def test_a_passive_listener_is_not_a_key_manager(netns: str) -> None:
    """`ip xfrm monitor` listens on every group, ACQUIRE included, but it is no key manager:
    monitor does not join ACQUIRE for it, and the audit says no key manager listens; a
    listener on ACQUIRE and EXPIRE only (as an IKE daemon joins) is one."""
    passive = subprocess.Popen(["ip", "-n", netns, "xfrm", "monitor"], stdout=subprocess.DEVNULL)
    km_code = (
        "import socket,time; s=socket.socket(16, 3, 6); s.bind((0, 0)); "
        "s.setsockopt(270, 1, 1); s.setsockopt(270, 1, 2); print('ready', flush=True); time.sleep(30)"
    )
    try:
        deadline = time.monotonic() + 5  # until `ip` has joined its groups
        while not _xfrm_listener_groups(netns) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _xfrm_listener_groups(netns), "ip xfrm monitor did not start"
        with Monitor("--netns", netns) as m:
            m.stop()
        assert m.stderr_raw.decode().count("not joining the ACQUIRE group") == 1
        state = _netns_state(netns)
        assert (False, []) == (state["key_manager"], state["key_manager_groups"])
        km = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", km_code], stdout=subprocess.PIPE)
        try:
            assert km.stdout is not None and km.stdout.readline() == b"ready\n"
            state = _netns_state(netns)
            assert (True, ["acquire", "expire"]) == (state["key_manager"], state["key_manager_groups"])
        finally:
            km.kill()
            km.wait()
    finally:
        passive.kill()
        passive.wait()
