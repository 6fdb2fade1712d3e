"""A consumer of `monitor`'s stdout that stops reading (like `| (sleep 20; cat)`).

The policy (README, "A slow reader of stdout"): lines wait in a bounded buffer written by a
worker thread, so the event loop never blocks on stdout (signals, the mirror and the rules
carry on); when that buffer is full the pipeline waits, and if the consumer stays behind
long enough the kernel drops events, which is reported as an `overrun` and repaired by a
`resync`.  Nothing is lost silently.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from support import ROOT, XFRMWATCH, normalized, run_cli, sh, validate_event


def burst(tmp: Path, n: int, dst: str) -> Path:
    path = tmp / f"burst-{dst}"
    path.write_text(
        "".join(f"xfrm policy add src 10.{1 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32 dst {dst}/32 dir out\n" for i in range(n))
    )
    return path


class Stalled:
    """`monitor --format json` whose stdout nobody reads until :meth:`read_all`."""

    def __init__(self, tmp: Path, netns: str, *args: str) -> None:
        self.err, self.state = tmp / "stderr", tmp / "state.json"
        self.proc = subprocess.Popen(
            [*XFRMWATCH, "monitor", "--netns", netns, "--format", "json", "--state-file", str(self.state), *args],
            stdout=subprocess.PIPE, stderr=open(self.err, "wb"), cwd=ROOT,
        )  # fmt: skip
        self.chunks: list[bytes] = []
        self._reader: threading.Thread | None = None
        deadline = time.monotonic() + 60
        while "monitoring" not in self.err.read_text():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.err.read_text()
            time.sleep(0.05)

    def read_all(self) -> None:
        """Start reading stdout, as fast as it comes, until it closes."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()

        def pump() -> None:
            while chunk := os.read(fd, 1 << 20):
                self.chunks.append(chunk)

        self._reader = threading.Thread(target=pump, daemon=True)
        self._reader.start()

    def lines(self) -> list[bytes]:
        return b"".join(self.chunks).splitlines()

    def wait_quiet(self, seconds: float = 3.0, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        size, since = -1, time.monotonic()
        while time.monotonic() - since < seconds:
            assert time.monotonic() < deadline, "output kept growing"
            now = sum(map(len, self.chunks))
            if now != size:
                size, since = now, time.monotonic()
            time.sleep(0.1)

    def state_file(self) -> dict[str, Any]:
        if self.state.exists():
            self.state.unlink()
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while not self.state.exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.err.read_text()
            time.sleep(0.05)
        return dict(json.loads(self.state.read_text()))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise
        return self.proc.returncode


def kernel_policies(netns: str) -> dict[str, Any]:
    out = run_cli("policy", "list", "--netns", netns, "--format", "json", timeout=120)
    assert 0 == out.returncode, out.stderr
    return {"sa": [], "policy": [json.loads(line) for line in out.stdout.splitlines()]}


def test_a_pause_within_the_buffers_loses_nothing(netns: str, tmp_path: Path) -> None:
    """5,000 events while stdout is not read for 3 s: all delivered once it is, no overrun."""
    m = Stalled(tmp_path, netns)
    try:
        sh(f"ip -n {netns} -batch {burst(tmp_path, 5000, '10.200.0.1')}")
        time.sleep(3)
        m.read_all()
        m.wait_quiet()
        lines = m.lines()
        assert 5000 == sum(line.startswith(b'{"type":"newpolicy"') for line in lines)
        assert not any(line.startswith(b'{"type":"overrun"') for line in lines)
    finally:
        assert 0 == m.stop()


def test_a_long_stall_is_reported_and_repaired(netns: str, tmp_path: Path) -> None:
    """With small buffers, 30,000 events while stdout is not read: the monitor says stdout is
    stalled, signals still work (SIGUSR1 writes the state file), and once the consumer reads
    again the output holds an overrun and then the resync; the mirror equals the kernel."""
    m = Stalled(tmp_path, netns, "--out-buffer", "1", "--rcvbuf", "65536")
    try:
        sh(f"ip -n {netns} -batch {burst(tmp_path, 30_000, '10.200.0.1')}")
        deadline = time.monotonic() + 30
        while "stdout is not being read" not in m.err.read_text():
            assert time.monotonic() < deadline, m.err.read_text()
            time.sleep(0.05)
        stalled = m.state_file()  # handled while stdout is stalled
        assert m.proc.poll() is None
        assert len(stalled["policy"]) <= 30_000
        m.read_all()
        deadline = time.monotonic() + 120
        while not any(line.startswith(b'{"type":"resync"') for line in m.lines()):
            assert time.monotonic() < deadline, m.err.read_text()[-2000:]
            time.sleep(0.2)
        m.wait_quiet()
        events = [json.loads(line) for line in m.lines() if line.startswith((b'{"type":"overrun"', b'{"type":"resync"'))]
        for e in events:
            validate_event(e)
        kinds = [e["type"] for e in events]
        assert "overrun" == kinds[0] and "resync" == kinds[-1]
        assert 30_000 == events[-1]["policies"]
        assert "stdout is read again" in m.err.read_text()
        state = m.state_file()
        assert state["synced"] is True
        assert normalized(kernel_policies(netns)) == normalized(state)
    finally:
        assert 0 == m.stop()


def test_sigterm_while_stdout_is_stalled(netns: str, tmp_path: Path) -> None:
    """SIGTERM while nobody reads stdout: exit 0 within a few seconds, state file written."""
    m = Stalled(tmp_path, netns, "--out-buffer", "1")
    sh(f"ip -n {netns} -batch {burst(tmp_path, 20_000, '10.200.0.1')}")
    deadline = time.monotonic() + 30
    while "stdout is not being read" not in m.err.read_text():
        assert time.monotonic() < deadline, m.err.read_text()
        time.sleep(0.05)
    t0 = time.monotonic()
    m.proc.send_signal(signal.SIGTERM)
    assert 0 == m.proc.wait(timeout=20)
    assert time.monotonic() - t0 < 10
    assert json.loads(m.state.read_text())["netns"] == netns
