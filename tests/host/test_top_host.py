"""`xfrmwatch top` as a person uses it: in a real terminal (tmux), against the host kernel in
throwaway namespaces, driven with keys; the terminal is given back as it was, whatever ends
the dashboard.  And `--once`, its one frame, for scripts."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

import pytest
from support import ROOT, fresh_netns, run_cli, sh
from tmux import restored, terminal

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed (apt-get install tmux)")


def test_dashboard_follows_the_kernel_and_the_keys(netns: str) -> None:
    """Policies and their events appear as they happen; an SPD flush shows as a high alert;
    / filters, s sorts, a shows alerts only, ? helps, q quits with the terminal restored."""
    sh(f"ip -n {netns} xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out "
       "tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 5 mode tunnel")  # fmt: skip
    with terminal(f"--netns {netns}") as t:
        t.wait(rf"netns {netns} +SAs 0 +policies 1 ")
        sh(f"ip -n {netns} xfrm policy add src 10.9.0.0/16 dst 10.8.0.0/16 dir in")
        sh(f"ip -n {netns} xfrm policy add src 10.7.0.0/16 dst 10.6.0.0/16 dir fwd")
        text = t.wait(r"policies 3 ")
        t.wait(r"newpolicy +10\.7\.0\.0/16 -> 10\.6\.0\.0/16 dir fwd")
        assert re.search(r"newpolicy +10\.9\.0\.0/16 -> 10\.8\.0\.0/16 dir in", text) or "10.9.0.0/16" in t.screen()

        t.keys("/")
        t.keys("10.9.", literal=True)
        text = t.wait(r"filter: +10\.9\._")
        assert "10.9.0.0/16" in text and "10.7.0.0/16" not in text
        t.keys("Enter")
        t.wait(r"filter /10\.9\.$")
        t.keys("Escape")
        t.wait(r"10\.7\.0\.0/16")

        t.keys("s")
        t.wait(r"sort name")
        t.keys("a")
        t.wait(r"alerts only")
        t.keys("a")
        t.keys("?")
        t.wait(r"Keys\s*$")
        t.keys("x")
        t.wait(r"Tunnels")

        sh(f"ip -n {netns} xfrm policy flush")
        text = t.wait(r"Security policy database flushed")
        assert re.search(r"high +Security policy database flushed", text) or "1 high" in text, text
        t.wait(r"policies 0 ")
        t.wait(r"flushpolicy")
        t.keys("q")
        restored(t)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_terminal_restored_on_signals(netns: str, sig: signal.Signals) -> None:
    """SIGTERM, SIGHUP and SIGINT end the dashboard with status 0 and the terminal restored."""
    with terminal(f"--netns {netns}", width=80, height=24) as t:
        t.wait(rf"netns {netns}")
        os.kill(t.pid(), sig)
        restored(t)


def test_ctrl_z_suspends_with_the_terminal_given_back(netns: str) -> None:
    """Ctrl-Z stops the dashboard with the normal screen back; SIGCONT brings it back."""
    with terminal(f"--netns {netns}", width=80, height=24) as t:
        t.wait(rf"netns {netns}")
        pid = t.pid()
        t.keys("C-z")
        t.wait(r"Tunnels", absent=True)
        deadline = time.monotonic() + 10
        while open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "T":
            assert time.monotonic() < deadline, "the dashboard did not stop"
            time.sleep(0.1)
        os.killpg(os.getpgid(pid), signal.SIGCONT)  # the shell was stopped with it
        t.wait(rf"netns {netns}")
        sh(f"ip -n {netns} xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out")
        t.wait(r"policies 1 ")
        t.keys("q")
        restored(t)


def test_resized_terminal_is_redrawn_to_its_new_size(netns: str) -> None:
    """From 200x50 to 80x24 and back: each time the whole screen is redrawn at the new size."""
    sh(f"ip -n {netns} xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out")
    with terminal(f"--netns {netns}", width=200, height=50) as t:
        t.wait(r"Alerts .* Events")  # side by side at 200 columns
        t.resize(80, 24)
        text = t.wait(r"^ Events")  # stacked at 80
        lines = text.split("\n")
        assert re.search(rf"netns {netns} ", lines[0]) and re.search(r" q quit", text), text
        assert max(len(x.rstrip()) for x in lines) <= 80
        t.resize(200, 50)
        t.wait(r"Alerts .* Events")
        t.keys("q")
        restored(t)


def test_all_namespaces_and_tab(netns: str) -> None:
    """--all-netns watches every namespace, one appearing later too; Tab shows one at a time."""
    sh(f"ip -n {netns} xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out")
    with terminal("--all-netns", width=120, height=30) as t:
        t.wait(r"netns all")
        with fresh_netns("xwlate") as late:
            sh(f"ip -n {late} xfrm policy add src 10.3.0.0/24 dst 10.4.0.0/24 dir out")
            sh(f"ip -n {late} xfrm policy add src 10.5.0.0/24 dst 10.6.0.0/24 dir out")
            for _ in range(60):  # Tab until the late namespace is shown (it is found within 5 s)
                t.keys("Tab")
                time.sleep(0.3)
                if re.search(rf"netns {late} ", t.screen()):
                    break
            text = t.wait(rf"netns {late} \[\d+\] +SAs 0 +policies 2 ")
            assert "10.5.0.0/24" not in text or late in text
            sh(f"ip -n {late} xfrm policy add src 10.7.0.0/24 dst 10.8.0.0/24 dir in")
            t.wait(rf"netns {late} \[\d+\] +SAs 0 +policies 3 ")
            t.wait(r"newpolicy +10\.7\.0\.0/24")
        t.keys("q")
        restored(t)


def test_once_prints_one_frame(netns: str) -> None:
    """--once prints exactly one frame of COLUMNS x LINES and exits 0."""
    for i in range(3):
        sh(f"ip -n {netns} xfrm policy add src 10.{i}.0.0/24 dst 10.99.0.0/24 dir out")
    sh(f"ip -n {netns} xfrm state allocspi src 192.0.2.2 dst 192.0.2.1 proto esp mode tunnel reqid 5")
    p = run_cli("top", "--once", "--netns", netns, env={**os.environ, "COLUMNS": "120", "LINES": "30"})
    assert 0 == p.returncode, p.stderr
    lines = p.stdout.rstrip("\n").split("\n")
    assert 30 == len(lines)
    assert all(len(line) <= 120 for line in lines)
    assert re.search(rf"netns {netns} +SAs 1 +policies 3 +tunnels 0 ", lines[0]), lines[0]
    assert "\x1b[" not in p.stdout  # not a terminal: no colour codes
    assert "key managers: none" in lines[1]


def test_user_mistakes_are_one_line(netns: str) -> None:
    """An unknown namespace is exit 5, no terminal without --once exit 2: one line each."""
    p = run_cli("top", "--once", "--netns", "xw-no-such-netns")
    assert (5, 1) == (p.returncode, len(p.stderr.strip().splitlines())), p.stderr
    p = run_cli("top", "--netns", netns, stdin=subprocess.DEVNULL)
    assert (2, 1) == (p.returncode, len(p.stderr.strip().splitlines())), p.stderr
    assert "--once" in p.stderr


SESSION = ROOT / "xfrmwatch" / "demo" / "session.pcap"  # the shipped strongSwan session


def test_replay_in_the_dashboard() -> None:
    """replay --top: the recorded strongSwan session in the dashboard, 20 times as fast: at its
    end the tunnel is down after three rekeys, with both alerts open and the end said; the
    keys still work on the finished replay."""
    with terminal(f"{SESSION} --top --speed 20", width=140, height=36, command="replay") as t:
        t.wait(r"xfrmwatch replay session\.pcap x20 +netns")
        text = t.wait(r"the recording has ended", timeout=30)
        assert re.search(r"192\.0\.2\.1 <-> 192\.0\.2\.2 +-/- +down hard_expire .* 3\s*$", text, re.M), text
        assert re.search(r"crit +Tunnel down without a replacement", text) and re.search(r"high +Rekey overdue", text)
        assert "key managers: not known" in text
        t.keys("s")
        t.wait(r"sort name")
        t.keys("q")
        restored(t)


def test_demo_shows_the_dashboard() -> None:
    """`xfrmwatch demo` on a terminal plays the shipped session in the dashboard, with the
    narration highlighted, and ends with the tunnel down and the way to go live."""
    with terminal("--speed 20", width=120, height=34, command="demo") as t:
        t.wait(r"xfrmwatch demo +netns demo")
        text = t.wait(r"the recording has ended", timeout=30)
        assert "its key manager has given up on the peer" in text, text
        assert re.search(r"down hard_expire", text) and re.search(r"crit +Tunnel down", text), text
        t.keys("q")
        restored(t)
        assert "xfrmwatch top` (the dashboard, live)" in t.screen().replace("\n", " ")


def test_replay_top_needs_a_speed_and_a_terminal() -> None:
    """--top with --fast, or without a terminal: exit 2, one line."""
    for extra in (["--fast"], []):
        p = run_cli("replay", str(SESSION), "--top", *extra, stdin=subprocess.DEVNULL)
        assert (2, 1) == (p.returncode, len(p.stderr.strip().splitlines())), p.stderr
