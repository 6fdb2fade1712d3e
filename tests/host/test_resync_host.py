"""Overruns at scale: the resync leaves the mirror equal to the kernel, and says so only then.

The reader is stopped (SIGSTOP) through bursts of 100k and 200k policies, or runs with a
small receive buffer through a burst that overruns it again and again; afterwards the state
file (SIGUSR1) must equal `policy list`.  SIGUSR1 and SIGTERM must work in every phase,
the initial dump and a resync included.  Output goes to a file and is counted, not parsed
event by event (hundreds of thousands of lines); the few events the assertions rest on are
validated against the schema.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, XFRMWATCH, normalized, run_cli, sh, validate_event


def batch_file(tmp: Path, n: int, dst: str = "10.200.0.1") -> Path:
    path = tmp / f"burst-{n}"
    path.write_text(
        "".join(
            f"xfrm policy add src 10.{1 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32 dst {dst}/32 dir out\n"
            for i in range(n)
        )
    )
    return path


class FileMonitor:
    """``monitor --format json --state-file`` with its output in files (it may be stopped)."""

    def __init__(self, tmp: Path, netns: str, *args: str) -> None:
        self.out, self.err, self.state = tmp / "events", tmp / "stderr", tmp / "state.json"
        self.proc = subprocess.Popen(
            [*XFRMWATCH, "monitor", "--netns", netns, "--format", "json", "--state-file", str(self.state), *args],
            stdout=open(self.out, "wb"), stderr=open(self.err, "wb"), cwd=ROOT,
        )  # fmt: skip

    def wait_stderr(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.err.read_text():
            assert self.proc.poll() is None, f"monitor exited {self.proc.returncode}: {self.err.read_text()}"
            assert time.monotonic() < deadline, f"no {text!r} in: {self.err.read_text()[-3000:]}"
            time.sleep(0.05)

    def count(self, t: str) -> int:
        return self.out.read_bytes().count(f'"type":"{t}"'.encode())

    def events(self, t: str) -> list[dict[str, Any]]:
        marker = f'{{"type":"{t}"'.encode()
        found = [json.loads(line) for line in self.out.read_bytes().splitlines() if line.startswith(marker)]
        for e in found:
            validate_event(e)
        return found

    def wait_quiet(self, seconds: float = 3.0, timeout: float = 180) -> None:
        """Until the output has not grown for ``seconds``."""
        deadline = time.monotonic() + timeout
        size, since = -1, time.monotonic()
        while time.monotonic() - since < seconds:
            assert time.monotonic() < deadline, "output kept growing"
            now = self.out.stat().st_size
            if now != size:
                size, since = now, time.monotonic()
            time.sleep(0.1)

    def state_file(self, timeout: float = 60) -> dict[str, Any]:
        if self.state.exists():
            self.state.unlink()
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not self.state.exists():
            assert self.proc.poll() is None, f"monitor exited {self.proc.returncode}: {self.err.read_text()}"
            assert time.monotonic() < deadline, "no state file"
            time.sleep(0.05)
        state: dict[str, Any] = json.loads(self.state.read_text())
        return state

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise
        return self.proc.returncode


def kernel_policies(netns: str) -> dict[str, Any]:
    out = run_cli("policy", "list", "--netns", netns, "--format", "json", timeout=120)
    assert 0 == out.returncode, out.stderr
    return {"sa": [], "policy": [json.loads(line) for line in out.stdout.splitlines()]}


@pytest.mark.parametrize("n", [100_000, 200_000])
def test_reader_stopped_through_a_burst(netns: str, tmp_path: Path, n: int) -> None:
    """SIGSTOP through a burst far beyond the buffer: overrun, one resync, mirror == kernel."""
    burst = batch_file(tmp_path, n)
    m = FileMonitor(tmp_path, netns)
    try:
        m.wait_stderr("monitoring")
        m.proc.send_signal(signal.SIGSTOP)
        sh(f"ip -n {netns} -batch {burst}")
        m.proc.send_signal(signal.SIGCONT)
        m.wait_stderr("resynced after overrun", timeout=180)
        m.wait_quiet()
        delivered = m.count("newpolicy")
        assert delivered < n, "the buffer was meant to overflow"
        assert 1 == len(m.events("overrun"))
        (resync,) = m.events("resync")
        assert n == resync["policies"]
        assert n - delivered == len(resync["missing"])  # exactly what the overrun cost
        state = m.state_file()
        assert state["synced"] is True
        assert normalized(kernel_policies(netns)) == normalized(state)
    finally:
        assert 0 == m.stop()


def test_resync_repeats_until_no_message_was_lost(netns: str, tmp_path: Path) -> None:
    """A small buffer overruns again and again while a 100k burst goes on: every dump that
    messages were lost after is repeated; the one resync event comes after the last overrun,
    and then the mirror equals the kernel."""
    burst = batch_file(tmp_path, 100_000)
    m = FileMonitor(tmp_path, netns, "--rcvbuf", "65536")
    try:
        m.wait_stderr("monitoring")
        sh(f"ip -n {netns} -batch {burst}")
        m.wait_stderr("resynced after overrun", timeout=180)
        m.wait_quiet()
        lines = m.out.read_bytes().splitlines()
        types = [json.loads(x)["type"] for x in lines if x.startswith((b'{"type":"overrun"', b'{"type":"resync"'))]
        assert types.count("overrun") > 1, "the point is several overruns during one burst"
        assert "resync" == types[-1]
        assert 1 <= types.count("resync") <= types.count("overrun")
        state = m.state_file()
        assert state["synced"] is True
        assert normalized(kernel_policies(netns)) == normalized(state)
    finally:
        assert 0 == m.stop()


def test_signals_during_the_initial_dump_and_a_resync(netns: str, tmp_path: Path) -> None:
    """SIGUSR1 while the first dump of 100k policies is read writes a state file that says
    it is not in sync (and the monitor carries on); SIGUSR1 during a resync likewise; SIGTERM
    during a resync ends it with status 0 and the state file written."""
    sh(f"ip -n {netns} -batch {batch_file(tmp_path, 100_000)}")
    m = FileMonitor(tmp_path, netns)
    try:
        m.wait_stderr("reading the SAD and SPD")  # the first dump of 100k policies takes a while
        early = m.state_file()
        assert early["synced"] is False
        m.wait_stderr("monitoring")
        assert 100_000 == len(m.state_file()["policy"])
        # a resync of 150k policies, signalled while it runs
        m.proc.send_signal(signal.SIGSTOP)
        sh(f"ip -n {netns} -batch {batch_file(tmp_path, 50_000, dst='10.201.0.1')}")
        sh(f"ip -n {netns} -batch {batch_file(tmp_path, 50_000, dst='10.202.0.1')}")
        m.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 60
        while not m.count("overrun"):  # through the state stage: the mirror is out of sync now
            assert time.monotonic() < deadline
            time.sleep(0.05)
        during = m.state_file()
        assert during["synced"] is False
        m.proc.send_signal(signal.SIGTERM)
        assert 0 == m.proc.wait(timeout=30)
        assert m.state.exists()
        json.loads(m.state.read_text())  # complete, valid JSON
    finally:
        m.stop()


def test_daemon_stops_on_sigterm_during_its_first_dump(netns: str, tmp_path: Path) -> None:
    """`run` receives signals from before its first dumps: SIGTERM while 100k policies are
    read stops it at once, with status 0."""
    sh(f"ip -n {netns} -batch {batch_file(tmp_path, 100_000)}")
    conf = tmp_path / "config.toml"
    conf.write_text(
        f'[watch]\nnetns = ["{netns}"]\n[metrics]\nenabled = false\n'
        f'[[output]]\ntype = "file"\npath = "{tmp_path / "events.jsonl"}"\n'
    )
    log = tmp_path / "log"
    proc = subprocess.Popen([*XFRMWATCH, "run", "--config", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=open(log, "wb"), cwd=ROOT)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "reading the SAD and SPD" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert 0 == proc.wait(timeout=20)
        records = [json.loads(line) for line in log.read_text().splitlines()]
        events = [r.get("event") for r in records]
        assert "stopping" in events
        assert "ready" not in events  # it was stopped during the start
    finally:
        if proc.poll() is None:
            proc.kill()
