"""`xfrmwatch record` against the host kernel: the pcap file tshark reads, the initial dump,
overruns with their re-dump, process names, --count to standard output."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from support import ROOT, XFRMWATCH, Recording, named_change, need_tshark, sh, tshark

from xfrmwatch.capture import Capture, KeyManager, Loss, Notification, ProcessName
from xfrmwatch.netlink.decode import Decoder

TMPL = "tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 5 mode tunnel"


def flat(lines: list[str]) -> list[str]:
    return [name for line in lines for name in line.split(",") if name]


def test_session_recorded_and_named_by_tshark(netns: str, tmp_path: Path) -> None:
    """A scripted session: tshark reads the file, finds nlmon's netlink header and family, and
    (with contrib/wireshark/xfrm.lua) names every message in order, initial dump first."""
    need_tshark()
    sh(f"ip -n {netns} xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out {TMPL}")
    sh(f"ip -n {netns} xfrm state allocspi src 192.0.2.1 dst 192.0.2.2 proto esp min 0x3000 max 0x3000")
    path = tmp_path / "s.pcap"
    with Recording(path, "--netns", netns) as r:
        sh(f"ip -n {netns} xfrm policy add src 10.3.0.0/24 dst 10.4.0.0/24 dir in {TMPL}")
        sh(f"ip -n {netns} xfrm policy update src 10.3.0.0/24 dst 10.4.0.0/24 dir in priority 5 {TMPL}")
        sh(f"ip -n {netns} xfrm policy setdefault in block fwd accept out accept")
        sh(f"ip -n {netns} xfrm policy setdefault in accept fwd accept out accept")
        sh(f"ip -n {netns} xfrm state delete src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x3000")
        sh(f"ip -n {netns} xfrm policy delete src 10.3.0.0/24 dst 10.4.0.0/24 dir in")
        sh(f"ip -n {netns} xfrm policy flush")
        rc = r.stop()
    assert rc == 0, r.stderr.decode()
    assert b"recorded" in r.stderr and b"messages=7" in r.stderr

    assert flat(tshark(path, "-T", "fields", "-e", "xfrm.msg")) == [
        "GETSA request", "NEWSA (dump)", "DONE",
        "GETPOLICY request", "NEWPOLICY (dump)", "DONE",
        "GETDEFAULT request", "GETDEFAULT", "NOOP (key-manager=0)",
        "NEWPOLICY", "UPDPOLICY", "GETDEFAULT", "GETDEFAULT", "DELSA", "DELPOLICY", "FLUSHPOLICY",
        "NOOP (end of recording)",
    ]  # fmt: skip
    # tshark's own dissector, without our names: link type, families, message types
    lines = tshark(path, "-T", "fields", "-E", "separator=;", "-e", "frame.protocols", "-e", "netlink.family",
                   "-e", "netlink.hdr_type", "-e", "netlink-route.nltype", lua=False)  # fmt: skip
    rows = [line.split(";") for line in lines]
    assert all(r[0].startswith("netlink") for r in rows)
    assert rows[0][0] == "netlink:netlink-route" and rows[0][3] == "22"  # RTM_GETADDR request
    assert set(rows[1][3].split(",")) == {"20"}  # RTM_NEWADDR
    xfrm_rows = [r for r in rows if int(r[1], 0) == 6]
    assert flat([r[2] for r in xfrm_rows]) == [
        "0x0012", "0x0010", "0x0003", "0x0015", "0x0013", "0x0003", "0x0028", "0x0028", "0x0001",
        "0x0013", "0x0019", "0x0028", "0x0028", "0x0011", "0x0014", "0x001d", "0x0001",
    ]  # fmt: skip
    assert len(rows) == len(xfrm_rows) + 3  # the address dump: request, RTM_NEWADDRs, DONE

    cap = Capture.load(path)
    assert cap.initial is not None and cap.initial.sa is not None and cap.initial.policy is not None
    dec = Decoder()
    sas = [e for d in cap.initial.sa for e in dec.decode(d, 0.0)]
    pols = [e for d in cap.initial.policy for e in dec.decode(d, 0.0)]
    assert [e.sa.spi for e in sas] == ["0x00003000"]  # type: ignore[attr-defined]
    assert [e.policy.sel.src for e in pols] == ["10.1.0.0/24"]  # type: ignore[attr-defined]
    assert cap.initial.addresses is not None and "127.0.0.1" in cap.initial.addresses
    assert [type(i) for i in cap.items] == [KeyManager] + [Notification] * 7
    assert cap.items[0] == KeyManager(cap.items[0].time, False)  # ip xfrm is no key manager
    assert cap.stats.notifications == 7 and cap.resyncs == []


def test_overrun_recorded_with_its_dump(netns: str, tmp_path: Path) -> None:
    """An overrun (recorder stopped during a burst, smallest buffer) is recorded as a marker
    that tshark names, followed by a dump of the whole SPD as it then was."""
    need_tshark()
    batch = "\n".join(
        f"xfrm policy add src 10.50.{i // 250}.{i % 250}/32 dst 10.60.0.1/32 dir out" for i in range(3000)
    )
    (tmp_path / "batch").write_text(batch + "\n")
    path = tmp_path / "o.pcap"
    with Recording(path, "--netns", netns, "--rcvbuf", "4096") as r:
        r.proc.send_signal(signal.SIGSTOP)
        sh(f"ip -n {netns} -batch {tmp_path / 'batch'}")
        r.proc.send_signal(signal.SIGCONT)
        sh(f"ip -n {netns} xfrm policy add src 10.70.0.0/24 dst 10.80.0.0/24 dir in")
        cap = _wait_for(path, lambda c: c.resyncs and any(
            isinstance(i, Notification) and b"\x0a\x46\x00\x00" in i.data for i in c.items))  # fmt: skip
        assert r.stop() == 0
    cap = Capture.load(path)
    losses = [i for i in cap.items if isinstance(i, Loss)]
    assert losses and len(cap.resyncs) == len(losses) == cap.stats.losses
    assert sum(isinstance(i, Notification) for i in cap.items) < 3000 + 1
    dec = Decoder()
    last = cap.resyncs[-1]
    assert last.policy is not None
    assert len([e for d in last.policy for e in dec.decode(d, 0.0)]) >= 3000
    assert "OVERRUN (messages lost)" in flat(tshark(path, "-T", "fields", "-e", "xfrm.msg"))


def _wait_for(path: Path, pred: object, timeout: float = 90) -> Capture:
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            cap = Capture.load(path)
            if pred(cap):  # type: ignore[operator]
                return cap
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("the recording never showed what was expected")
        time.sleep(1.0)


def test_process_name_recorded(netns: str, tmp_path: Path) -> None:
    """A change requested by a named process (its PID as nlmsg_pid) is preceded by a
    process-name marker; `ip` (pid 0) gets none."""
    path = tmp_path / "n.pcap"
    with Recording(path, "--netns", netns) as r:
        named_change(netns, "xw-keymgr", "10.5.0.0/24", "10.6.0.0/24")
        sh(f"ip -n {netns} xfrm policy add src 10.7.0.0/24 dst 10.8.0.0/24 dir out")
        r.stop()
    cap = Capture.load(path)
    names = [i for i in cap.items if isinstance(i, ProcessName)]
    assert [n.name for n in names] == ["xw-keymgr"]
    first_note = cap.items.index(names[0])
    note = cap.items[first_note + 1]
    assert isinstance(note, Notification)
    (e,) = Decoder().decode(note.data, 0.0)
    assert e.nlmsg_pid == names[0].pid and e.policy.sel.src == "10.5.0.0/24"  # type: ignore[attr-defined]


def test_count_to_stdout(netns: str, tmp_path: Path) -> None:
    """`record - --count 2` writes to standard output and stops by itself after 2 messages."""
    need_tshark()
    out = tmp_path / "c.pcap"
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            [*XFRMWATCH, "record", "-", "--netns", netns, "--count", "2"], stdout=f, stderr=subprocess.PIPE, cwd=ROOT
        )
        try:
            import time

            deadline = time.monotonic() + 20
            while out.stat().st_size == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            for i in range(3):
                sh(f"ip -n {netns} xfrm policy add src 10.9.{i}.0/24 dst 10.10.0.0/24 dir out")
            _, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert flat(tshark(out, "-T", "fields", "-e", "xfrm.msg"))[-3:] == ["NEWPOLICY", "NEWPOLICY", "NOOP (end of recording)"]


def test_bad_arguments_are_one_line(tmp_path: Path) -> None:
    """Unwritable file, terminal output, bad --count: one line, exit 2, no traceback."""
    for args in (["/nonexistent-dir/x.pcap"], [str(tmp_path / "x.pcap"), "--count", "-1"],
                 [str(tmp_path / "x.pcap"), "--duration", "0"]):  # fmt: skip
        p = subprocess.run([*XFRMWATCH, "record", *args], capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert p.returncode == 2, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr

