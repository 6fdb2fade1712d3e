"""`xfrmwatch record` on a kernel with full IPsec (UML guest): real ESP keys never reach the
file; an nlmon capture of the same session (tcpdump: pcap, dumpcap: pcapng) reads back to the
same notifications and the same initial state as the recording."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import msgspec
from support import Recording, assert_no_keys, need_tshark, sh, tshark

from xfrmwatch.capture import Capture, Notification
from xfrmwatch.netlink.decode import Decoder

K_AES = "6b1f0c93e2a84d57b0c6e1f29a3d7c48"
K_SHA = "2f9a6c1e8b3d7f05a4c2e6b9d1f3a8c70e5b2d9f4a6c8e1b3d5f7a9c0e2b4d61"
K_GCM = "a9e3c7f1b5d2086e4c1a7f3b9d5e2c80b4d6f8a1"
K_CHACHA = "e1c3a5f7b9d2046c8e0a2c4e6b8d1f3a5c7e9b0d2f4a6c8e1b3d5f7a9c0e2b4d6f8a1c3e"  # 256 + 32 bits
KEYS = (K_AES, K_SHA, K_GCM, K_CHACHA)
A, B = "192.0.2.1", "192.0.2.2"
CBC = f"enc 'cbc(aes)' 0x{K_AES} auth-trunc 'hmac(sha256)' 0x{K_SHA} 128"


def session(ns: str) -> None:
    """SAs with every kind of key, updated and deleted; policies; a flush."""
    sh(f"ip -n {ns} xfrm state add src {A} dst {B} proto esp spi 0x2001 reqid 1 mode tunnel {CBC}")
    sh(f"ip -n {ns} xfrm state add src {B} dst {A} proto esp spi 0x2002 reqid 1 mode tunnel "
       f"aead 'rfc4106(gcm(aes))' 0x{K_GCM} 128")  # fmt: skip
    sh(f"ip -n {ns} xfrm state add src {A} dst {B} proto esp spi 0x2003 reqid 2 mode tunnel "
       f"aead 'rfc7539esp(chacha20,poly1305)' 0x{K_CHACHA} 128")  # fmt: skip
    sh(f"ip -n {ns} xfrm state update src {A} dst {B} proto esp spi 0x2001 reqid 1 mode tunnel {CBC} "
       "limit time-soft 100 limit time-hard 200")  # fmt: skip
    sh(f"ip -n {ns} xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out "
       f"tmpl src {A} dst {B} proto esp reqid 1 mode tunnel")  # fmt: skip
    sh(f"ip -n {ns} xfrm state delete src {A} dst {B} proto esp spi 0x2003")
    sh(f"ip -n {ns} xfrm policy flush")
    sh(f"ip -n {ns} xfrm state flush")


def key_bytes_absent(data: bytes) -> None:
    for k in KEYS:
        raw = bytes.fromhex(k)
        for piece in (raw, raw[:8], raw[-8:]):
            assert piece not in data, "key bytes in the recording"


def test_real_esp_keys_never_recorded(netns: str, tmp_path: Path) -> None:
    """Keys in the initial dump (an SA present before recording) and in NEWSA/UPDSA/DELSA:
    none of their bytes are in the file, nor in anything tshark shows of it."""
    need_tshark()
    sh(f"ip -n {netns} xfrm state add src {B} dst {A} proto esp spi 0x2000 reqid 9 mode tunnel {CBC}")
    path = tmp_path / "k.pcap"
    with Recording(path, "--netns", netns) as r:
        session(netns)
        time.sleep(0.5)
        assert r.stop() == 0
    data = path.read_bytes()
    key_bytes_absent(data)
    shown = tshark(path, "-V", "-x")
    assert_no_keys(shown, KEYS)
    cap = Capture.load(path)
    assert cap.initial is not None and cap.initial.sa is not None
    dec = Decoder()
    (initial,) = [e.sa for d in cap.initial.sa for e in dec.decode(d, 0.0)]  # type: ignore[attr-defined]
    assert (initial.spi, initial.enc.name, initial.enc.key_bits, initial.auth.trunc_bits) == (
        "0x00002000", "cbc(aes)", 128, 128,
    )  # fmt: skip
    got = [e for i in cap.items if isinstance(i, Notification) for e in dec.decode(i.data, 0.0)]
    assert [type(e).__name__ for e in got] == [
        "NewSA", "NewSA", "NewSA", "UpdSA", "NewPolicy", "DelSA", "FlushPolicy", "FlushSA",
    ]
    assert [e.sa.aead.name for e in got[1:3]] == ["rfc4106(gcm(aes))", "rfc7539esp(chacha20,poly1305)"]  # type: ignore[attr-defined]


def comparable(cap: Capture) -> list[bytes]:
    """The notifications as events, without receipt times."""
    dec = Decoder()
    out = []
    for item in cap.items:
        if isinstance(item, Notification):
            for e in dec.decode(item.data, 0.0, 0.0):
                out.append(msgspec.json.encode(e))
    return out


def test_nlmon_captures_read_like_the_recording(netns: str, tmp_path: Path) -> None:
    """tcpdump (pcap) and dumpcap (pcapng) on an nlmon device, with two listeners (so every
    broadcast is captured twice), read back to the notifications the recorder wrote, and to its
    initial state from the `ip xfrm state/policy` dumps taken at the start."""
    need_tshark()
    sh(f"ip -n {netns} link add nlmon0 type nlmon && ip -n {netns} link set nlmon0 up")
    sh(f"ip -n {netns} xfrm state add src {B} dst {A} proto esp spi 0x2000 reqid 9 mode tunnel {CBC}")
    sh(f"ip -n {netns} xfrm policy add src 10.9.0.0/24 dst 10.8.0.0/24 dir in "
       f"tmpl src {B} dst {A} proto esp reqid 9 mode tunnel")  # fmt: skip
    pcap, pcapng, rec = tmp_path / "t.pcap", tmp_path / "d.pcapng", tmp_path / "r.pcap"
    caps = [
        subprocess.Popen(["ip", "netns", "exec", netns, "tcpdump", "-Z", "root", "-U", "-s", "0", "-i", "nlmon0",
                          "-w", str(pcap)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
        subprocess.Popen(["ip", "netns", "exec", netns, "dumpcap", "-q", "-i", "nlmon0", "-w", str(pcapng)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
    ]  # fmt: skip
    listener = None
    try:
        deadline = time.monotonic() + 30
        while not (pcap.exists() and pcapng.exists()):
            assert time.monotonic() < deadline, "tcpdump/dumpcap did not start"
            time.sleep(0.1)
        time.sleep(1.0)
        sh(f"ip -n {netns} addr show >/dev/null; ip -n {netns} xfrm state >/dev/null; "
           f"ip -n {netns} xfrm policy >/dev/null")  # fmt: skip
        listener = subprocess.Popen(["ip", "-n", netns, "xfrm", "monitor"], stdout=subprocess.DEVNULL)
        with Recording(rec, "--netns", netns) as r:
            time.sleep(0.3)
            session(netns)
            time.sleep(1.0)
            assert r.stop() == 0
    finally:
        if listener is not None:
            listener.terminate()
            listener.wait(timeout=10)
        for p in caps:
            p.terminate()
            p.wait(timeout=20)
    recorded = Capture.load(rec)
    want = comparable(recorded)
    assert len(want) == 8
    for path in (pcap, pcapng):
        cap = Capture.load(path)
        assert comparable(cap) == want, path.name
        assert cap.stats.duplicates >= len(want), f"{path.name}: {cap.stats}"  # two listeners, two copies
        assert cap.initial is not None and cap.initial.sa is not None and cap.initial.policy is not None
        assert recorded.initial is not None and recorded.initial.sa is not None and recorded.initial.policy is not None
        dec = Decoder()
        for mine, theirs in ((recorded.initial.sa, cap.initial.sa), (recorded.initial.policy, cap.initial.policy)):
            a = [msgspec.json.encode(getattr(e, "sa", None) or getattr(e, "policy", None)) for d in mine for e in dec.decode(d, 0.0, 0.0)]
            b = [msgspec.json.encode(getattr(e, "sa", None) or getattr(e, "policy", None)) for d in theirs for e in dec.decode(d, 0.0, 0.0)]
            assert a == b and len(a) == 1
        assert cap.initial.addresses == recorded.initial.addresses
