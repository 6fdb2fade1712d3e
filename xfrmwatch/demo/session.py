"""The recording ``xfrmwatch demo`` replays, shipped in the package (README.md next to it)."""

from __future__ import annotations

import functools
import importlib.resources
import json
from typing import Any

from ..capture import Capture
from ..timestamps import utc

SESSION = "session.pcap"
#: what the recording script wrote about the session (tests/fixtures/record-demo.py)
ABOUT = "session.json"


@functools.cache
def session() -> Capture:
    """The shipped recording, read."""
    with importlib.resources.as_file(importlib.resources.files(__package__ or "xfrmwatch.demo") / SESSION) as p:
        return Capture.load(p)


@functools.cache
def about() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((importlib.resources.files(__package__ or "xfrmwatch.demo") / ABOUT).read_text())
    return data


def intro(capture: Capture, speed: str, *, dashboard: bool = False) -> str:
    """What the demo is about to show (in the dashboard of `top`, or as event lines)."""
    a = about()
    how = (
        "Shown in the dashboard of `xfrmwatch top`; the highlighted lines explain; q quits."
        if dashboard
        else "Events as `xfrmwatch monitor` prints them; the lines marked with an arrow explain."
    )
    return (
        f"xfrmwatch demo: a real IKEv2 session between two strongSwan daemons ({a['strongswan']}, "
        f"Linux {a['kernel']} in User-Mode Linux), recorded by `xfrmwatch record` on the initiator's side "
        f"on {utc(capture.start)[:10]}, {capture.end - capture.start:.0f} s long, played {speed}. "
        "The tunnel comes up, rekeys three times, then the peer's daemon is killed: watch xfrmwatch warn "
        f"before the tunnel goes down, and say when it does. {how}"
    )


__all__ = ["about", "intro", "session"]
