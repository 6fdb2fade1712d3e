"""`xfrmwatch demo --live` in the UML guest (a kernel with ESP): the scripted tunnel life is
watched and explained, its random keys never shown, and its namespaces are gone at the end,
also when stopped with SIGTERM or SIGINT."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time

from support import ROOT, XFRMWATCH, assert_no_keys, sh


def demo_namespaces() -> list[str]:
    return [n.split()[0] for n in sh("ip netns list").stdout.splitlines() if n.startswith("xw-demo-")]


class Demo:
    """`demo --live` as a subprocess, its output read as it comes, the keys of its SAs
    collected from `ip xfrm state` while it runs."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([*XFRMWATCH, "demo", "--live", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=ROOT)  # fmt: skip
        self.out = b""
        self.keys: set[str] = set()

    def read(self, seconds: float) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.proc.poll() is None:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.3)
            if r:
                self.out += os.read(self.proc.stdout.fileno(), 65536)
            for ns in demo_namespaces():
                state = sh(f"ip -n {ns} xfrm state", check=False).stdout
                self.keys |= set(re.findall(r"\b0x([0-9a-f]{40})\b", state))

    def until(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.out:
            assert time.monotonic() < deadline and self.proc.poll() is None, self.out.decode()[-2000:]
            self.read(0.5)

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        self.read(timeout)
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, (self.out + out).decode(), err.decode()


def test_live_demo_story_keys_and_cleanup() -> None:
    """Rekeys every 6 s: set-up, three rekeys, the peer's death (overdue, down), its policies
    removed; every step explained; none of the keys seen in the namespaces is printed."""
    d = Demo("--rekey", "6")
    rc, out, err = d.finish()
    assert rc == 0, err + out[-2000:]
    said = [line.strip()[2:] for line in out.splitlines() if line.startswith("  > ")]
    assert said[0].startswith("Tunnel up") and sum(s.startswith("Rekey ") for s in said) == 3
    assert any("should have been replaced by now" in s for s in said)
    assert any(s.startswith("Tunnel down after a failed rekey") for s in said)
    assert said[-1].startswith("The tunnel's policies are removed")
    assert "[critical] Tunnel down without a replacement" in out
    assert len(d.keys) >= 4, d.keys
    assert_no_keys([out, err], d.keys)
    assert demo_namespaces() == []
    assert out.splitlines()[-1] == "== The demo namespaces are deleted."


def test_live_demo_stopped_by_signals() -> None:
    """SIGTERM ends it with status 0, SIGINT (Ctrl-C) with 130; the namespaces go either way."""
    for sig, code in ((signal.SIGTERM, 0), (signal.SIGINT, 130)):
        d = Demo("--rekey", "3")
        d.until("Tunnel up")
        assert len(demo_namespaces()) == 2
        d.proc.send_signal(sig)
        rc, out, err = d.finish(timeout=30)
        assert rc == code, (sig, err)
        assert demo_namespaces() == [], (sig, out[-500:])
        assert "Traceback" not in err
