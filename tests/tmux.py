"""`xfrmwatch top` in a real terminal: a tmux session, its screen as a person sees it, keys.

    with terminal("--netns vpn") as t:     # xfrmwatch top --netns vpn, in a 100x30 terminal
        t.wait(r"policies 3 ")             # the screen once this regex is on it
        t.keys("q")
        restored(t)                        # exit status 0, terminal modes back

tmux's sockets go to $TMPDIR when set (in the UML guest: its tmpfs; hostfs has no sockets).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from support import ROOT, XFRMWATCH


def _env() -> dict[str, str]:
    env = {**os.environ, "TERM": "xterm-256color"}
    if os.environ.get("TMPDIR"):
        env["TMUX_TMPDIR"] = os.environ["TMPDIR"]
    return env


def _tmux(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True, env=_env())


class Terminal:
    """A tmux session running one command: the screen as a person sees it, and keys."""

    def __init__(self, name: str) -> None:
        self.name = name

    def screen(self) -> str:
        return _tmux("capture-pane", "-p", "-t", self.name).stdout

    def keys(self, *keys: str, literal: bool = False) -> None:
        _tmux("send-keys", "-t", self.name, *(["-l"] if literal else []), *keys)

    def wait(self, pattern: str, timeout: float = 20.0, absent: bool = False) -> str:
        """The screen once ``pattern`` (a regex) is on it (or, with ``absent``, gone from it)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if bool(re.search(pattern, text, re.M)) != absent:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{'still' if absent else 'never'} on screen: {pattern!r}\n{text}")
            time.sleep(0.2)

    def resize(self, width: int, height: int) -> None:
        _tmux("resize-window", "-t", self.name, "-x", str(width), "-y", str(height))

    def pid(self) -> int:
        """The dashboard's process id (the shell's child running python)."""
        out = _tmux("list-panes", "-t", self.name, "-F", "#{pane_pid}").stdout.split()
        shell = int(out[0])
        kids = subprocess.run(["pgrep", "-P", str(shell)], capture_output=True, text=True).stdout.split()
        return int(kids[0])


@contextmanager
def terminal(args: str, width: int = 100, height: int = 30, command: str = "top") -> Iterator[Terminal]:
    """`xfrmwatch COMMAND ARGS` (top by default) in a fresh tmux session; afterwards the shell
    prints the exit status and the terminal's modes (stty -a)."""
    name = f"xwtop-{uuid.uuid4().hex[:8]}"
    cmd = " ".join(shlex.quote(a) for a in XFRMWATCH)
    script = f"cd {shlex.quote(str(ROOT))} && {cmd} {command} {args}; echo EXIT=$?; stty -a | tr -s ' ;' '\\n\\n' | grep -E '^-?(icanon|echo)$' | tr '\\n' ' '; echo; sleep 600"
    _tmux("new-session", "-d", "-s", name, "-x", str(width), "-y", str(height), "sh", "-c", script)
    try:
        yield Terminal(name)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True, env=_env())


def restored(t: Terminal, status: int = 0) -> None:
    """The dashboard exited with ``status`` and the terminal is back in its usual modes."""
    text = t.wait(r"^EXIT=\d+\n-?icanon -?echo", timeout=15)  # the status, then the modes
    assert f"EXIT={status}" in text, text
    assert re.search(r"^icanon echo\s*$", text, re.M), f"terminal modes not restored:\n{text}"
    assert "Tunnels" not in text  # the normal screen is back (the dashboard was on the alternate one)
