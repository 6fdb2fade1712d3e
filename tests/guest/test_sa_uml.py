"""SA events on a kernel with full IPsec (UML guest): algorithms, lifetimes, NEWAE.

Every test configures SAs with known keys and then searches everything
xfrmwatch wrote (stdout and stderr, of monitor and of the snapshot commands)
for those keys in hex and base64.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from support import Monitor, assert_no_keys, run_cli, sh

K_AES128 = "3f1e9a7c5b2d48e6a0c4f8b2d6e1937a"
K_SHA256 = "8c2e4a6f1b3d5c7e9a0b2c4d6e8f1a3c5e7b9d0f2a4c6e8b1d3f5a7c9e0b2d4f"
K_GCM = "c4a1e7f3b9d5028c6e4a1f7b3d9c5e80a2b4c6d8"  # 128-bit key + 32-bit salt
K_CHACHA = "5d9b1f3a7c2e4b6d8f0a1c3e5b7d9f2a4c6e8b0d1f3a5c7e9b2d4f6a8c0e1b3d57a9c1e3"  # 256 + 32
K_AH = "a7c3e9b1d5f2048c6a8e0b2d4f6c8e1a3b5d7f9c0e2a4b6d8f1c3e5a7b9d0f2e"
ALL_KEYS = (K_AES128, K_SHA256, K_GCM, K_CHACHA, K_AH)

A, B = "192.0.2.1", "192.0.2.2"


def _state_add(ns: str, args: str) -> None:
    sh(f"ip -n {ns} xfrm state add {args}")


ESP_CASES = [
    pytest.param(
        f"enc 'cbc(aes)' 0x{K_AES128} auth-trunc 'hmac(sha256)' 0x{K_SHA256} 128",
        {"enc": {"name": "cbc(aes)", "key_bits": 128}, "auth": {"name": "hmac(sha256)", "key_bits": 256, "trunc_bits": 128}},
        id="cbc-aes-hmac-sha256",
    ),
    pytest.param(
        f"aead 'rfc4106(gcm(aes))' 0x{K_GCM} 128",
        {"aead": {"name": "rfc4106(gcm(aes))", "key_bits": 160, "icv_bits": 128}},
        id="rfc4106-gcm-aes",
    ),
    pytest.param(
        f"aead 'rfc7539esp(chacha20,poly1305)' 0x{K_CHACHA} 128",
        {"aead": {"name": "rfc7539esp(chacha20,poly1305)", "key_bits": 288, "icv_bits": 128}},
        id="rfc7539esp-chacha20-poly1305",
    ),
]  # fmt: skip


@pytest.mark.parametrize("alg_args,expected", ESP_CASES)
def test_esp_newsa_updsa_delsa(netns: str, alg_args: str, expected: dict) -> None:
    """NEWSA/UPDSA/DELSA for ESP decode addresses, SPI, reqid, mode and algorithms, no keys."""
    with Monitor("--netns", netns) as m:
        _state_add(
            netns,
            f"src {A} dst {B} proto esp spi 0x1001 reqid 17 mode tunnel replay-window 32 "
            f"mark 0x10 mask 0xf0 if_id 9 {alg_args} "
            "limit time-soft 1000 limit time-hard 2000 sel src 10.1.0.0/24 dst 10.2.0.0/24",
        )
        sa = m.of_type("newsa")[0]["sa"]
        assert (sa["src"], sa["dst"], sa["proto"], sa["spi"], sa["reqid"], sa["mode"]) == (
            A, B, "esp", "0x00001001", 17, "tunnel",
        )  # fmt: skip
        assert sa["family"] == "inet" and sa["replay_window"] == 32
        assert sa["mark"] == {"value": 0x10, "mask": 0xF0} and sa["if_id"] == 9
        assert (sa["sel"]["src"], sa["sel"]["dst"]) == ("10.1.0.0/24", "10.2.0.0/24")
        assert sa["lifetime"]["soft_add_seconds"] == 1000 and sa["lifetime"]["hard_add_seconds"] == 2000
        assert sa["lifetime"]["hard_bytes"] is None
        for k, v in expected.items():
            assert sa[k] == v
        for k in {"aead", "enc", "auth"} - set(expected):
            assert k not in sa

        sh(
            f"ip -n {netns} xfrm state update src {A} dst {B} proto esp spi 0x1001 reqid 17 mode tunnel "
            f"replay-window 32 mark 0x10 mask 0xf0 if_id 9 {alg_args} "
            "limit time-soft 900 limit time-hard 2000 sel src 10.1.0.0/24 dst 10.2.0.0/24"
        )
        upd = m.of_type("updsa")[0]["sa"]
        assert upd["spi"] == "0x00001001" and upd["lifetime"]["soft_add_seconds"] == 900

        sh(f"ip -n {netns} xfrm state delete src {A} dst {B} proto esp spi 0x1001 mark 0x10 mask 0xf0")
        d = m.of_type("delsa")[0]
        assert (d["id"]["dst"], d["id"]["spi"], d["id"]["proto"]) == (B, "0x00001001", "esp")
        assert d["sa"]["reqid"] == 17
        for k, v in expected.items():
            assert d["sa"][k] == v
    assert_no_keys(m.all_output(), ALL_KEYS)


def test_ah_ipcomp_and_ipv6(netns: str) -> None:
    """AH, IPComp and an IPv6 ESP SA with ESN and UDP encapsulation."""
    with Monitor("--netns", netns) as m:
        _state_add(
            netns,
            f"src {A} dst {B} proto ah spi 0x2001 reqid 3 mode transport auth-trunc 'hmac(sha256)' 0x{K_AH} 128",
        )
        _state_add(netns, f"src {A} dst {B} proto comp spi 0x2002 reqid 3 mode transport comp deflate")
        _state_add(
            netns,
            f"src 2001:db8::1 dst 2001:db8::2 proto esp spi 0x2003 reqid 4 mode transport "
            f"flag esn replay-window 128 aead 'rfc4106(gcm(aes))' 0x{K_GCM} 128 "
            "encap espinudp 4500 4500 0.0.0.0",
        )
        sas = {e["sa"]["spi"]: e["sa"] for e in m.of_type("newsa", count=3)}
    ah, comp, v6 = sas["0x00002001"], sas["0x00002002"], sas["0x00002003"]
    assert ah["proto"] == "ah" and ah["mode"] == "transport"
    assert ah["auth"] == {"name": "hmac(sha256)", "key_bits": 256, "trunc_bits": 128}
    assert comp["proto"] == "comp" and comp["comp"]["name"] == "deflate"
    assert v6["family"] == "inet6" and (v6["src"], v6["dst"]) == ("2001:db8::1", "2001:db8::2")
    assert "esn" in v6["flags"] and v6["replay_esn"]["replay_window"] == 128
    assert v6["encap"] == {"type": "espinudp", "sport": 4500, "dport": 4500, "oa": "0.0.0.0"}
    listed = run_cli("state", "list", "--netns", netns, "--format", "json")
    assert_no_keys([*m.all_output(), listed.stdout, listed.stderr], ALL_KEYS)


def test_expire_soft_and_hard_by_time(netns: str) -> None:
    """Time limits give a soft EXPIRE, then a hard one; the hard one deleted the SA (no DELSA)."""
    with Monitor("--netns", netns) as m:
        _state_add(
            netns,
            f"src {A} dst {B} proto esp spi 0x3001 reqid 5 mode transport "
            f"aead 'rfc4106(gcm(aes))' 0x{K_GCM} 128 limit time-soft 1 limit time-hard 3",
        )
        soft = m.wait_for(lambda e: e["type"] == "expire" and not e["hard"], timeout=10)[0]
        hard = m.wait_for(lambda e: e["type"] == "expire" and e["hard"], timeout=10)[0]
        m.drain(0.5)
    assert soft["sa"]["spi"] == hard["sa"]["spi"] == "0x00003001"
    assert soft["nlmsg_pid"] == 0 and hard["nlmsg_pid"] == 0
    assert hard["mono"] - soft["mono"] >= 1.0
    assert not [e for e in m.events if e["type"] == "delsa"]
    assert sh(f"ip -n {netns} xfrm state").stdout.strip() == ""
    assert_no_keys(m.all_output(), ALL_KEYS)


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    """Two namespaces joined by veth, with transport-mode ESP both ways for UDP."""
    from support import fresh_netns

    with fresh_netns("xwa") as a, fresh_netns("xwb") as b:
        sh(f"ip link add xva netns {a} type veth peer name xvb netns {b}")
        sh(f"ip -n {a} addr add {A}/24 dev xva && ip -n {a} link set xva up")
        sh(f"ip -n {b} addr add {B}/24 dev xvb && ip -n {b} link set xvb up")
        for ns, (src, dst) in ((a, (A, B)), (b, (B, A))):
            sh(f"ip -n {ns} xfrm policy add src {src} dst {dst} proto udp dir out "
               f"tmpl src {src} dst {dst} proto esp reqid 1 mode transport")  # fmt: skip
            sh(f"ip -n {ns} xfrm policy add src {dst} dst {src} proto udp dir in "
               f"tmpl src {dst} dst {src} proto esp reqid 1 mode transport")  # fmt: skip
        yield a, b


def _sa_pair(a: str, b: str, spi_ab: int, limits: str = "", replay: str = "") -> None:
    """The A->B SA in both namespaces (outbound in A, inbound in B), and B->A likewise."""
    alg = f"aead 'rfc4106(gcm(aes))' 0x{K_GCM} 128"
    for ns in (a, b):
        lim = limits if ns == a else ""
        sh(
            f"ip -n {ns} xfrm state add src {A} dst {B} proto esp spi {spi_ab:#x} reqid 1 mode transport {replay} {alg} {lim}"
        )
        sh(
            f"ip -n {ns} xfrm state add src {B} dst {A} proto esp spi {spi_ab + 1:#x} reqid 1 mode transport {replay} {alg}"
        )


def _send(ns: str, dst: str, count: int, size: int = 100) -> None:
    sh(
        f'ip netns exec {ns} python3 -c "import socket,time\n'
        f"s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for i in range({count}):\n"
        f"    try: s.sendto(b'x'*{size}, ('{dst}', 7000))\n"
        f"    except OSError: pass\n"
        f'    time.sleep(0.02)"'
    )


def test_expire_by_packets(pair: tuple[str, str]) -> None:
    """Packet limits expire with real ESP traffic between two namespaces."""
    a, b = pair
    _sa_pair(a, b, 0x4000, limits="limit packet-soft 3 limit packet-hard 6")
    with Monitor("--netns", a) as m:
        _send(a, B, 8)
        soft = m.wait_for(lambda e: e["type"] == "expire" and not e["hard"])[0]
        hard = m.wait_for(lambda e: e["type"] == "expire" and e["hard"])[0]
    assert soft["sa"]["spi"] == hard["sa"]["spi"] == "0x00004000"
    assert soft["sa"]["lifetime"]["soft_packets"] == 3 and soft["sa"]["lifetime"]["hard_packets"] == 6
    assert soft["sa"]["current"]["packets"] >= 3
    assert hard["sa"]["current"]["packets"] >= 6
    # the peer really received them through ESP: its inbound SA counted them
    stat = sh(f"ip -s -n {b} xfrm state get src {A} dst {B} proto esp spi 0x4000").stdout
    got = re.search(r"(\d+)\(bytes\), (\d+)\(packets\)", stat)
    assert got and int(got[2]) >= 6
    assert_no_keys(m.all_output(), ALL_KEYS)


def test_expire_by_bytes(pair: tuple[str, str]) -> None:
    """Byte limits expire with real ESP traffic."""
    a, b = pair
    _sa_pair(a, b, 0x5000, limits="limit byte-soft 400 limit byte-hard 900")
    with Monitor("--netns", a) as m:
        _send(a, B, 12, size=100)
        soft = m.wait_for(lambda e: e["type"] == "expire" and not e["hard"])[0]
        hard = m.wait_for(lambda e: e["type"] == "expire" and e["hard"])[0]
    assert soft["sa"]["lifetime"]["soft_bytes"] == 400 and soft["sa"]["lifetime"]["hard_bytes"] == 900
    assert soft["sa"]["current"]["bytes"] >= 400
    assert hard["sa"]["current"]["bytes"] >= 900
    assert_no_keys(m.all_output(), ALL_KEYS)


def test_newae_with_aevents(pair: tuple[str, str]) -> None:
    """With --aevents, busy SAs produce NEWAE with replay counters; without it, none."""
    a, b = pair
    _sa_pair(a, b, 0x6000, replay="replay-window 32")
    sh(f"ip netns exec {b} sysctl -qw net.core.xfrm_aevent_rseqth=2")
    with Monitor("--netns", b) as quiet:
        _send(a, B, 5)
        quiet.drain(0.5)
    assert not [e for e in quiet.events if e["type"] == "newae"]
    with Monitor("--netns", b, "--aevents") as m:
        _send(a, B, 20)
        ae = m.wait_for(lambda e: e["type"] == "newae" and e["ae"]["spi"] == "0x00006000", timeout=20)[0][
            "ae"
        ]
    assert (ae["src"], ae["dst"], ae["proto"], ae["reqid"]) == (A, B, "esp", 1)
    assert ae["replay"]["seq"] > 0
    assert_no_keys([*m.all_output(), *quiet.all_output()], ALL_KEYS)


def test_state_list_and_get_match_ip(pair: tuple[str, str]) -> None:
    """`state list --format json` agrees with `ip -s xfrm state`; `state get --stats` has counters."""
    a, b = pair
    _sa_pair(a, b, 0x7000, replay="replay-window 32")
    _send(a, B, 4)
    listed = run_cli("state", "list", "--netns", b, "--format", "json")
    assert listed.returncode == 0, listed.stderr
    ours = {s["spi"]: s for s in map(json.loads, listed.stdout.splitlines())}
    text = sh(f"ip -s -n {b} xfrm state").stdout
    blocks = [blk for blk in re.split(r"^src ", text, flags=re.M) if blk.strip()]
    assert len(blocks) == len(ours) == 2
    for blk in blocks:
        w = blk.split()
        spi = "0x%08x" % int(w[w.index("spi") + 1].split("(")[0], 16)
        s = ours[spi]
        assert (s["src"], s["dst"]) == (w[0], w[w.index("dst") + 1])
        assert s["proto"] == w[w.index("proto") + 1]
        assert s["reqid"] == int(w[w.index("reqid") + 1].split("(")[0])
        assert s["mode"] == w[w.index("mode") + 1]
        m = re.search(r"(\d+)\(bytes\), (\d+)\(packets\)", blk)
        assert m and (s["current"]["bytes"], s["current"]["packets"]) == (int(m[1]), int(m[2]))
    got = run_cli(
        "state",
        "get",
        "--netns",
        b,
        "--dst",
        B,
        "--spi",
        "0x7000",
        "--proto",
        "esp",
        "--stats",
        "--format",
        "json",
    )
    assert got.returncode == 0, got.stderr
    obj = json.loads(got.stdout)
    assert obj["sa"]["spi"] == "0x00007000"
    assert obj["ae"]["replay"]["seq"] == ours["0x00007000"]["current"]["packets"] == 4
    assert_no_keys([listed.stdout, listed.stderr, got.stdout, got.stderr], ALL_KEYS)
