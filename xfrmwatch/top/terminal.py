"""The dashboard's terminal: full screen, keys one at a time, and restored whatever happens.

:func:`full_screen` switches to the alternate screen with the cursor hidden, line wrap off
and the keyboard in cbreak mode (keys unbuffered, not echoed; Ctrl-C still a signal), and
restores all of it on the way out: a normal exit, an exception, a cancellation (SIGTERM
and SIGINT are turned into one by the dashboard).  :func:`read_keys` is the trio task that
reads the keys; :func:`parse_keys` names them.  Frames are written from a worker thread
(:func:`write`), so a slow terminal never stalls the event loop.
"""

from __future__ import annotations

import os
import termios
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

#: alternate screen, cursor hidden, no automatic wrap at the last column, screen cleared
ENTER = b"\x1b[?1049h\x1b[?25l\x1b[?7l\x1b[H\x1b[2J"
#: everything back as it was
LEAVE = b"\x1b[0m\x1b[?7h\x1b[?25h\x1b[?1049l"

_SEQUENCES = {
    "\x1b[A": "up", "\x1b[B": "down", "\x1b[C": "right", "\x1b[D": "left",
    "\x1bOA": "up", "\x1bOB": "down", "\x1bOC": "right", "\x1bOD": "left",
    "\x1b[5~": "pgup", "\x1b[6~": "pgdn", "\x1b[H": "home", "\x1b[F": "end", "\x1bOH": "home",
    "\x1bOF": "end", "\x1b[1~": "home", "\x1b[4~": "end", "\x1b[7~": "home", "\x1b[8~": "end",
    "\x1b[Z": "shift-tab", "\x1b[3~": "delete",
}  # fmt: skip
_SINGLE = {"\t": "tab", "\r": "enter", "\n": "enter", "\x7f": "backspace", "\x08": "backspace"}


def parse_keys(data: str) -> list[str]:
    """Name the keys in what the terminal sent: printable characters as themselves, others as
    ``tab``, ``shift-tab``, ``enter``, ``backspace``, ``esc``, ``up``, ``pgdn``, ``home``...;
    an escape sequence not known is dropped whole."""
    out: list[str] = []
    i = 0
    while i < len(data):
        c = data[i]
        if c == "\x1b":
            if i + 1 >= len(data) or data[i + 1] not in "[O":
                out.append("esc")
                i += 1
                continue
            j = i + 2
            while j < len(data) and not (data[j].isalpha() or data[j] == "~"):
                j += 1
            seq = data[i : j + 1]
            if seq in _SEQUENCES:
                out.append(_SEQUENCES[seq])
            i = j + 1
            continue
        if c in _SINGLE:
            out.append(_SINGLE[c])
        elif c.isprintable():
            out.append(c)
        i += 1
    return out


@contextmanager
def full_screen(fd_in: int, fd_out: int) -> Iterator[None]:
    """The terminal as the dashboard needs it, restored on exit (whatever the exit)."""
    saved = termios.tcgetattr(fd_in)
    try:
        tty.setcbreak(fd_in, termios.TCSANOW)
        _write(fd_out, ENTER)
        yield
    finally:
        try:
            _write(fd_out, LEAVE)
        finally:
            termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)


def suspend(fd_in: int, fd_out: int, saved: list[Any]) -> None:
    """Give the terminal back as it was (before stopping on Ctrl-Z)."""
    _write(fd_out, LEAVE)
    termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)


def resume(fd_in: int, fd_out: int) -> None:
    """Take the terminal again (after SIGCONT)."""
    tty.setcbreak(fd_in, termios.TCSANOW)
    _write(fd_out, ENTER)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def write(fd: int, data: bytes) -> None:
    """Write ``data`` to the terminal from a worker thread."""
    await trio.to_thread.run_sync(_write, fd, data, abandon_on_cancel=True)


def frame_bytes(changes: list[tuple[int, str]]) -> bytes:
    """The lines that changed, each written at its place (no clearing: no flicker)."""
    return "".join(f"\x1b[{i + 1};1H{line}" for i, line in changes).encode()


async def read_keys(fd: int, send: trio.MemorySendChannel[str]) -> None:
    """Send every key pressed, by name (:func:`parse_keys`), until the terminal closes."""
    async with send:
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                data = os.read(fd, 1024)
            except BlockingIOError:
                continue
            if not data:
                return
            for k in parse_keys(data.decode(errors="replace")):
                await send.send(k)
