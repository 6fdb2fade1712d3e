"""On the full IPsec kernel: the mirror follows real SA changes, and weak SAs raise alerts."""

from __future__ import annotations

from pathlib import Path

from support import Monitor, assert_no_keys, kernel_dump, mirror_state, normalized, sh

K_DES3 = "6b3c2f1e9a8d7c6b5a49382716f5e4d3c2b1a09f8e7d6c5b"  # 192-bit 3DES key
K_MD5 = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"
K_AES = "3f1e9a7c5b2d48e6a0c4f8b2d6e1937a"
K_SHA = "8c2e4a6f1b3d5c7e9a0b2c4d6e8f1a3c5e7b9d0f2a4c6e8b1d3f5a7c9e0b2d4f"
A, B = "192.0.2.1", "192.0.2.2"


def test_mirror_follows_real_sa_changes(netns: str, tmp_path: Path) -> None:
    """NEWSA, UPDSA, DELSA, hard EXPIRE, FLUSHSA of ESP SAs: mirror == dump when quiet."""
    alg = f"enc 'cbc(aes)' 0x{K_AES} auth-trunc 'hmac(sha256)' 0x{K_SHA} 128"
    sh(f"ip -n {netns} xfrm state add src {A} dst {B} proto esp spi 0x10 reqid 1 mode tunnel {alg}")
    state = tmp_path / "state.json"
    with Monitor("--netns", netns, "--state-file", str(state)) as m:
        for spi in (0x11, 0x12, 0x13):
            sh(f"ip -n {netns} xfrm state add src {A} dst {B} proto esp spi {spi:#x} reqid 1 mode tunnel {alg} "
               f"limit time-hard {2 if spi == 0x13 else 600}")  # fmt: skip
        sh(f"ip -n {netns} xfrm state update src {A} dst {B} proto esp spi 0x11 reqid 1 mode tunnel {alg} limit time-hard 900")
        sh(f"ip -n {netns} xfrm state delete src {A} dst {B} proto esp spi 0x12")
        sh(f"ip -n {netns} xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out "
           f"tmpl src {A} dst {B} proto esp reqid 1 mode tunnel")  # fmt: skip
        m.wait_for(lambda e: e["type"] == "expire" and e["hard"], timeout=20)
        got = mirror_state(m, state)
        assert normalized(kernel_dump(netns)) == normalized(got)
        assert {"0x00000010", "0x00000011"} == {s["spi"] for s in got["sa"]}
        sh(f"ip -n {netns} xfrm state flush proto esp")
        m.of_type("flushsa")
        assert normalized(kernel_dump(netns)) == normalized(mirror_state(m, state))
    assert_no_keys(m.all_output(), [K_AES, K_SHA])


def test_weak_algorithms_raise_alerts(netns: str) -> None:
    """A 3DES+MD5 SA raises the weak-encryption and weak-integrity alerts; AES+SHA256 none."""
    with Monitor("--netns", netns) as m:
        sh(f"ip -n {netns} xfrm state add src {A} dst {B} proto esp spi 0x20 reqid 2 mode tunnel "
           f"enc 'cbc(des3_ede)' 0x{K_DES3} auth-trunc 'hmac(md5)' 0x{K_MD5} 96 limit time-hard 600")  # fmt: skip
        sh(f"ip -n {netns} xfrm state add src {A} dst {B} proto esp spi 0x21 reqid 3 mode tunnel "
           f"enc 'cbc(aes)' 0x{K_AES} auth-trunc 'hmac(sha256)' 0x{K_SHA} 128 limit time-hard 600")  # fmt: skip
        m.of_type("newsa", count=2)
        m.wait_for(lambda e: e["type"] == "alert", count=2)
        m.drain(0.5)
    alerts = [e for e in m.events if e["type"] == "alert"]
    assert {"Weak or null encryption algorithm on an SA", "Weak or null integrity algorithm on an SA"} == {
        a["rule"]["title"] for a in alerts
    }
    assert {"0x00000020"} == {a["events"][0]["sa"]["spi"] for a in alerts}
    assert "cbc(des3_ede)" == alerts[0]["events"][0]["sa"]["enc"]["name"]
    assert_no_keys(m.all_output(), [K_DES3, K_MD5, K_AES, K_SHA])
